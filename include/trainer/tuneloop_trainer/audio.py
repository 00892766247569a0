"""Audio loading for training, evaluation and the demo: any WAV/FLAC in, 16 kHz mono float32 out.

Datasets hold 16 kHz mono PCM16, but error cases come from production systems that may record at other rates
or in stereo, so every reader goes through :func:`load_audio`. No torch here.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16_000


def load_audio(source: str | Path | bytes, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read a file path or raw file bytes; average channels to mono and resample to ``sample_rate``."""
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    data, source_rate = sf.read(handle, dtype="float32", always_2d=True)
    return to_mono_rate(data, source_rate, sample_rate)


def to_mono_rate(data: np.ndarray, source_rate: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Average a (frames, channels) or (frames,) array to mono and resample it polyphase to ``sample_rate``."""
    mono = data.mean(axis=1) if data.ndim == 2 else data
    if source_rate != sample_rate:
        # Imported here: scipy.signal takes seconds to import and datasets are already at 16 kHz.
        from scipy.signal import resample_poly

        divisor = math.gcd(int(source_rate), int(sample_rate))
        mono = resample_poly(mono, sample_rate // divisor, int(source_rate) // divisor)
    return np.ascontiguousarray(mono, dtype=np.float32)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono float audio as PCM16 WAV, clipping to [-1, 1] so loud noise cannot wrap around."""
    sf.write(str(path), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
