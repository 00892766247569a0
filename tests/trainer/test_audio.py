from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf

from tuneloop_trainer.audio import load_audio


def _tone(rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    mono = 0.5 * np.sin(2 * np.pi * 440 * t)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


def test_resamples_and_averages_stereo(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    stereo = _tone(22050, 1.0, channels=2)
    stereo[:, 1] = 0.0
    sf.write(path, stereo, 22050)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == 16000
    assert 0.2 < np.max(np.abs(audio)) < 0.3  # the silent channel halves the amplitude


def test_reads_raw_bytes() -> None:
    buffer = io.BytesIO()
    sf.write(buffer, _tone(8000, 0.5), 8000, format="WAV", subtype="PCM_16")
    audio = load_audio(buffer.getvalue())
    assert len(audio) == 8000
