"""Silence what a pefthub run does not need to show (the ``pefthub`` command installs it).

- Lightning's product tips (``💡 Tip: ... litlogger / litmodels``);
- Lightning's note that ``configure_callbacks`` overrides trainer callbacks (pefthub's own
  callbacks, returned by every method, by design);
- ``_pytree``'s ``LeafSpec is deprecated`` (inside Lightning, not actionable here);
- the source line Python prints under every warning (``rank_zero_warn(``): a warning is one line;
- transformers' ``Loading weights`` progress bar, and (stderr not a terminal) datasets' per-split bars.
"""

from __future__ import annotations

import logging
import sys
import warnings

DROPPED_PREFIXES = (
    "💡 Tip:",
    "The following callbacks returned in `LightningModule.configure_callbacks` will override",
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(DROPPED_PREFIXES)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"{filename}:{lineno}: {category.__name__}: {message}\n"


def install() -> None:
    """Install the filters (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
    try:  # transformers' "Loading weights" bar on every backbone load
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    if not sys.stderr.isatty():  # datasets' per-split bars are two lines each in a log file
        try:
            import datasets

            datasets.disable_progress_bars()
        except ImportError:  # pragma: no cover - datasets is a dependency
            pass
    warnings.formatwarning = _one_line_warning
