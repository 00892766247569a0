"""tuneloop.tokens: o200k_base built from the vendored file with no network, exactly as tiktoken defines it, and
token counts that match values published or computed outside tiktoken."""

from __future__ import annotations

import gzip
import hashlib
import socket
from pathlib import Path
from unittest import mock

import pytest
import tiktoken
from tiktoken_ext import openai_public

from tuneloop import tokens

VENDORED = tokens.VENDORED_DIR / "o200k_base.tiktoken.gz"

# Expected o200k_base token ids. The first four are published in OpenAI's cookbook "How to count tokens with
# tiktoken" (sections 3 and 5, o200k_base outputs); all of them were also computed with bpe-openai 0.1.4
# (the Rust BPE of github/rust-gems, no tiktoken installed: _bindings.tokenizer_for_encoding("o200k_base")).
KNOWN_TOKENS = [
    ("tiktoken is great!", [83, 8251, 2488, 382, 2212, 0]),
    ("antidisestablishmentarianism", [493, 129901, 376, 160388, 21203, 2367]),
    ("2 + 2 = 4", [17, 659, 220, 17, 314, 220, 19]),
    ("お誕生日おめでとう", [8930, 9697, 243, 128225, 8930, 17693, 4344, 48669]),
    ("hello world", [24912, 2375]),
    ("Bonjour, ça va ? Très bien.", [45751, 11, 13590, 3423, 1423, 95281, 5340, 13]),
    ("def f(x):\n    return x ** 2\n", [1314, 285, 4061, 1883, 271, 622, 1215, 6240, 220, 17, 198]),
    ("1234567890", [7633, 19354, 29338, 15]),
    ("  leading and trailing  ", [220, 8117, 326, 57985, 256]),
    ("emoji 🎉🚀 test", [75339, 139786, 231, 112927, 222, 1746]),
    ("<|endoftext|>", [27, 91, 419, 1440, 919, 91, 29]),  # special-token text in a file is plain text
    ("", []),
]

# The cookbook's chat example (section 6): 124 prompt tokens for gpt-4o, "counted by the OpenAI API" as well as by
# its num_tokens_from_messages(); bpe-openai's counts give 124 too.
COOKBOOK_MESSAGES = [
    {"role": "system",
     "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {"role": "system", "name": "example_user",
     "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."},
    {"role": "system", "name": "example_assistant",
     "content": "Let's talk later when we're less busy about how to do better."},
    {"role": "user",
     "content": "This late pivot means we don't have time to boil the ocean for the client deliverable."},
]


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty tiktoken cache folder and no network: a download would fail, a cache write would show."""
    cache = tmp_path / "tiktoken-cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    return cache


@pytest.fixture(scope="module")
def o200k() -> tiktoken.Encoding:
    return tokens.get_encoding("o200k_base")


def test_o200k_base_loads_offline_without_touching_tiktokens_cache(offline: Path):
    encoding = tokens.get_encoding.__wrapped__("o200k_base")  # built now, not taken from the cache
    assert (encoding.name, encoding.n_vocab) == ("o200k_base", 200_019)
    assert encoding.encode("tiktoken is great!") == [83, 8251, 2488, 382, 2212, 0]
    assert not offline.exists()
    # the blockade is real: tiktoken's own path for an encoding that is not vendored fails here
    with pytest.raises(Exception, match="offline test"):
        tiktoken.get_encoding("cl100k_base")


@pytest.mark.parametrize(("text", "expected"), KNOWN_TOKENS, ids=[repr(text)[:30] for text, _ in KNOWN_TOKENS])
def test_token_ids_match_published_and_independent_values(o200k: tiktoken.Encoding, text: str, expected: list[int]):
    assert o200k.encode_ordinary(text) == expected
    assert tokens.count_tokens(text, o200k) == len(expected)


def test_chat_tokens_follow_the_cookbook(o200k: tiktoken.Encoding):
    assert tokens.count_chat_tokens(COOKBOOK_MESSAGES, o200k) == 124
    # 3 per message + "user" (1) + "hello world" (2) + 3 for the reply priming; a weight is no text
    assert tokens.count_chat_tokens([{"role": "user", "content": "hello world"}], o200k) == 9
    assert tokens.count_chat_tokens([{"role": "assistant", "content": "hello world", "weight": 1}], o200k) == 9
    # a name adds its tokens and one more
    assert tokens.count_chat_tokens([{"role": "user", "name": "example_user", "content": "hello world"}],
                                    o200k) == 9 + tokens.count_tokens("example_user", o200k) + 1


@pytest.mark.parametrize(("model", "expected"), [
    ("gpt-4.1-mini-2025-04-14", "o200k_base"),
    ("gpt-4.1-nano-2025-04-14", "o200k_base"),
    ("gpt-4o-2024-08-06", "o200k_base"),
    ("gpt-4o-mini-2024-07-18", "o200k_base"),
    ("ft:gpt-4.1-mini-2025-04-14:my-org:tuneloop:AbC123", "o200k_base"),
    ("ft:gpt-4.1-2025-04-14:my-org::AbC123:ckpt-step-10", "o200k_base"),
    ("ft:gpt-4o-mini-2024-07-18:my-org:tuneloop:AbC123", "o200k_base"),
    ("gpt-3.5-turbo-0125", "cl100k_base"),
    ("ft:gpt-3.5-turbo-0125:my-org:tuneloop:AbC123", "cl100k_base"),
    ("a-model-nobody-knows", "o200k_base"),
    ("ft:a-model-nobody-knows:my-org:x:y", "o200k_base"),
])
def test_encoding_names_of_base_fine_tuned_and_unknown_models(model: str, expected: str):
    assert tokens.encoding_name_for(model) == expected


def test_fine_tuned_models_use_their_base_models_encoding_where_tiktokens_prefix_does_not():
    fine_tuned = "ft:gpt-4.1-mini-2025-04-14:my-org:tuneloop:AbC123"
    assert tiktoken.encoding_name_for_model(fine_tuned) == "cl100k_base"  # tiktoken's "ft:gpt-4" prefix
    assert tokens.base_model(fine_tuned) == "gpt-4.1-mini-2025-04-14"
    assert tokens.base_model("gpt-4o") == "gpt-4o"


def test_encoding_for_returns_the_one_cached_vendored_encoding(o200k: tiktoken.Encoding):
    for model in ("gpt-4.1-mini-2025-04-14", "ft:gpt-4.1-mini-2025-04-14:org:suffix:id", "a-model-nobody-knows"):
        assert tokens.encoding_for(model) is o200k


def test_vendored_file_is_what_tiktoken_expects_and_builds_the_same_encoding(o200k: tiktoken.Encoding):
    """tiktoken's own o200k_base constructor, its loader replaced by one reading the vendored file, asks for the
    hash the file has and gives the pattern and special tokens tuneloop.tokens uses."""
    asked: dict[str, str | None] = {}

    def load(blobpath: str, expected_hash: str | None = None) -> dict[bytes, int]:
        asked[blobpath] = expected_hash
        return tokens.vendored_ranks(VENDORED, tokens.O200K_BASE_SHA256)

    with mock.patch.object(openai_public, "load_tiktoken_bpe", load):
        spec = openai_public.ENCODING_CONSTRUCTORS["o200k_base"]()
    assert asked == {"https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken":
                     tokens.O200K_BASE_SHA256}
    assert hashlib.sha256(gzip.decompress(VENDORED.read_bytes())).hexdigest() == tokens.O200K_BASE_SHA256
    assert spec["pat_str"] == tokens.O200K_BASE_PATTERN
    assert spec["special_tokens"] == tokens.O200K_BASE_SPECIAL_TOKENS
    reference = tiktoken.Encoding(**spec)
    assert (o200k.n_vocab, o200k.special_tokens_set) == (reference.n_vocab, reference.special_tokens_set)
    for text, _ in KNOWN_TOKENS:
        assert o200k.encode(text, disallowed_special=()) == reference.encode(text, disallowed_special=())


def test_a_damaged_vendored_file_is_refused(tmp_path: Path):
    damaged = tmp_path / "o200k_base.tiktoken.gz"
    damaged.write_bytes(gzip.compress(gzip.decompress(VENDORED.read_bytes()).replace(b"IQ== 0\n", b"Ig== 0\n", 1)))
    with pytest.raises(ValueError, match="sha256"):
        tokens.vendored_ranks(damaged, tokens.O200K_BASE_SHA256)
