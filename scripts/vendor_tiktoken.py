"""Regenerate the BPE rank files that tuneloop ships for offline token counting (plugins/tuneloop/encodings/).

tiktoken downloads ``<encoding>.tiktoken`` from openaipublic.blob.core.windows.net on first use; workers and CI
cannot. This script takes the same file from a source that needs no network at run time and writes it gzipped
into the package, after checking it byte for byte against the SHA-256 that tiktoken itself expects
(``expected_hash=`` in ``tiktoken_ext/openai_public.py``, read from the installed tiktoken, not copied here).

A source is any of:

* a ``bpe-openai`` wheel (PyPI; ``pip download --no-deps bpe-openai==0.1.4``), which embeds OpenAI's files as
  ``bpe_openai/data/<encoding>.tiktoken.gz`` (read straight out of the zip: nothing is installed);
* a ``.tiktoken`` or ``.tiktoken.gz`` file, e.g. fetched from the URL tiktoken uses on a machine with network.

Usage (from the repository root, with the project's virtualenv, which has tiktoken)::

    pip download --no-deps --only-binary :all: --dest /tmp/dl bpe-openai==0.1.4
    .venv/bin/python scripts/vendor_tiktoken.py /tmp/dl/bpe_openai-0.1.4-*.whl
    .venv/bin/python scripts/vendor_tiktoken.py --encoding cl100k_base <source>

The output is deterministic (gzip level 9, mtime 0, no file name), so regenerating from any verified source
gives the same bytes as long as zlib compresses the same way; what is verified is the uncompressed content.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
import zipfile
from pathlib import Path
from unittest import mock

TARGET = Path(__file__).resolve().parents[1] / "plugins" / "tuneloop" / "encodings"


def expected_hash(encoding: str) -> str:
    """The SHA-256 that the installed tiktoken checks its download of ``encoding`` against."""
    from tiktoken_ext import openai_public

    seen: dict[str, str] = {}

    def capture(blobpath: str, expected_hash: str | None = None) -> dict[bytes, int]:
        seen[blobpath] = expected_hash or ""
        raise LookupError(blobpath)  # stop before any download

    with mock.patch.object(openai_public, "load_tiktoken_bpe", capture), mock.patch.object(
            openai_public, "data_gym_to_mergeable_bpe_ranks", capture):
        try:
            openai_public.ENCODING_CONSTRUCTORS[encoding]()
        except LookupError:
            pass
    hashes = [value for value in seen.values() if value]
    if len(hashes) != 1:
        raise SystemExit(f"{encoding}: expected one tiktoken rank file with a hash, tiktoken gave {seen}")
    return hashes[0]


def read_source(source: Path, encoding: str) -> bytes:
    """The uncompressed rank file of ``encoding`` from a bpe-openai wheel, a .tiktoken.gz or a .tiktoken file."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            return gzip.decompress(wheel.read(f"bpe_openai/data/{encoding}.tiktoken.gz"))
    data = source.read_bytes()
    return gzip.decompress(data) if source.suffix == ".gz" else data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a bpe-openai wheel, or a .tiktoken / .tiktoken.gz file")
    parser.add_argument("--encoding", default="o200k_base", help="encoding name (default: o200k_base)")
    parser.add_argument("--target", type=Path, default=TARGET, help=f"output folder (default: {TARGET})")
    args = parser.parse_args(argv)

    data = read_source(args.source, args.encoding)
    want, got = expected_hash(args.encoding), hashlib.sha256(data).hexdigest()
    if got != want:
        print(f"{args.source}: {args.encoding} has sha256 {got}, tiktoken expects {want}; nothing written",
              file=sys.stderr)
        return 1
    args.target.mkdir(parents=True, exist_ok=True)
    output = args.target / f"{args.encoding}.tiktoken.gz"
    output.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    print(f"{output}: {len(data):,} bytes uncompressed, {output.stat().st_size:,} gzipped, sha256 {got} "
          f"(tiktoken's expected hash)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
