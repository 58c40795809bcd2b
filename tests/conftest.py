"""Shared test set-up: offline, one thread (2-core machines slow down 10-100x otherwise)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    """A small padded batch of real text tokenised by the tiny-bert tokenizer."""
    from pefthub.backbones import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    texts = ["a good movie , really good", "the worst film of the year", "fun", "never boring, always new!"]
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))
