"""Full fine-tuning: the reference every PEFT method is compared against."""

from __future__ import annotations

from typing import Any

import torch

from pefthub.methods.base import PEFTModule


class FullFineTuneModule(PEFTModule):
    """Every backbone weight and the head are trained; no adapter is inserted.

    The "adapter file" is the whole fine-tuned model (all backbone parameters + head, as
    safetensors + JSON), so its size is what full fine-tuning must ship per task and per host,
    and checkpoints hold every weight with its optimiser state. Use a learning rate one to two
    orders of magnitude below LoRA's (``configs/full/sst2.yaml``: 5e-5).

    Args:
        **kwargs: the shared arguments of :class:`~pefthub.methods.base.PEFTModule`.
    """

    method_name = "full_finetune"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.adapters_ready(trainable=self.backbone.parameters())  # the backbone itself is trained

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """All backbone parameters (``backbone.<name>``) and the task head (``head.*``)."""
        tensors = {f"backbone.{name}": param for name, param in self.backbone.named_parameters()}
        tensors.update({f"head.{name}": value for name, value in self.head.state_dict().items()})
        return tensors

    def adapter_config(self) -> dict[str, Any]:
        return {"trained": "all backbone parameters and the head"}
