"""Member specs: everything needed to build, feed and explain one ensemble member.

A :class:`MemberSpec` plays the role of timm's ``PretrainedCfg``: it is the single source
of truth for the architecture, the input size, the normalisation, the ROI margin and the
CAM target layer of one trained network. Training writes it into the zoo manifest; the
dashboard, ``predict`` and the CAM code read it from there and build every transform from
it. Nothing downstream hard-codes an input size or a mean/std.

Families follow the paper (EfficientNet-B3, EfficientNet-B4, ViT, Swin). Each family has a
``tiny`` variant (timm ``test_*`` models or a shrunk Swin) so tests run in seconds.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model_zoo.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

# How a CAM target layer's activations are laid out, and so how they become (B, C, H, W).
CAM_LAYOUTS = ("bchw", "tokens", "bhwc")


@dataclass(frozen=True)
class MemberSpec:
    """Build/feed/explain facts for one member network.

    Attributes
    ----------
    member_id : str
        Stable identifier used in column names (``p_<member_id>``) and file names.
    family : str
        One of the paper's families: ``efficientnet_b3``, ``efficientnet_b4``, ``vit``, ``swin``.
    arch : str
        timm model name.
    input_size : int
        Square model input side in pixels.
    mean, std : tuple of 3 floats
        Per-channel normalisation (the paper: the training set's mean/std, set at fit time).
    roi_margin : float
        Fraction of the ROI width/height added on each side before the square crop.
    cam_layer : str
        Dotted module path of the CAM target layer (negative integers index from the end).
    cam_layout : str
        Layout of that layer's output: ``bchw`` (CNN), ``tokens`` (B, prefix+H*W, C) or
        ``bhwc`` (timm Swin).
    patch_size : int or None
        Patch size for transformers (grid = input_size // patch_size for ViT).
    num_prefix_tokens : int
        Class/register tokens to drop before reshaping ViT tokens to a grid.
    model_kwargs : dict
        Extra keyword arguments for ``timm.create_model`` (img_size, window_size, ...).
    """

    member_id: str
    family: str
    arch: str
    input_size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    roi_margin: float = 0.1
    cam_layer: str = ""
    cam_layout: str = "bchw"
    patch_size: int | None = None
    num_prefix_tokens: int = 0
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cam_layout not in CAM_LAYOUTS:
            raise ValueError(f"cam_layout must be one of {CAM_LAYOUTS}, got {self.cam_layout!r}")
        if self.input_size < 16:
            raise ValueError(f"input_size {self.input_size} is too small")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean/std must have 3 entries and std must be positive")

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"] = [float(v) for v in self.mean]
        d["std"] = [float(v) for v in self.std]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MemberSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown member spec keys: {sorted(unknown)}")
        d = dict(d)
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(float(v) for v in d[key])
        return cls(**d)

    def replace(self, **changes: Any) -> MemberSpec:
        return dataclasses.replace(self, **changes)

    # -- derived facts ---------------------------------------------------------------------
    def cam_grid(self, n_tokens: int | None = None) -> tuple[int, int]:
        """Spatial grid of the CAM layer for a token layout, derived (never hard-coded).

        For ViT the grid is ``input_size // patch_size`` on each side; when the actual token
        count is given it is checked against that, so a spec that disagrees with the model
        fails loudly instead of producing a scrambled heatmap.
        """
        if self.cam_layout != "tokens":
            raise ValueError("cam_grid is only defined for token layouts")
        if not self.patch_size:
            raise ValueError(f"{self.member_id}: token layout needs patch_size")
        side = self.input_size // self.patch_size
        if n_tokens is not None and n_tokens - self.num_prefix_tokens != side * side:
            spatial = n_tokens - self.num_prefix_tokens
            root = math.isqrt(max(spatial, 0))
            raise ValueError(
                f"{self.member_id}: {n_tokens} tokens minus {self.num_prefix_tokens} prefix "
                f"do not form the expected {side}x{side} grid" + (f" (they form {root}x{root})" if root * root == spatial else "")
            )
        return side, side

    def build_model(self) -> torch.nn.Module:
        """A randomly initialised single-logit model for this spec (no hub access)."""
        import timm

        return timm.create_model(self.arch, pretrained=False, num_classes=1, **self.model_kwargs)

    def cam_target_layer(self, model: torch.nn.Module) -> torch.nn.Module:
        return resolve_module(model, self.cam_layer)

    def reshape_activations(self, tensor: torch.Tensor) -> torch.Tensor:
        """Bring the CAM layer's output to (B, C, H, W) as pytorch-grad-cam expects."""
        if self.cam_layout == "bchw":
            return tensor
        if self.cam_layout == "bhwc":
            if tensor.ndim != 4:
                raise ValueError(f"{self.member_id}: expected (B,H,W,C), got {tuple(tensor.shape)}")
            return tensor.permute(0, 3, 1, 2)
        # tokens: (B, prefix + H*W, C)
        if tensor.ndim != 3:
            raise ValueError(f"{self.member_id}: expected (B,N,C) tokens, got {tuple(tensor.shape)}")
        h, w = self.cam_grid(tensor.shape[1])
        spatial = tensor[:, self.num_prefix_tokens :, :]
        return spatial.reshape(tensor.shape[0], h, w, tensor.shape[2]).permute(0, 3, 1, 2)

    # -- preprocessing ------------------------------------------------------------------------
    def normalise(self, crop_resized: np.ndarray) -> np.ndarray:
        """(S, S) float image in [0, 1] -> (3, S, S) float32 normalised with the spec's mean/std."""
        if crop_resized.shape != (self.input_size, self.input_size):
            raise ValueError(f"{self.member_id}: expected a {self.input_size}x{self.input_size} crop, got {crop_resized.shape}")
        img = np.repeat(crop_resized[None].astype(np.float32), 3, axis=0)
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        return (img - mean) / std


def resolve_module(model: torch.nn.Module, dotted: str) -> torch.nn.Module:
    """Find ``a.b.-1.c`` in a module tree; negative integers index from the end."""
    if not dotted:
        raise ValueError("empty module path")
    current: Any = model
    for part in dotted.split("."):
        if part.lstrip("-").isdigit():
            try:
                current = current[int(part)]
            except (IndexError, TypeError) as err:
                raise ValueError(f"cannot index {part!r} in module path {dotted!r}") from err
        else:
            if not hasattr(current, part):
                raise ValueError(f"module path {dotted!r}: no attribute {part!r}")
            current = getattr(current, part)
    return current


# --------------------------------------------------------------------------------------------
# Family templates. Input size and model kwargs are set by the training config; the spec
# records what was actually used.
# --------------------------------------------------------------------------------------------


def _effnet(member_id: str, family: str, arch: str, input_size: int, **kw: Any) -> MemberSpec:
    # blocks[-1] is the last stage's feature map (384 ch for B3, 448 for B4), on the same grid
    # as bn2 (1,536 / 1,792 ch after the 1x1 head conv). Exact ScoreCAM costs one forward per
    # channel, so this layer makes it 4x cheaper; top-96-channel ScoreCAM on bn2 agreed poorly
    # with full ScoreCAM on the trained demo members (Pearson median 0.45-0.53).
    return MemberSpec(member_id, family, arch, input_size, cam_layer="blocks.-1", cam_layout="bchw", **kw)


def _vit(member_id: str, arch: str, input_size: int, patch_size: int = 16, **kw: Any) -> MemberSpec:
    # blocks[-1].norm1 keeps spatial tokens with gradients (the final norm only feeds the class token).
    model_kwargs = dict(kw.pop("model_kwargs", {}))
    model_kwargs.setdefault("img_size", input_size)
    return MemberSpec(
        member_id,
        "vit",
        arch,
        input_size,
        cam_layer="blocks.-1.norm1",
        cam_layout="tokens",
        patch_size=patch_size,
        num_prefix_tokens=1,
        model_kwargs=model_kwargs,
        **kw,
    )


def _swin(member_id: str, arch: str, input_size: int, window_size: int, **kw: Any) -> MemberSpec:
    # timm Swin keeps (B, H, W, C) through its stages; model.norm is the last spatial map.
    model_kwargs = dict(kw.pop("model_kwargs", {}))
    model_kwargs.setdefault("img_size", input_size)
    model_kwargs.setdefault("window_size", window_size)
    return MemberSpec(
        member_id,
        "swin",
        arch,
        input_size,
        cam_layer="norm",
        cam_layout="bhwc",
        patch_size=4,
        model_kwargs=model_kwargs,
        **kw,
    )


FAMILIES = ("efficientnet_b3", "efficientnet_b4", "vit", "swin")


def family_spec(family: str, *, variant: str = "full", input_size: int | None = None) -> MemberSpec:
    """Default spec for one of the paper's families.

    ``variant``: ``full`` = the paper's architecture family at the given input size
    (ViT-Small and Swin-Tiny for the transformers); ``tiny`` = a few-thousand-parameter
    stand-in of the same family for tests.
    """
    if family not in FAMILIES:
        raise InputError(f"unknown member family {family!r}; choose from {', '.join(FAMILIES)}")
    if variant == "full":
        size = input_size or 224
        if family == "efficientnet_b3":
            return _effnet("effnet_b3", family, "efficientnet_b3", size)
        if family == "efficientnet_b4":
            return _effnet("effnet_b4", family, "efficientnet_b4", size)
        if family == "vit":
            return _vit("vit", "vit_small_patch16_224", size)
        # Swin needs every stage's feature side divisible by the window: 224 -> 7, 128 -> 4.
        window = 7 if size % (32 * 7) == 0 else 4
        return _swin("swin", "swin_tiny_patch4_window7_224", size, window_size=window)
    if variant == "tiny":
        size = input_size or 64
        if family == "efficientnet_b3":
            return _effnet("effnet_b3", family, "test_efficientnet", size)
        if family == "efficientnet_b4":
            return _effnet("effnet_b4", family, "test_efficientnet", size, model_kwargs={"channel_multiplier": 1.1})
        if family == "vit":
            return _vit("vit", "test_vit", size)
        return _swin(
            "swin",
            "swin_tiny_patch4_window7_224",
            size,
            window_size=4,
            model_kwargs={"embed_dim": 16, "depths": (1, 1), "num_heads": (1, 2)},
        )
    raise InputError(f"unknown variant {variant!r}; choose 'full' or 'tiny'")


def load_init_weights(model: torch.nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load initial weights from a local file (safetensors or a torch state dict).

    Keys whose shapes do not match (typically the classifier head, which here has one
    logit) are skipped and reported, as are missing keys. Nothing is ever downloaded.
    Returns ``{"loaded": [...], "skipped": [...], "missing": [...]}``.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"initial weights file not found: {path}")
    state: Any  # safetensors: dict[str, Tensor]; torch.load: whatever the file holds (checked below)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        # weights_only: never execute pickled code from a user-supplied file.
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise InputError(f"{path.name}: not a state dict")
    own = model.state_dict()
    loaded, skipped = [], []
    usable = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key in own and tuple(own[key].shape) == tuple(value.shape):
            usable[key] = value
            loaded.append(key)
        else:
            skipped.append(key)
    if not loaded:
        raise InputError(f"{path.name}: no tensor matches the model's parameters (wrong architecture?)")
    model.load_state_dict(usable, strict=False)
    missing = [k for k in own if k not in usable]
    return {"loaded": loaded, "skipped": skipped, "missing": missing}
