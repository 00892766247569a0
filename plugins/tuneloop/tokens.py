"""Token counts the way OpenAI counts them, without a network.

tiktoken downloads an encoding's BPE rank file from openaipublic.blob.core.windows.net the first time it is used;
Airflow workers and CI cannot reach it. The package ships the rank file of ``o200k_base``, the encoding of every
model OpenAI fine-tunes today (the gpt-4o and gpt-4.1 families), gzipped in ``encodings/`` (its README says where
it comes from and how ``scripts/vendor_tiktoken.py`` regenerates it), and :func:`get_encoding` builds a real
``tiktoken.Encoding`` from it: the public constructor, given o200k_base's pattern and special tokens (as
``tiktoken_ext.openai_public.o200k_base`` gives them) and ranks parsed from the vendored file after its SHA-256 is
checked against the hash tiktoken expects. Any other encoding goes through ``tiktoken.get_encoding``, which
downloads as usual where there is a network.

Why build the encoding rather than seed tiktoken's download cache with the vendored file: the cache is private
machinery (file name = SHA-1 of the blob URL, folder from ``TIKTOKEN_CACHE_DIR`` / ``DATA_GYM_CACHE_DIR`` / the
temp dir, switched off by an empty ``TIKTOKEN_CACHE_DIR``), seeding it writes into a folder shared with other
processes, and a change in any of that would silently bring the download back. The constructor
(``Encoding(name, pat_str=, mergeable_ranks=, special_tokens=)``) is tiktoken's documented way to add an
encoding, and the pattern and special tokens are part of o200k_base itself: tiktoken cannot change them without
changing every token count. Nothing here touches the environment, tiktoken's registry or its cache, and
``tests/tuneloop/test_tokens.py`` checks the result against tiktoken's own constructor.

Model names map to encodings as ``tiktoken.encoding_name_for_model`` maps them, except for fine-tuned models
(``ft:<base>:<org>:<suffix>:<id>``), which use their base model's encoding: tiktoken's ``ft:gpt-4`` prefix sends
``ft:gpt-4.1-*`` to cl100k_base, which is wrong. A name tiktoken does not know gets o200k_base.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import tiktoken

DEFAULT_ENCODING = "o200k_base"
VENDORED_DIR = Path(__file__).resolve().parent / "encodings"
# tiktoken_ext.openai_public.o200k_base: load_tiktoken_bpe(..., expected_hash=...)
O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
# tiktoken_ext.openai_public.o200k_base: pat_str and special_tokens
O200K_BASE_PATTERN = "|".join((
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
))
O200K_BASE_SPECIAL_TOKENS = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}

# OpenAI cookbook, "How to count tokens with tiktoken" (gpt-3.5-turbo-0125 and later, gpt-4o, gpt-4.1):
# each message is wrapped in <|start|>{role/name}\n{content}<|end|>\n, a name costs one more token, and every
# reply is primed with <|start|>assistant<|message|>.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


def base_model(model: str) -> str:
    """The model a fine-tuned model was trained from (``ft:gpt-4.1-mini-2025-04-14:org:suffix:id`` ->
    ``gpt-4.1-mini-2025-04-14``); any other name unchanged."""
    if model.startswith("ft:"):
        return model[len("ft:"):].split(":", 1)[0]
    return model


def encoding_name_for(model: str) -> str:
    """The encoding of ``model`` (a fine-tuned one's is its base model's); ``o200k_base`` for unknown names."""
    try:
        return tiktoken.encoding_name_for_model(base_model(model))
    except KeyError:
        return DEFAULT_ENCODING


def encoding_for(model: str) -> tiktoken.Encoding:
    """The tiktoken encoding of ``model`` (see :func:`encoding_name_for`); o200k_base never needs a network."""
    return get_encoding(encoding_name_for(model))


@functools.cache
def get_encoding(name: str) -> tiktoken.Encoding:
    """``name``'s encoding: o200k_base from the vendored file, any other through tiktoken (which downloads it)."""
    if name != DEFAULT_ENCODING:
        return tiktoken.get_encoding(name)
    return tiktoken.Encoding(name, pat_str=O200K_BASE_PATTERN, special_tokens=dict(O200K_BASE_SPECIAL_TOKENS),
                             mergeable_ranks=vendored_ranks(VENDORED_DIR / f"{name}.tiktoken.gz", O200K_BASE_SHA256))


def vendored_ranks(path: Path, sha256: str) -> dict[bytes, int]:
    """The mergeable ranks of a gzipped ``.tiktoken`` file (``base64(token) rank`` per line, as
    ``tiktoken.load.load_tiktoken_bpe`` reads it), refused unless its content has the SHA-256 ``sha256``."""
    data = gzip.decompress(path.read_bytes())
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ValueError(f"{path}: content has sha256 {actual}, expected {sha256}; the package is damaged "
                         "(scripts/vendor_tiktoken.py regenerates the file)")
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def count_tokens(text: str, encoding: tiktoken.Encoding) -> int:
    """Tokens of ``text``, special-token text (``<|endoftext|>``) counted as the plain text it is in a file."""
    return len(encoding.encode_ordinary(text))


def count_chat_tokens(messages: Iterable[Mapping[str, Any]], encoding: tiktoken.Encoding) -> int:
    """Tokens of a conversation as OpenAI's cookbook counts a chat prompt: 3 per message, the tokens of every text
    value (role, content, name; a numeric ``weight`` is no text), 1 more per name, and 3 for the reply priming."""
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if isinstance(value, str):
                total += count_tokens(value, encoding)
            if key == "name":
                total += TOKENS_PER_NAME
    return total
