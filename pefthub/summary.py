"""The one line a run ends with: what was measured, on what, and where the files are.

    pefthub: test accuracy 0.8635 (mcc 0.7270, loss 0.3301) on sst2 test (872) · best checkpoint runs/.../best.ckpt · adapter runs/.../adapter (1.35 MB)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# entity F1 exactly 0 almost always means every word was tagged O; say what usually fixes it
NO_ENTITY_HINT = ("no entity found (usually every word tagged O: a fresh head at the adapter's lr needs ~2 epochs "
                  "at full lr; for a short schedule set model.head_lr 10x the lr, docs/ner.md)")


def _size(path: Path) -> str:
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return f"{total / 1e6:.2f} MB" if total >= 1e5 else f"{total / 1e3:.1f} kB"


def summary_line(
    metrics: dict[str, Any], stage: str, datamodule: Any = None, checkpoint: str | None = None, adapter: str | Path | None = None,
    examples: int | None = None, label: str | None = None,
) -> str:
    """``<stage> <primary> <value> (<others>) on <source> <split> (<n>) · checkpoint … · adapter … (size)``;
    ``label`` replaces ``<stage>`` in the text (e.g. ``best val``)."""
    values = {k.split("/", 1)[1]: float(v) for k, v in metrics.items() if k.startswith(f"{stage}/") and getattr(v, "numel", lambda: 1)() == 1}
    primary = getattr(datamodule, "primary_metric", "accuracy")
    parts = []
    if primary in values:
        others = [f"{k} {v:.4f}" for k, v in sorted(values.items()) if k != primary]
        head = f"{label or stage} {primary} {values[primary]:.4f}" + (f" ({', '.join(others)})" if others else "")
    elif values:
        head = f"{label or stage} " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(values.items()))
    else:
        head = f"{stage}: no metrics (unlabelled data)"
    split = {"val": "validation"}.get(stage, stage)
    own_file = (getattr(datamodule, "files", None) or {}).get(split) if getattr(datamodule, "task", None) is None else None
    source = own_file or (f"{datamodule.source_name()} {split}" if hasattr(datamodule, "source_name") else None)
    if source:
        head += f" on {source}" + (f" ({examples})" if examples else "")
    parts.append(head)
    if primary == "entity_f1" and values.get(primary) == 0.0:
        parts.append(NO_ENTITY_HINT)
    if checkpoint:
        parts.append(f"checkpoint {checkpoint}")
    if adapter and Path(adapter).exists():
        parts.append(f"adapter {adapter} ({_size(Path(adapter))})")
    return "pefthub: " + " · ".join(parts)


def evaluated_examples(trainer: Any, datamodule: Any, split: str) -> int | None:
    """How many examples of ``split`` the last evaluation saw (all, or ``limit_*_batches`` of them)."""
    datasets = getattr(datamodule, "datasets", None)
    if not datasets or split not in datasets:
        return None
    total = len(datasets[split])
    batches = {"test": trainer.num_test_batches, "validation": trainer.num_val_batches}.get(split) or []
    size = getattr(datamodule, "eval_batch_size", None)
    if batches and size:
        return min(total, int(sum(batches)) * size)
    return total
