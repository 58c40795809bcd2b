"""Task losses beyond torch's cross-entropy, and the error a non-finite training loss raises."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message says at which step."""


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean of −(1 − p_y)^γ log p_y over the positions whose label is not -100 (Lin et al.,
    2017, without the α balancing term); γ = 0 gives cross-entropy."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    keep = labels != -100
    log_p_y = log_p.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    per_position = -((1 - log_p_y.exp()) ** gamma) * log_p_y
    return (per_position * keep).sum() / keep.sum().clamp(min=1)
