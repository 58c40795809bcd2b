"""Random-number-generator state in the checkpoint, so a resumed run draws what the
uninterrupted run would have drawn (dropout masks, random initialisations)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback


class RNGState(Callback):
    """Saves the Python, NumPy and torch CPU (and CUDA, where present) generator states with
    every checkpoint and restores them on resume. Only tensors, ints and lists are stored,
    so checkpoints still load with ``torch.load(weights_only=True)``."""

    def state_dict(self) -> dict[str, Any]:
        version, python_state, gauss = random.getstate()
        numpy_state = np.random.get_state()
        state = {
            "python": [version, list(python_state), gauss],
            "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version, python_state, gauss = state_dict["python"]
        random.setstate((version, tuple(python_state), gauss))
        name, keys, *rest = state_dict["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
