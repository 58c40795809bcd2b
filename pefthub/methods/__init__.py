"""One thin LightningModule per PEFT method, on the shared :class:`PEFTModule`."""

from pefthub.methods.adalora import AdaLoRAModule
from pefthub.methods.base import PEFTModule
from pefthub.methods.lora import LoRAModule
from pefthub.methods.unihyperlora import UniHyperLoRAModule

__all__ = ["AdaLoRAModule", "LoRAModule", "PEFTModule", "UniHyperLoRAModule"]
