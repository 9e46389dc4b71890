"""Zoo release integrity: every tampering is refused by ``load_zoo`` before anything is deserialised.

Each test works on a private copy of the session's tiny release (``shutil.copytree``),
changes one thing, and asserts that :func:`model_zoo.ensemble.load_zoo` raises
:class:`~model_zoo.errors.IntegrityError` with a one-line message naming the release and
the offending file. "Before anything is unpickled" is proved by replacing every
deserialiser the loader could reach (joblib, pickle, torch.load, safetensors) with a spy
that records the call and fails; a positive control shows the spies do see a normal load.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from model_zoo.errors import IntegrityError

# ----------------------------------------------------------------------------- fixtures / helpers


@pytest.fixture
def release(tiny_release, tmp_path) -> Path:
    """A fresh, writable copy of the tiny release: ``tmp_path/zoo/<release name>``."""
    src = Path(tiny_release["release"])
    dst = tmp_path / "zoo" / src.name
    shutil.copytree(src, dst, symlinks=True)
    return dst


class Spy:
    """Records calls to the deserialisers; in ``strict`` mode a call fails the test."""

    def __init__(self) -> None:
        self.calls: list[str] = []


@pytest.fixture
def deserialisers(monkeypatch):
    """Install recording spies on every deserialiser ``load_zoo`` could reach.

    Returns ``(spy, set_strict)``: after ``set_strict(True)`` a call raises AssertionError
    (so a refusal that came *after* unpickling shows up as a failure, not a pass).
    """
    import pickle

    import joblib
    import safetensors
    import safetensors.torch
    import torch

    spy = Spy()
    state = {"strict": True}

    def wrap(owner, name):
        original = getattr(owner, name)

        def spying(*args, **kwargs):
            spy.calls.append(f"{getattr(owner, '__name__', owner)}.{name}({args[0] if args else ''})")
            if state["strict"]:
                raise AssertionError(f"{name} called on {args[0] if args else '?'} before verification refused")
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, spying)

    for owner, name in (
        (joblib, "load"),
        (pickle, "load"),
        (pickle, "loads"),
        (torch, "load"),
        (safetensors.torch, "load_file"),
        (safetensors.torch, "load"),
        (safetensors, "safe_open"),
    ):
        wrap(owner, name)

    def set_strict(flag: bool) -> None:
        state["strict"] = flag

    return spy, set_strict


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text(encoding="utf-8"))


def _write_manifest(root: Path, manifest: dict, *, rehash: bool = True) -> None:
    """Rewrite manifest.json (and, like a careful attacker, its manifest.sha256)."""
    blob = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
    (root / "manifest.json").write_bytes(blob)
    if rehash:
        (root / "manifest.sha256").write_text(hashlib.sha256(blob).hexdigest() + "\n", encoding="ascii")


def _flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def _refused(root: Path, pattern: str, spy: Spy) -> str:
    """load_zoo(root) must raise IntegrityError matching ``pattern``, with nothing deserialised."""
    from model_zoo.ensemble import load_zoo

    with pytest.raises(IntegrityError) as err:
        load_zoo(root)
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{root.name}: ") or str(root) in msg, f"message does not say which release: {msg}"
    assert re.search(pattern, msg), f"{pattern!r} not in {msg!r}"
    assert spy.calls == [], f"deserialised before refusing: {spy.calls}"
    return msg


# ----------------------------------------------------------------------------- positive control


def test_untampered_copy_loads_and_spies_see_every_deserialisation(release, deserialisers):
    from model_zoo.ensemble import load_zoo

    spy, set_strict = deserialisers
    set_strict(False)
    manifest = _manifest(release)
    zoo = load_zoo(release)
    assert zoo.member_ids == [m["spec"]["member_id"] for m in manifest["members"]]
    # The spies sit where the loader looks them up: one joblib load (stacker) and one
    # safetensors load per member (+ the localiser), so an empty spy list below means
    # "refused first", not "spied on the wrong name".
    assert sum("joblib.load" in c for c in spy.calls) == 1, spy.calls
    n_weights = len(manifest["members"]) + (1 if manifest.get("localiser") else 0)
    assert sum("load_file" in c for c in spy.calls) == n_weights, spy.calls


# ----------------------------------------------------------------------------- changed bytes


def test_any_changed_byte_in_any_listed_file_is_refused(release, deserialisers):
    """Every file the manifest lists (weights, stacker, localiser, config, card, reports):
    one flipped bit is refused, naming the file."""
    spy, _ = deserialisers
    files = _manifest(release)["files"]
    assert {"stacker.joblib", "config.yaml"} <= set(files)
    assert any(f.endswith(".safetensors") for f in files)
    for rel in sorted(files):
        path = release / rel
        for offset in (0, None, path.stat().st_size - 1):  # first, middle, last byte
            _flip_byte(path, offset)
            _refused(release, rf"{re.escape(rel)} was modified", spy)
            _flip_byte(path, offset)  # restore
    from model_zoo.zoo import verify_release

    verify_release(release)  # restored bytes verify again: the refusals were about the flips


def test_truncated_and_appended_weights_refused(release, deserialisers):
    spy, _ = deserialisers
    rel = _manifest(release)["members"][0]["weights"]
    weights = release / rel
    original = weights.read_bytes()
    for content in (original[:-100], original + b"\0", b""):
        weights.write_bytes(content)
        _refused(release, rf"{re.escape(rel)} was modified", spy)


def test_stacker_replaced_by_another_pickle_refused(release, deserialisers):
    import pickle

    spy, _ = deserialisers
    (release / "stacker.joblib").write_bytes(pickle.dumps({"stacker": None}))
    _refused(release, r"stacker\.joblib was modified", spy)


def test_edited_manifest_without_rehash_refused(release, deserialisers):
    spy, _ = deserialisers
    text = (release / "manifest.json").read_text(encoding="utf-8")
    m = _manifest(release)
    old = f'"value": {json.dumps(m["threshold"]["value"])}'
    assert old in text
    (release / "manifest.json").write_text(text.replace(old, '"value": 0.01', 1), encoding="utf-8")
    _refused(release, r"manifest\.json was modified \(sha256 does not match manifest\.sha256\)", spy)


@pytest.mark.parametrize("content", ["0" * 64 + "\n", "", "not a hash"])
def test_changed_manifest_hash_file_refused(release, deserialisers, content):
    spy, _ = deserialisers
    (release / "manifest.sha256").write_text(content, encoding="ascii")
    _refused(release, r"manifest\.json was modified", spy)


def test_rehashed_manifest_that_is_not_json_refused(release, deserialisers):
    spy, _ = deserialisers
    blob = b'{"files": {"stacker.joblib": '
    (release / "manifest.json").write_bytes(blob)
    (release / "manifest.sha256").write_text(hashlib.sha256(blob).hexdigest(), encoding="ascii")
    _refused(release, r"manifest\.json is not valid JSON", spy)


def test_rehashed_manifest_listing_no_files_refused(release, deserialisers):
    spy, _ = deserialisers
    m = _manifest(release)
    m["files"] = {}
    _write_manifest(release, m)
    _refused(release, r"manifest lists no files", spy)


# ----------------------------------------------------------------------------- missing / extra


@pytest.mark.parametrize("name", ["manifest.json", "manifest.sha256"])
def test_missing_manifest_refused(release, deserialisers, name):
    spy, _ = deserialisers
    (release / name).unlink()
    _refused(release, rf"{re.escape(name)} is missing", spy)


def test_missing_listed_file_refused(release, deserialisers):
    spy, _ = deserialisers
    members = _manifest(release)["members"]
    first = members[-1]["weights"]
    (release / first).unlink()
    _refused(release, rf"file missing from the release: {re.escape(first)}$", spy)
    (release / "stacker.joblib").unlink()
    _refused(release, r"file missing from the release: .* \(\+1 more\)", spy)


def test_listed_file_replaced_by_folder_refused(release, deserialisers):
    spy, _ = deserialisers
    (release / "stacker.joblib").unlink()
    (release / "stacker.joblib").mkdir()
    _refused(release, r"stacker\.joblib is not a regular file", spy)


@pytest.mark.parametrize("extra", ["evil.joblib", "members/extra.safetensors", ".hidden.pkl", "report/val/new/deep.bin"])
def test_extra_file_refused(release, deserialisers, extra):
    spy, _ = deserialisers
    path = release / extra
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x80\x04K\x01.")  # a tiny pickle: must never be opened
    _refused(release, rf"unexpected file in the release: {re.escape(extra)}$", spy)


def test_extra_special_file_refused(release, deserialisers):
    spy, _ = deserialisers
    os.mkfifo(release / "members" / "pipe")
    _refused(release, r"members/pipe", spy)


# ----------------------------------------------------------------------------- paths leaving the folder


@pytest.mark.parametrize(
    "entry", ["../outside.bin", "members/../../outside.bin", "/etc/hostname", "..", "members/../../../../../../etc/passwd"]
)
def test_manifest_entry_pointing_outside_refused(release, deserialisers, entry):
    spy, _ = deserialisers
    outside = release.parent / "outside.bin"
    outside.write_bytes(b"x")
    m = _manifest(release)
    target = Path(entry) if Path(entry).is_absolute() else (release / entry)
    digest = hashlib.sha256(target.read_bytes()).hexdigest() if target.is_file() else "0" * 64
    m["files"][entry] = digest  # even with a correct hash: the path itself is refused
    _write_manifest(release, m)
    _refused(release, rf"manifest entry {re.escape(repr(entry))} points outside the release folder", spy)


@pytest.mark.parametrize("field", ["stacker", "member", "localiser"])
def test_loader_path_outside_the_verified_files_refused(release, deserialisers, field):
    spy, _ = deserialisers
    m = _manifest(release)
    if field == "stacker":
        src, m["stacker"]["file"] = m["stacker"]["file"], "../evil.joblib"
    elif field == "member":
        src, m["members"][0]["weights"] = m["members"][0]["weights"], "../evil.safetensors"
    else:
        if not m.get("localiser"):
            pytest.skip("release has no localiser")
        src, m["localiser"]["weights"] = m["localiser"]["weights"], "../evil.safetensors"
    # A same-content copy outside the folder: loads fine if nobody checks where it is.
    shutil.copy(release / src, release.parent / ("evil.joblib" if field == "stacker" else "evil.safetensors"))
    _write_manifest(release, m)
    _refused(release, r"evil\.(joblib|safetensors)", spy)


# ----------------------------------------------------------------------------- symlinks


def test_listed_file_symlinked_outside_refused(release, deserialisers):
    """Same bytes, but through a link leaving the folder: refused (a later swap of the
    target would otherwise change the release behind its hashes)."""
    spy, _ = deserialisers
    outside = release.parent / "stacker-copy.joblib"
    shutil.move(release / "stacker.joblib", outside)
    os.symlink(outside, release / "stacker.joblib")
    _refused(release, r"stacker\.joblib", spy)


def test_listed_file_symlinked_inside_refused(release, deserialisers):
    spy, _ = deserialisers
    weights = _manifest(release)["members"][0]["weights"]
    real = release / "members" / "real.bin"
    shutil.move(release / weights, real)
    os.symlink("real.bin", release / weights)  # relative link, stays inside the folder
    _refused(release, rf"{re.escape(weights)} is a symbolic link", spy)


def test_extra_symlink_refused(release, deserialisers):
    spy, _ = deserialisers
    os.symlink("/etc/passwd", release / "members" / "passwd.safetensors")
    _refused(release, r"unexpected file in the release: members/passwd\.safetensors", spy)


def test_symlinked_folder_refused(release, deserialisers):
    spy, _ = deserialisers
    outside = release.parent / "members-elsewhere"
    shutil.move(release / "members", outside)
    os.symlink(outside, release / "members")
    _refused(release, r"members/", spy)


def test_manifest_symlink_message_says_symlink(release, deserialisers):
    spy, _ = deserialisers
    outside = release.parent / "manifest-elsewhere.json"
    shutil.move(release / "manifest.json", outside)
    os.symlink(outside, release / "manifest.json")
    _refused(release, r"manifest\.json is a symbolic link", spy)


# ----------------------------------------------------------------------------- the callers


def test_cli_verify_and_predict_refuse_tampered_zoo(release, tiny_release, tmp_path, capsys):
    from model_zoo.__main__ import main

    assert main(["verify", "--zoo", str(release)]) == 0
    capsys.readouterr()
    _flip_byte(release / "stacker.joblib")
    assert main(["verify", "--zoo", str(release)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and re.fullmatch(rf"error: {re.escape(release.name)}: stacker\.joblib was modified.*", err)
    out = tmp_path / "pred.csv"
    assert main(["predict", "--cases", str(tiny_release["cases"]), "--out", str(out), "--zoo", str(release), "--quiet"]) == 2
    assert "stacker.joblib was modified" in capsys.readouterr().err
    assert not out.exists(), "no output from a refused zoo"


def test_dashboard_shows_one_line_error_for_tampered_zoo(release, monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    _flip_byte(release / "config.yaml")
    monkeypatch.setenv("MODEL_ZOO_DIR", str(release))
    monkeypatch.setenv("MODEL_ZOO_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    app = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
    at = AppTest.from_file(str(app), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "config.yaml was modified" in errors[0] and "\n" not in errors[0], errors
    assert not [m for m in at.markdown if m.value.startswith("#### Probability")]


# ----------------------------------------------------------------------------- which zoo, and what it says


def test_loaded_zoo_answers_what_the_pages_and_reports_need(tiny_release):
    """The dashboard reads the release through Zoo, never through its files or manifest keys."""
    from model_zoo.ensemble import load_zoo

    root = Path(tiny_release["release"])
    zoo = load_zoo(root)
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    assert zoo.manifest_sha256 == hashlib.sha256((root / "manifest.json").read_bytes()).hexdigest()
    assert (zoo.release_name, zoo.version) == (manifest["name"], manifest["version"])
    assert zoo.stacker_name == manifest["stacker"]["chosen"]
    assert zoo.threshold_rule == manifest["threshold"]["rule"] and zoo.threshold_rule
    assert zoo.files == manifest["files"] and zoo.intended_use == manifest.get("intended_use", "")
    assert zoo.cam_weights_rule == manifest["stacker"].get("cam_weights_rule", "equal")


def test_one_default_zoo_for_the_cli_and_the_dashboard(tmp_path, monkeypatch):
    """$MODEL_ZOO_DIR (blank = unset), else the newest release under the parent; the dashboard
    asks model_zoo and turns "none" into None instead of an error."""
    import dashboard.common as common
    from model_zoo.errors import InputError
    from model_zoo.zoo import default_zoo_dir

    empty = tmp_path / "empty"
    monkeypatch.setenv("MODEL_ZOO_DIR", "  ")
    monkeypatch.setattr(common, "BUNDLED_ZOO_PARENT", empty)
    with pytest.raises(InputError, match="no zoo release found under"):
        default_zoo_dir(empty)
    assert common.default_release() is None
    monkeypatch.setenv("MODEL_ZOO_DIR", str(tmp_path / "mine"))
    assert default_zoo_dir(empty) == common.default_release() == tmp_path / "mine"
