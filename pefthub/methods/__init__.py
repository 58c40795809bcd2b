"""One thin LightningModule per PEFT method, on the shared :class:`PEFTModule`."""

from pefthub.methods.adalora import AdaLoRAModule
from pefthub.methods.base import PEFTModule
from pefthub.methods.full import FullFineTuneModule
from pefthub.methods.glora import GLoRAModule
from pefthub.methods.hf_peft import HFPEFTAdaLoRAModule, HFPEFTLoRAModule
from pefthub.methods.importance_lora import ImportanceLoRAModule
from pefthub.methods.lora import LoRAModule
from pefthub.methods.satlora import SATLoRAModule
from pefthub.methods.unihyperlora import UniHyperLoRAModule
from pefthub.methods.vera import VeRAModule

__all__ = ["AdaLoRAModule", "FullFineTuneModule", "GLoRAModule", "HFPEFTAdaLoRAModule", "HFPEFTLoRAModule", "ImportanceLoRAModule", "LoRAModule", "PEFTModule", "SATLoRAModule", "UniHyperLoRAModule", "VeRAModule"]
