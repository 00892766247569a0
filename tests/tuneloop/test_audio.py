from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tuneloop.audio import AudioError, load_mono, local_audio_path, probe_audio, write_wav16


def test_probe_describes_decoded_audio(wav_factory):
    info = probe_audio(wav_factory("a.wav", seconds=0.5, sample_rate=22_050, channels=2))
    assert (info.sample_rate, info.channels, info.frames) == (22_050, 2, 11_025)
    assert info.duration_s == pytest.approx(0.5)
    assert len(info.content_hash) == 64


def test_content_hash_follows_samples_not_container(wav_factory, tmp_path):
    wav = wav_factory("a.wav")
    data, rate = sf.read(wav, dtype="int16")
    flac = tmp_path / "a.flac"
    sf.write(flac, data, rate, subtype="PCM_16")
    assert probe_audio(flac).content_hash == probe_audio(wav).content_hash
    assert probe_audio(wav_factory("b.wav")).content_hash != probe_audio(wav).content_hash


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, "missing"), (b"", "empty"), (b"RIFF\x00\x00not audio at all" * 4, "undecodable")],
)
def test_probe_names_the_problem(tmp_path, content, reason):
    path = tmp_path / "x.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioError) as caught:
        probe_audio(path)
    assert caught.value.reason == reason
    assert str(path) in str(caught.value)


def test_header_without_frames_is_empty(wav_factory, tmp_path):
    header_only = tmp_path / "h.wav"
    header_only.write_bytes(wav_factory("a.wav").read_bytes()[:44])
    with pytest.raises(AudioError, match="empty"):
        probe_audio(header_only)


@pytest.mark.parametrize("source_rate", [16_000, 22_050, 44_100, 8_000])
def test_load_mono_resamples_and_averages_channels(wav_factory, source_rate):
    path = wav_factory(f"s{source_rate}.wav", seconds=1.0, sample_rate=source_rate, channels=2)
    audio = load_mono(path, 16_000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert audio.shape[0] == 16_000


def test_load_mono_keeps_the_tone(tmp_path):
    t = np.arange(44_100) / 44_100
    sf.write(tmp_path / "tone.wav", np.stack([np.sin(2 * np.pi * 1000 * t)] * 2, axis=1) * 0.5, 44_100)
    audio = load_mono(tmp_path / "tone.wav", 16_000)
    peak_hz = np.argmax(np.abs(np.fft.rfft(audio))) * 16_000 / audio.size
    assert peak_hz == pytest.approx(1000, abs=2)


def test_write_wav16_is_pcm16_clipped_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out" / "x.wav"
    write_wav16(target, np.array([0.0, 0.5, 2.0, -3.0], dtype=np.float32), 16_000)
    info = sf.info(target)
    assert (info.subtype, info.samplerate, info.channels) == ("PCM_16", 16_000, 1)
    data, _ = sf.read(target, dtype="float32")
    assert data.max() <= 1.0 and data.min() >= -1.0
    assert [p.name for p in target.parent.iterdir()] == ["x.wav"]


def test_write_wav16_refuses_multichannel(tmp_path):
    with pytest.raises(ValueError, match="mono"):
        write_wav16(tmp_path / "x.wav", np.zeros((10, 2)), 16_000)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [("/a/b.wav", Path("/a/b.wav")), ("file:///a/b%20c.wav", Path("/a/b c.wav")), ("rel/x.wav", Path("rel/x.wav")),
     ("gs://bucket/x.wav", None), ("https://host/x.wav", None)],
)
def test_local_audio_path(uri, expected):
    assert local_audio_path(uri) == expected
