from __future__ import annotations

import pytest

from tuneloop_trainer.text import normalize_text, vocabulary


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Turn ON the Lights!", "turn on the lights"),
        ("  what's   the\tweather\n", "what's the weather"),
        ("Wi-Fi 5G, café", "wi fi g cafe"),
        ("", ""),
        ("'quoted'", "'quoted'"),
        ("ÉCOLE", "ecole"),
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


def test_vocabulary_follows_wav2vec2_ctc_convention() -> None:
    vocab = vocabulary()
    assert vocab["<pad>"] == 0
    assert {"<unk>", "|", "'"} <= set(vocab)
    assert set("abcdefghijklmnopqrstuvwxyz") <= set(vocab)
    assert len(vocab) == 30
    assert sorted(vocab.values()) == list(range(30))
