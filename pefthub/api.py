"""Python API for notebooks and services: ``pefthub.load(adapter_dir).predict(texts)``.

The adapter directory (what ``fit`` writes to ``<run>/adapter``, or ``pefthub import``'s
output) says everything needed (:mod:`pefthub.adapter_card`): the method and its structure
(``adapter_config.json``), the backbone, labels and max length (``usage.json``). Loading runs
no code from the directory: safetensors + JSON only.

    >>> model = pefthub.load("runs/quickstart/version_0/adapter")
    >>> model.predict(["a gripping film", "dull"])
    [{'label': 'positive', 'probability': 0.93, 'probabilities': {...}}, ...]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pefthub.adapter_card import backbone_weights_sha256, read_usage
from pefthub.adapters.io import CONFIG_NAME, AdapterFileError, read_json_object


def _method_classes() -> dict[str, type]:
    from pefthub import methods

    return {cls.method_name: cls for cls in (
        methods.LoRAModule, methods.AdaLoRAModule, methods.ImportanceLoRAModule, methods.GLoRAModule,
        methods.VeRAModule, methods.SATLoRAModule, methods.UniHyperLoRAModule, methods.FullFineTuneModule,
    )}


def build_module(directory: str | Path, backbone: str | None = None):
    """The method module an adapter directory describes, with its tensors loaded (eval mode).

    ``backbone`` overrides the recorded one (UniHyperLoRA adapters load onto any host)."""
    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file():
        raise AdapterFileError(f"{directory}: not an adapter directory (no {CONFIG_NAME})")
    config = read_json_object(directory / CONFIG_NAME)
    usage = read_usage(directory)
    classes = _method_classes()
    method = config.get("method")
    if method not in classes:
        raise AdapterFileError(f"{directory / CONFIG_NAME}: unknown method {method!r}; expected one of {sorted(classes)}")
    backbone = backbone or usage.get("backbone") or config.get("backbone")
    if not backbone:
        raise ValueError(f"{directory}: the adapter records no backbone (usage.json is missing); pass backbone=NAME")
    recorded = usage.get("backbone_weights_sha256")
    if recorded and backbone == usage.get("backbone") and backbone_weights_sha256(backbone) not in (None, recorded):
        raise ValueError(f"{directory}: the adapter was trained on {backbone} weights with SHA-256 {recorded}, "
                         f"but {backbone} here has SHA-256 {backbone_weights_sha256(backbone)}; install the weights "
                         "it was trained on (pefthub install-models), or pass another backbone explicitly")
    labels = usage.get("label_names") or config.get("label_names")
    common: dict[str, Any] = {
        "backbone": backbone,
        "task_type": usage.get("task_type") or config.get("task_type") or "sequence_classification",
        "num_labels": len(labels) if labels else int(config.get("num_labels", 2)),
        "label_names": labels,
        "head_dropout": 0.0,
    }
    if usage.get("pooling") or config.get("pooling"):
        common["pooling"] = usage.get("pooling") or config["pooling"]
    cls = classes[method]
    if method in ("unihyperlora", "satlora"):
        module = cls(init_adapter=str(directory), max_adapter_bytes=None, max_flop_overhead=None, **common)
    else:
        module = cls(**common, **_structure(method, config))
        module.load_adapter(directory)
    return module.eval()


def _structure(method: str, config: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments that give a module the adapter file's tensor shapes."""
    if method == "full_finetune":
        return {}
    if method == "vera":
        return {key: config[key] for key in ("rank", "d_initial", "projection_prng_key", "target_modules", "save_projection") if key in config}
    if method == "adalora":
        return {key: config[key] for key in ("init_rank", "target_rank", "alpha", "target_modules") if key in config}
    ranks = config.get("rank_pattern") or {}
    scalings = config.get("scaling_pattern") or {}
    out: dict[str, Any] = {
        "rank": int(config.get("rank") or max(ranks.values(), default=8)),
        "alpha": float(config.get("alpha", 16.0)),
        "target_modules": config.get("target_modules"),
    }
    if method in ("lora", "importance_lora") and ranks:
        out["rank_pattern"] = ranks
        out["alpha_pattern"] = {name: scalings[name] * r for name, r in ranks.items() if name in scalings}
    return out


class Predictor:
    """A loaded adapter on its backbone: ``predict(texts)`` returns labels and probabilities.

    Args:
        module: the method module (eval mode).
        max_length: tokenised length (the data's, from ``usage.json``; default 128).
        device: ``cuda`` when available, else ``cpu`` (or as given).
    """

    def __init__(self, module, max_length: int = 128, device: str | torch.device | None = None) -> None:
        from pefthub.backbones import load_tokenizer

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module = module.to(self.device).eval()
        self.max_length = max_length
        self.tokenizer = load_tokenizer(module.backbone_name)
        self.label_names = list(module.label_names)
        self.task_type = module.task_type

    @torch.no_grad()
    def logits(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> torch.Tensor:
        """Class logits of ``texts`` (and their second texts, for pair tasks), one batch."""
        encoded = self.tokenizer(list(texts), list(pairs) if pairs is not None else None, padding=True,
                                 truncation=True, max_length=self.max_length, return_tensors="pt")
        encoded = {k: v.to(self.device) for k, v in encoded.items()}
        return self.module(encoded["input_ids"], encoded["attention_mask"], encoded.get("token_type_ids")).float().cpu()

    def predict(self, texts: str | Sequence[str], pairs: Sequence[str] | None = None, batch_size: int = 64) -> list[dict[str, Any]]:
        """``[{"label", "probability", "probabilities": {name: p}}]`` per text, batched."""
        if self.task_type != "sequence_classification":
            raise ValueError("predict(texts) is for sentence and pair tasks; this adapter is a token-classification one")
        if isinstance(texts, str):
            texts = [texts]
        rows: list[dict[str, Any]] = []
        for start in range(0, len(texts), batch_size):
            chunk = pairs[start : start + batch_size] if pairs is not None else None
            probabilities = self.logits(texts[start : start + batch_size], chunk).softmax(-1)
            for probs in probabilities.tolist():
                best = max(range(len(probs)), key=probs.__getitem__)
                rows.append({"label": self.label_names[best], "probability": probs[best],
                             "probabilities": dict(zip(self.label_names, probs, strict=True))})
        return rows


def load(directory: str | Path, backbone: str | None = None, device: str | None = None) -> Predictor:
    """A :class:`Predictor` for the adapter directory ``directory`` (no config needed)."""
    module = build_module(directory, backbone=backbone)
    return Predictor(module, max_length=int(read_usage(directory).get("max_length") or 128), device=device)
