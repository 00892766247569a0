"""Transcript normalisation and the character vocabulary shared by training, evaluation and serving.

The Airflow side normalises corrections with the same rule before they reach a dataset, so the model only ever
sees (and emits) characters from :data:`ALPHABET`. Keep this module free of torch: the demo generator and the
registry code import it.
"""

from __future__ import annotations

import re
import unicodedata

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
WORD_DELIMITER = "|"
ALPHABET = "'abcdefghijklmnopqrstuvwxyz"

_NOT_IN_VOCAB = re.compile(r"[^a-z' ]+")


def normalize_text(text: str) -> str:
    """Lowercase, fold accents (``café`` -> ``cafe``), turn every other character outside ``a-z``/apostrophe into a
    space (``"wi-fi"`` -> ``"wi fi"``), collapse whitespace, strip.

    The same rule as ``tuneloop.text.normalize_transcript`` on the Airflow side (a test keeps them equal); this
    copy exists because the trainer image does not ship the tuneloop package.
    """
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return " ".join(_NOT_IN_VOCAB.sub(" ", folded.lower()).split())


def vocabulary() -> dict[str, int]:
    """Token-to-id map in the wav2vec2 CTC convention: ``<pad>`` (also the CTC blank) is id 0."""
    tokens = [PAD_TOKEN, UNK_TOKEN, WORD_DELIMITER, *ALPHABET]
    return {token: index for index, token in enumerate(tokens)}
