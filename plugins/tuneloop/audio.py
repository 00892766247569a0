"""Audio checks and conversion for ingestion and dataset export, without torch.

Error cases arrive from production systems that record at any rate, in mono or stereo, as WAV or FLAC. Ingestion
only needs to know that a file decodes and what it contains (:func:`probe_audio`, whose findings the store keeps);
the export converts every accepted file to the model's format, checking on the way that it is still the recording
ingestion probed (:func:`convert_verified`), so a dataset never depends on the original files staying where they
were.

The content hash is taken over the decoded samples (plus rate and channel count), not the file bytes: the same
recording saved as WAV or FLAC, or with different header chunks, is one recording. A 16 kHz mono PCM16 source
keeps its hash in the exported copy.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

import numpy as np
import soundfile as sf

AudioProblem = Literal["missing", "undecodable", "empty", "non-finite", "silent", "changed"]
SILENCE_PEAK = 1e-4  # -80 dBFS: below one PCM16 step of dither, nothing a model can learn from


class AudioError(ValueError):
    """An audio file cannot be used; ``reason`` is one of missing, undecodable, empty, non-finite, silent, changed
    (not the recording that was probed at ingestion)."""

    def __init__(self, path: str | Path, reason: AudioProblem, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: audio is {reason}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class AudioInfo:
    """What ingestion and export need to know about one decoded file."""

    sample_rate: int
    channels: int
    frames: int
    duration_s: float
    content_hash: str


def local_audio_path(uri: str | Path) -> Path | None:
    """Map a plain path or ``file://`` URI to a Path; ``None`` for remote URIs (gs://, s3://, https://...)."""
    text = str(uri)
    if text.startswith("file://"):
        return Path(unquote(urlparse(text).path))
    if "://" in text:
        return None
    return Path(text)


def probe_audio(path: str | Path, *, trainable: bool = True) -> AudioInfo:
    """Decode ``path`` fully (a readable header alone does not prove the samples are readable) and describe it.

    Audio that cannot train is refused here, where ingestion and export both look: no frames, NaN or infinite
    samples (float WAVs can hold them; one poisons every gradient), or digital silence. ``trainable=False`` only
    describes the file (a regression suite's item is hashed for the leakage guard, not trained on)."""
    data, sample_rate = _read(path)
    if data.shape[0] == 0:
        raise AudioError(path, "empty", "no audio frames")
    if trainable:
        _check_trainable(path, data)
    return AudioInfo(
        sample_rate=int(sample_rate),
        channels=int(data.shape[1]),
        frames=int(data.shape[0]),
        duration_s=data.shape[0] / sample_rate,
        content_hash=_content_hash(data, sample_rate),
    )


def _content_hash(data: np.ndarray, sample_rate: int) -> str:
    digest = hashlib.sha256(f"{sample_rate}:{data.shape[1]}:".encode())
    digest.update(np.ascontiguousarray(data).tobytes())
    return digest.hexdigest()


def convert_verified(source: str | Path, target: str | Path, sample_rate: int, content_hash: str) -> None:
    """Write ``source`` as a ``sample_rate`` mono PCM16 WAV at ``target``, decoding it once: the export's copy,
    which also proves the file is still the recording probed at ingestion (its content hash), so the export need
    not probe it a second time. Raises AudioError (the trainability rules of :func:`probe_audio` first, then
    "changed" when the content differs)."""
    data, source_rate = _read(source)
    if data.shape[0] == 0:
        raise AudioError(source, "empty", "no audio frames")
    _check_trainable(source, data)
    if _content_hash(data, source_rate) != content_hash:
        raise AudioError(source, "changed", "no longer matches the content hash stored at ingestion")
    write_wav16(target, _to_mono(data, source_rate, sample_rate), sample_rate)


def _check_trainable(path: str | Path, data: np.ndarray) -> None:
    finite = np.isfinite(data)
    if not finite.all():
        raise AudioError(path, "non-finite", f"{int(data.size - finite.sum())} NaN or infinite samples")
    peak = float(np.abs(data).max())
    if peak < SILENCE_PEAK:
        raise AudioError(path, "silent", f"peak amplitude {peak:.2g} is below {SILENCE_PEAK:g} (-80 dBFS)")


def load_mono(path: str | Path, sample_rate: int) -> np.ndarray:
    """Decode ``path``, average its channels and resample (polyphase) to ``sample_rate``; float32 in [-1, 1]."""
    data, source_rate = _read(path)
    if data.shape[0] == 0:
        raise AudioError(path, "empty", "no audio frames")
    return _to_mono(data, source_rate, sample_rate)


def _to_mono(data: np.ndarray, source_rate: int, sample_rate: int) -> np.ndarray:
    mono = data.mean(axis=1)
    if source_rate != sample_rate:
        from scipy.signal import resample_poly  # ~3 s to import: only the export pays it, not every store user

        divisor = math.gcd(int(source_rate), int(sample_rate))
        mono = resample_poly(mono, sample_rate // divisor, int(source_rate) // divisor)
    return np.ascontiguousarray(mono, dtype=np.float32)


def write_wav16(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono samples as PCM16 WAV atomically: a reader sees the old file or the whole new one, never half.

    Samples are clipped to [-1, 1] first so that resampling overshoot cannot wrap around in 16-bit.
    """
    target = Path(path)
    if samples.ndim != 1:
        raise ValueError(f"samples: expected a mono (1-D) array, got shape {samples.shape}")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    try:
        sf.write(temp, np.clip(samples, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
        os.chmod(temp, 0o644)  # mkstemp makes it private; readers (trainers) may run as another user
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _read(path: str | Path) -> tuple[np.ndarray, int]:
    """Read all frames as float32 (frames, channels); missing and undecodable files become AudioError."""
    file = Path(path)
    try:
        exists, size = file.is_file(), file.stat().st_size if file.is_file() else 0
    except (OSError, ValueError) as error:  # a name too long, a NUL byte, no permission: unusable all the same
        raise AudioError(path, "missing", str(error)) from error
    if not exists:
        raise AudioError(path, "missing", "no such file")
    if size == 0:
        raise AudioError(path, "empty", "zero-byte file")
    try:
        data, sample_rate = sf.read(str(file), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as error:
        raise AudioError(path, "undecodable", str(error)) from error
    if sample_rate <= 0:
        raise AudioError(path, "undecodable", f"sample rate {sample_rate}")
    return data, int(sample_rate)
