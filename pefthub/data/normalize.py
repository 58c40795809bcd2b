"""Text normalisation used to detect overlap between datasets.

Two copies of the same movie-review sentence rarely agree byte for byte: GLUE SST-2 is
lowercased and Penn-Treebank tokenised (``it 's``, ``-lrb-``, ````` ... ''``), while the
VADER snippets keep the original casing and punctuation, sometimes with HTML entities
(``&amp;``) or with hyphens replaced by spaces. :func:`normalize_text` maps both to the
same key by keeping only lowercase ASCII letters and digits, so the comparison is
insensitive to case, accents, tokenisation, whitespace and punctuation.

:func:`sentence_run_keys` additionally finds a sentence *inside* a longer multi-sentence
snippet: SST-2 split many Rotten Tomatoes snippets into single sentences, so a test
sentence can be part of one training row without being equal to it.
"""

from __future__ import annotations

import html
import re
import unicodedata

__all__ = ["normalize_text", "split_sentences", "sentence_run_keys"]

# Penn-Treebank bracket escapes (GLUE's SST-2 writes plain brackets, but other copies of
# the treebank use these).
_PTB_BRACKETS = {
    "-lrb-": "(",
    "-rrb-": ")",
    "-lsb-": "[",
    "-rsb-": "]",
    "-lcb-": "{",
    "-rcb-": "}",
}
_PTB_RE = re.compile("|".join(re.escape(tok) for tok in _PTB_BRACKETS))

# Latin letters that NFKD does not decompose into a base letter plus combining marks
# ("Næss" must match "naess").
_TRANSLITERATE = str.maketrans(
    {
        "æ": "ae",
        "œ": "oe",
        "ø": "o",
        "ß": "ss",
        "đ": "d",
        "ð": "d",
        "þ": "th",
        "ł": "l",
        "ı": "i",
    }
)

_NOT_ALNUM_RE = re.compile(r"[^a-z0-9]+")

# A sentence ends after a run of terminal punctuation, optionally followed by closing
# quotes/brackets. Splitting here is deliberately generous (abbreviations such as "Mr."
# also split): sentence_run_keys joins consecutive pieces again, so over-splitting only
# adds candidate keys and never loses a real sentence boundary.
_SENTENCE_END_RE = re.compile(r"(?<=[.!?;:\u2026])(?![.!?;:\u2026])['\"\u2019\u201d)\]]*\s*")


def normalize_text(text: str) -> str:
    """Return a comparison key for ``text``: lowercase ``[a-z0-9]`` characters only.

    Steps: unescape HTML entities, NFKD-decompose and drop combining marks (``é`` ->
    ``e``), transliterate a few non-decomposable letters (``æ`` -> ``ae``), lowercase,
    replace PTB bracket tokens (``-lrb-`` -> ``(``), then drop every character that is
    not an ASCII letter or digit (all whitespace and punctuation).

    >>> normalize_text("it 's a charming -lrb- and often affecting -rrb- journey . ")
    'itsacharmingandoftenaffectingjourney'
    >>> normalize_text("It's a charming (and often affecting) journey.")
    'itsacharmingandoftenaffectingjourney'
    """
    text = html.unescape(text)
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = text.lower().translate(_TRANSLITERATE)
    text = _PTB_RE.sub(lambda m: _PTB_BRACKETS[m.group(0)], text)
    return _NOT_ALNUM_RE.sub("", text)


def split_sentences(text: str) -> list[str]:
    """Split ``text`` after terminal punctuation (``. ! ? ; : ...``), keeping non-empty pieces.

    This is an over-splitting heuristic meant for overlap detection, not a linguistic
    sentence splitter.
    """
    return [piece for piece in _SENTENCE_END_RE.split(text) if piece.strip()]


def sentence_run_keys(text: str) -> set[str]:
    """Normalised keys of every run of consecutive pieces of :func:`split_sentences`.

    The set includes ``normalize_text(text)`` itself (the run of all pieces). A sentence
    ``s`` occurs in ``text`` at sentence boundaries iff ``normalize_text(s)`` is in the
    set (up to the normaliser's equivalences). Using whole runs rather than plain
    substring search avoids spurious hits such as the one-word sentence "bad ." inside
    "... isn't all that bad."; the number of pieces per snippet is small, so the
    quadratic number of runs is cheap.
    """
    pieces = [normalize_text(piece) for piece in split_sentences(text)]
    keys: set[str] = set()
    for start in range(len(pieces)):
        joined = ""
        for piece in pieces[start:]:
            joined += piece
            if joined:
                keys.add(joined)
    return keys
