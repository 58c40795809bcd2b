"""``pefthub export --format merged ADAPTER_DIR OUT_DIR``: a plain Hugging Face model directory.

The adapter is merged into the backbone's Linear weights (each adapted layer is an affine map
in eval mode, read back exactly by probing it with the identity), and the directory holds:

- ``config.json`` + ``model.safetensors`` (+ tokenizer files): ``transformers.AutoModel`` loads it
  without pefthub (``id2label`` carries the label names);
- ``pefthub_head.safetensors`` (``weight``, ``bias``) and ``pefthub_head.json`` (``pooling``,
  ``label_names``, ``task_type``): logits = head(pool(last_hidden_state)), where ``mean``
  pooling is the attention-masked mean, ``cls`` the first token, ``last`` the last real token.

Methods whose update depends on the input beyond a linear map (UniHyperLoRA / SAT-LoRA route
tokens to atoms) cannot be merged: that is a one-line error.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

HEAD_WEIGHTS = "pefthub_head.safetensors"
HEAD_CONFIG = "pefthub_head.json"


class MergeError(ValueError):
    """The adapter cannot be merged into plain weights; the message says why."""


@torch.no_grad()
def effective_linear(layer: nn.Module, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, b)`` with ``layer(x) == x @ W.T + b`` for an eval-mode layer that is affine in x."""
    probe = torch.eye(in_features).unsqueeze(0)
    zero = torch.zeros(1, 1, in_features)
    bias = layer(zero)[0, 0]
    weight = (layer(probe)[0] - bias).T.contiguous()
    check = torch.randn(1, 4, in_features, generator=torch.Generator().manual_seed(0))
    if not torch.allclose(layer(check), check @ weight.T + bias, rtol=1e-4, atol=1e-5):
        raise MergeError("its update depends on the input beyond a linear map")
    return weight, bias


def _restore_pooler(plain: nn.Module, name: str) -> None:
    """pefthub drops a BERT-style pooler it never uses; the exported model keeps the source's
    own pooler weights so that ``transformers`` loads the directory without missing keys."""
    from pefthub.backbone_variants import split_name, tiny_overrides
    from pefthub.backbones import TINY_MODELS, resolve_source

    base, ops = split_name(name)
    if getattr(plain, "pooler", "absent") is not None or ops or base in TINY_MODELS or tiny_overrides(base) is not None:
        return  # no pooler dropped, a derived host, or a tiny model built in code (no source weights)
    from transformers import AutoModel

    plain.pooler = AutoModel.from_pretrained(resolve_source(base)).pooler


@torch.no_grad()
def export_merged(adapter_dir: str | Path, out_dir: str | Path, backbone: str | None = None) -> Path:
    """Write the merged model of ``adapter_dir`` to ``out_dir`` (module docstring)."""
    from pefthub.adapter_card import read_usage
    from pefthub.api import build_module
    from pefthub.backbones import load_backbone

    method = read_usage(adapter_dir).get("method")
    if method in ("unihyperlora", "satlora"):
        raise MergeError(
            f"{adapter_dir}: a {method} adapter routes each token to its own atoms, so it has no merged "
            "weights; use the adapter directory itself (pefthub.load / pefthub predict --adapter)"
        )
    module = build_module(adapter_dir, backbone=backbone)
    plain, tokenizer = load_backbone(module.backbone_name)
    plain.eval()
    if module.method_name == "full_finetune":
        plain.load_state_dict(module.backbone.state_dict(), strict=False)
    else:
        for name, target in plain.named_modules():
            if not isinstance(target, nn.Linear):
                continue
            adapted = module.backbone.get_submodule(name)
            if type(adapted) is nn.Linear:
                continue
            try:
                weight, bias = effective_linear(adapted, target.in_features)
            except MergeError as error:
                raise MergeError(f"{adapter_dir}: layer {name}: {error}; it cannot be merged") from None
            target.weight.copy_(weight.to(target.weight.dtype))
            if target.bias is not None:
                target.bias.copy_(bias.to(target.bias.dtype))
            elif bias.abs().max() > 1e-6:
                raise MergeError(f"{adapter_dir}: layer {name} has no bias to hold the adapter's offset; it cannot be merged")
    _restore_pooler(plain, module.backbone_name)  # after the merge: pefthub's backbone has no pooler to read
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plain.config.id2label = dict(enumerate(module.label_names))
    plain.config.label2id = {name: i for i, name in enumerate(module.label_names)}
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    head = {k: v.detach().cpu().contiguous() for k, v in module.head.state_dict().items()}
    save_file(head, str(out / HEAD_WEIGHTS), metadata={"format": "pt"})
    (out / HEAD_CONFIG).write_text(json.dumps({
        "pooling": module.pooling, "label_names": list(module.label_names), "task_type": module.task_type,
        "merged_from": {"method": module.method_name, "backbone": module.backbone_name},
    }, indent=2, sort_keys=True) + "\n")
    return out
