"""The zoo release format: one immutable folder, written atomically, verified before use.

Layout of a release folder::

    manifest.json        everything needed to use the release (the schema: ``model_zoo.manifest.Manifest``)
    manifest.sha256      sha256 of manifest.json (so an edited manifest is refused too)
    members/<id>.safetensors
    stacker.joblib       the chosen stacker and the clinic-only model
    config.yaml          the resolved training config
    MODEL_CARD.md
    report/...           evaluation reports written at fit time

``Manifest.files`` maps every other file's relative path to its sha256. Loading checks,
in this order and before anything is unpickled: manifest hash, that every listed path stays
inside the folder, that no file is missing and no unlisted file exists, and every hash.
Writing goes to a hidden temporary folder beside the destination and is renamed into place
only when complete, so a crash never leaves a half-written release.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from model_zoo.errors import InputError, IntegrityError
from model_zoo.manifest import FORMAT_VERSION, MANIFEST_FILE, Manifest, manifest_from_json, read_manifest_file

MANIFEST = MANIFEST_FILE
MANIFEST_HASH = "manifest.sha256"
_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_ZOO_PARENT = REPO_ROOT / "assets" / "zoo"
ZOO_ENV = "MODEL_ZOO_DIR"  # names the release to use instead of the newest bundled one


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write a file so readers see the old or the new content, never a partial one.

    ``mode``: permission bits set before the rename (the temporary file is 0600), e.g.
    0o644 for a report meant to be shared; None keeps 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, *, mode: int | None = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def release_dir_name(name: str, version: str) -> str:
    return f"{name}-{version}"


def parse_version(version: str) -> tuple[int, int, int]:
    match = _SEMVER.match(version or "")
    if not match:
        raise InputError(f"version {version!r} is not semantic (MAJOR.MINOR.PATCH)")
    return tuple(int(g) for g in match.groups())  # type: ignore[return-value]


def next_patch(version: str) -> str:
    """The next patch version (2.1.2 -> 2.1.3): the default of the ``add-*`` release commands."""
    major, minor, patch = parse_version(version)
    return f"{major}.{minor}.{patch + 1}"


def _listed_files(root: Path) -> set[str]:
    """Every non-directory entry (regular files, symlinks, FIFOs, sockets, devices)."""
    out = set()
    for path in root.rglob("*"):
        if path.is_symlink() or not path.is_dir():
            out.add(path.relative_to(root).as_posix())
    return out


class ReleaseWriter:
    """Build a release in a temporary folder and publish it atomically.

    Usage::

        with ReleaseWriter(parent, name, version) as rw:
            rw.write_bytes("members/vit.safetensors", blob)
            final_dir = rw.publish(manifest)   # a model_zoo.manifest.Manifest

    Leaving the block without ``publish`` (an exception, a kill) removes the temp folder;
    a kill -9 leaves only a hidden ``.tmp-*`` folder that loaders never consider.
    """

    def __init__(self, parent: Path, name: str, version: str):
        if not _NAME.match(name):
            raise InputError(f"release name {name!r}: use letters, digits, '_', '-', '.'")
        parse_version(version)
        self.parent = Path(parent)
        self.name, self.version = name, version
        self.final_dir = self.parent / release_dir_name(name, version)
        if self.final_dir.exists():
            raise InputError(f"release {self.final_dir} already exists; releases are immutable - bump the version")
        self.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-{version}-", dir=self.parent))
        self._published = False

    def path(self, rel: str) -> Path:
        target = (self.tmp_dir / rel).resolve()
        if self.tmp_dir.resolve() not in target.parents:
            raise ValueError(f"path {rel!r} escapes the release folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.path(rel).write_bytes(data)

    def write_text(self, rel: str, text: str) -> None:
        self.path(rel).write_text(text, encoding="utf-8")

    def copy_file(self, rel: str, src: Path) -> None:
        shutil.copyfile(src, self.path(rel))

    def publish(self, manifest: Manifest) -> Path:
        """Seal the folder: the manifest gets this release's name, version, the current
        ``FORMAT_VERSION`` and every written file's sha256, then the folder is renamed into place."""
        files = sorted(_listed_files(self.tmp_dir) - {MANIFEST, MANIFEST_HASH})
        manifest = manifest.replace(
            format_version=FORMAT_VERSION,
            name=self.name,
            version=self.version,
            files={rel: sha256_file(self.tmp_dir / rel) for rel in files},
        )
        blob = manifest.to_json_bytes()
        (self.tmp_dir / MANIFEST).write_bytes(blob)
        (self.tmp_dir / MANIFEST_HASH).write_text(sha256_bytes(blob) + "\n", encoding="ascii")
        for path in self.tmp_dir.rglob("*"):
            if path.is_file():
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        # rename is atomic within one filesystem; the temp folder lives beside the target.
        os.rename(self.tmp_dir, self.final_dir)
        self._published = True
        return self.final_dir

    def __enter__(self) -> ReleaseWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._published:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)


def verify_release(root: Path | str) -> Manifest:
    """Check a release folder and return its typed manifest; raise IntegrityError on any
    problem (``model_zoo.manifest.UnsupportedFormatError``, an InputError, for a manifest
    format this library does not read).

    Nothing is unpickled or deserialised beyond the manifest's JSON.
    """
    root = Path(root)
    if not root.is_dir():
        raise IntegrityError(f"zoo folder not found: {root}")
    manifest_path, hash_path = root / MANIFEST, root / MANIFEST_HASH
    for required in (manifest_path, hash_path):
        if required.is_symlink():
            raise IntegrityError(f"{root.name}: {required.name} is a symbolic link; releases hold plain files only")
        if not required.is_file():
            raise IntegrityError(f"{root.name}: {required.name} is missing")
    blob = manifest_path.read_bytes()
    expected = hash_path.read_text(encoding="ascii", errors="replace").strip()
    if sha256_bytes(blob) != expected:
        raise IntegrityError(f"{root.name}: manifest.json was modified (sha256 does not match manifest.sha256)")
    manifest = manifest_from_json(blob, root.name)
    files = manifest.files
    if not files:
        raise IntegrityError(f"{root.name}: manifest lists no files")
    real_root = root.resolve()
    for rel in files:
        candidate = Path(rel)
        if candidate.is_absolute() or ".." in candidate.parts:
            raise IntegrityError(f"{root.name}: manifest entry {rel!r} points outside the release folder")
        resolved = (root / rel).resolve()
        if real_root not in resolved.parents:
            raise IntegrityError(f"{root.name}: manifest entry {rel!r} points outside the release folder")
        if (root / rel).is_symlink():
            raise IntegrityError(f"{root.name}: {rel} is a symbolic link; releases hold plain files only")
        if (root / rel).exists() and not (root / rel).is_file():
            raise IntegrityError(f"{root.name}: {rel} is not a regular file")
    present = _listed_files(root) - {MANIFEST, MANIFEST_HASH}
    missing = sorted(set(files) - present)
    extra = sorted(present - set(files))
    if missing:
        raise IntegrityError(
            f"{root.name}: file missing from the release: {missing[0]}"
            + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    if extra:
        raise IntegrityError(
            f"{root.name}: unexpected file in the release: {extra[0]}" + (f" (+{len(extra) - 1} more)" if len(extra) > 1 else "")
        )
    for rel, digest in files.items():
        if not (root / rel).is_file():
            raise IntegrityError(f"{root.name}: {rel} is not a regular file")
        if sha256_file(root / rel) != digest:
            raise IntegrityError(f"{root.name}: {rel} was modified (sha256 does not match the manifest)")
    return manifest


def verified_path(root: Path, manifest: Manifest, rel: Any, what: str) -> Path:
    """A file the loader is about to open, only if it is one of the verified (hashed) files."""
    return manifest.verified_path(root, rel, what)


def list_releases(parent: Path | str = BUNDLED_ZOO_PARENT) -> list[Path]:
    """Release folders under ``parent`` (those with a manifest), newest version last."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    found = []
    for child in parent.iterdir():
        if child.name.startswith(".") or not (child / MANIFEST).is_file():
            continue
        try:
            found.append((parse_version(read_manifest_file(child).version), child.name, child))
        except (ValueError, OSError, IntegrityError):
            continue
    return [path for _, _, path in sorted(found)]


def default_zoo_dir(parent: Path | str | None = None) -> Path:
    """The zoo used when none is named: ``$MODEL_ZOO_DIR``, else the newest release under
    ``parent`` (default: the bundled releases). The CLIs and the dashboard both ask here.

    Raises InputError when neither exists.
    """
    env = os.environ.get(ZOO_ENV, "").strip()
    if env:
        return Path(env)
    parent = BUNDLED_ZOO_PARENT if parent is None else Path(parent)
    releases = list_releases(parent)
    if not releases:
        raise InputError(f"no zoo release found under {parent}; pass --zoo DIR or set {ZOO_ENV}")
    return releases[-1]


SHARED_PLOTLY = "report/plotly.min.js"
SPLIT_REPORT_PLOTLY_SRC = "../plotly.min.js"  # how report/<split>/report.html loads SHARED_PLOTLY


def plotly_script_tag(src: str) -> str:
    """The one form of the tag that loads plotly.js from ``src`` (written by training/report/render.py,
    found again here to inline the bundle)."""
    import html

    return f'<script type="text/javascript" src="{html.escape(src)}"></script>'


def standalone_report_html(root: Path | str, split: str) -> bytes | None:
    """A release's ``report/<split>/report.html`` as one self-contained offline file.

    Releases share one plotly.js between their reports (size budget); for download or
    embedding, the shared bundle is inlined back so the file works on its own.
    """
    root = Path(root)
    path = root / "report" / split / "report.html"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    tag = plotly_script_tag(SPLIT_REPORT_PLOTLY_SRC)
    shared = root / SHARED_PLOTLY
    if tag in text and shared.is_file():
        bundle = shared.read_text(encoding="utf-8")
        text = text.replace(tag, f'<script type="text/javascript">{bundle}</script>')
    return text.encode("utf-8")
