from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tuneloop_demo.speech import SynthesisError, SynthesisJob, add_noise, synthesize, synthesize_all

pytestmark = pytest.mark.skipif(__import__("shutil").which("espeak-ng") is None, reason="needs espeak-ng")


def test_synthesis_writes_16k_mono_pcm16_of_plausible_length(tmp_path: Path) -> None:
    text = "set a timer for ten minutes"
    duration = synthesize(SynthesisJob(text=text, voice="en-us+m3", out_path=tmp_path / "a.wav", speed_wpm=160))
    info = sf.info(str(tmp_path / "a.wav"))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert info.duration == pytest.approx(duration, abs=1e-3)
    words_per_second = len(text.split()) / duration
    assert 1.0 < words_per_second < 5.0


def test_noise_is_added_at_the_requested_snr(tmp_path: Path) -> None:
    clean_job = SynthesisJob(text="play some jazz music", voice="en-gb", out_path=tmp_path / "clean.wav")
    noisy_job = SynthesisJob(text="play some jazz music", voice="en-gb", out_path=tmp_path / "noisy.wav",
                             snr_db=10.0, noise_seed=1)
    synthesize(clean_job)
    synthesize(noisy_job)
    clean, _ = sf.read(str(tmp_path / "clean.wav"))
    noisy, _ = sf.read(str(tmp_path / "noisy.wav"))
    noise = noisy - clean
    speech = clean[np.abs(clean) > np.max(np.abs(clean)) * 0.01]
    snr = 10 * np.log10(np.mean(speech**2) / np.mean(noise**2))
    assert snr == pytest.approx(10.0, abs=0.7)


def test_noise_is_seeded() -> None:
    audio = np.sin(np.linspace(0, 100, 16000)).astype(np.float32)
    assert np.array_equal(add_noise(audio, 10, seed=3), add_noise(audio, 10, seed=3))
    assert not np.array_equal(add_noise(audio, 10, seed=3), add_noise(audio, 10, seed=4))


def test_pool_keeps_job_order(tmp_path: Path) -> None:
    texts = ["call mom", "navigate to the airport and then to the train station please"] * 5
    jobs = [SynthesisJob(text=t, voice="en-us", out_path=tmp_path / f"{i}.wav") for i, t in enumerate(texts)]
    durations = synthesize_all(jobs, processes=2)
    assert all(short < long for short, long in zip(durations[::2], durations[1::2], strict=True))


def test_unknown_voice_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SynthesisError, match="no-such-voice"):
        synthesize(SynthesisJob(text="hello", voice="no-such-voice", out_path=tmp_path / "x.wav"))
