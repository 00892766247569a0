"""Transcript normalisation shared by ingestion, export and scoring.

One rule everywhere (and the same rule in include/trainer's vocabulary): lowercase, keep only a-z, apostrophe and
space, collapse whitespace. Scoring a model against references normalised differently from its training labels
would measure formatting, not recognition.
"""

from __future__ import annotations

import re
import unicodedata

_NOT_IN_VOCAB = re.compile(r"[^a-z' ]+")
_SPACES = re.compile(r"\s+")


def normalize_transcript(text: str) -> str:
    """Return ``text`` in the model's vocabulary; accents are folded (``café`` -> ``cafe``)."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    kept = _NOT_IN_VOCAB.sub(" ", folded.lower())
    return _SPACES.sub(" ", kept).strip()
