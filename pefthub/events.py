"""The one place that reads TensorBoard event files: the grid's results rows, the analysis
tables, the benchmarks and the tests all go through these two functions, so a change of
reader (or of TensorBoard's API) is made once."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

# 0 = keep every event; TensorBoard's default reservoir-samples long scalar series down to 10,000
_KEEP_ALL = {"scalars": 0, "tensors": 0, "images": 0, "histograms": 0}


def _accumulator(path: str | Path, kinds: Iterable[str]) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(path), size_guidance={kind: _KEEP_ALL[kind] for kind in kinds}).Reload()


def read_scalars(path: str | Path, tags: Iterable[str] | None = None) -> dict[str, list[tuple[int, float]]]:
    """Every scalar logged under ``path`` as ``{tag: [(step, value), ...]}`` in logging order,
    unsampled. ``path`` is a run folder (its event files directly inside it, in name order, i.e.
    creation order) or one event file. ``tags`` keeps only those tags; a tag that was never
    logged is absent from the result rather than an error, so callers can test membership."""
    accumulator = _accumulator(path, ["scalars"])
    logged = accumulator.Tags()["scalars"]
    wanted = logged if tags is None else [tag for tag in tags if tag in logged]
    return {tag: [(e.step, float(e.value)) for e in accumulator.Scalars(tag)] for tag in wanted}


def event_tags(path: str | Path) -> dict[str, list[str]]:
    """The tags logged under ``path`` (a run folder or one event file) by kind: ``scalars``,
    ``histograms``, ``tensors`` (text summaries), ``images``; for checks that something other
    than a scalar was logged."""
    kinds = ["scalars", "histograms", "tensors", "images"]
    logged = _accumulator(path, kinds).Tags()
    return {kind: list(logged.get(kind, [])) for kind in kinds}
