"""A model summary without Lightning's FLOPs figures.

Lightning's summary shows ``FLOPs`` and ``Total FLOPs: 0`` when the module has no
``example_input_array`` (pefthub's modules take tokenised batches): a misleading zero. pefthub
measures FLOPs with fvcore where it matters (``model.max_flop_overhead``); this summary prints the
parameter figures only, as plain lines that read well in a log.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary import get_human_readable_count


class ParamsSummary(ModelSummary):
    """The top-level modules with their parameter counts, then trainable / total."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        **kwargs: Any,
    ) -> None:
        from lightning.pytorch.utilities import rank_zero_info

        columns = {name: values for name, values in summary_data}
        names, types, params = columns.get("Name", []), columns.get("Type", []), columns.get("Params", [])
        lines = [f"  {name:<14} {kind:<22} {count:>8}" for name, kind, count in zip(names, types, params, strict=False)]
        share = 100.0 * trainable_parameters / max(1, total_parameters)
        lines.append(
            f"  trainable {get_human_readable_count(int(trainable_parameters))} of "
            f"{get_human_readable_count(int(total_parameters))} parameters ({share:.2f}%), {model_size:.2f} MB in all"
        )
        rank_zero_info("model:\n" + "\n".join(lines))
