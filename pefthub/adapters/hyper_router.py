"""r_φ, UniHyperLoRA's router: atom logits per token from the canonical hidden state and the task. Plain torch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Router(nn.Module):
    """r_φ: canonical hidden state and task embedding -> atom logits, ``W_r ẑ + W_t e_task + b``."""

    def __init__(self, num_atoms: int, d0: int, num_tasks: int = 1, task_dim: int = 16) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_atoms, d0) / math.sqrt(d0))
        self.task_embedding = nn.Parameter(torch.randn(num_tasks, task_dim) / math.sqrt(task_dim))
        self.task_weight = nn.Parameter(torch.zeros(num_atoms, task_dim))
        self.bias = nn.Parameter(torch.zeros(num_atoms))

    def task_bias(self, task_id: int) -> torch.Tensor:
        if not 0 <= task_id < self.task_embedding.shape[0]:
            raise ValueError(f"model.task_id={task_id} is outside [0, num_tasks={self.task_embedding.shape[0]})")
        embedding = self.task_embedding[task_id : task_id + 1]  # (1, task_dim): 2-D keeps FLOP counters exact
        return F.linear(embedding, self.task_weight, self.bias)[0]
