"""How the ``pefthub`` command words things: errors in one line, docstrings as help text."""

from __future__ import annotations


def _plain_text(doc: str) -> str:
    """A docstring as help text: reStructuredText roles and literals as plain words
    (``:class:`~a.B``` → ``B``, double backticks dropped), the first paragraph on one line so
    that a help title built from its first line is the whole sentence."""
    import inspect
    import re

    text = inspect.cleandoc(doc)
    text = re.sub(r":(?:class|func|meth|mod|attr|data|obj):`~?([^`]*?)`", lambda m: m.group(1).rsplit(".", 1)[-1] if "~" in m.group(0) else m.group(1), text)
    text = text.replace("``", "")
    first, sep, rest = text.partition("\n\n")
    return " ".join(line.strip() for line in first.splitlines()) + sep + rest


def _help_friendly_docstrings() -> None:
    """Rewrite the method and data classes' docstrings for ``--help`` / ``--model.help``
    (:func:`_plain_text`); only the ``pefthub`` command does this, the library keeps its docs."""
    from pefthub import data, methods

    for module in (methods, data):
        for name in module.__all__:
            cls = getattr(module, name)
            if cls.__doc__ and not getattr(cls, "_pefthub_help_text", False):
                cls.__doc__ = _plain_text(cls.__doc__)
                cls._pefthub_help_text = True


def _one_line(error: BaseException) -> str:
    """The user-facing line of an error. jsonargparse wraps a constructor's ValueError in a
    report over every member of the ``class | None`` union; keep just the real message."""
    text = str(error)
    reasons = [
        line.strip()[2:]
        for line in text.splitlines()
        if line.strip().startswith("- ") and not line.strip().startswith("- Expected a <class 'NoneType'>")
    ]
    return reasons[0] if reasons else text.splitlines()[0] if text else type(error).__name__
