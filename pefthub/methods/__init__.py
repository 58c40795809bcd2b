"""One thin LightningModule per PEFT method, on the shared :class:`PEFTModule`."""

from pefthub.methods.base import PEFTModule
from pefthub.methods.lora import LoRAModule

__all__ = ["LoRAModule", "PEFTModule"]
