"""Speech synthesis with espeak-ng: text + voice -> 16 kHz mono PCM16 WAV, optionally with noise.

espeak-ng is run as a subprocess with an argument list (never a shell string) and writes 22.05 kHz audio,
which is resampled polyphase to 16 kHz. "noisy" utterances get seeded white noise at a given SNR, measured
against the speech (not the silence around it). Synthesis fans out over a process pool. No torch here.
"""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from tuneloop_trainer.audio import SAMPLE_RATE, to_mono_rate, write_wav

log = logging.getLogger(__name__)

ESPEAK = "espeak-ng"
SYNTHESIS_TIMEOUT_S = 60


class SynthesisError(RuntimeError):
    """espeak-ng is missing or failed on an utterance."""


@dataclass(frozen=True)
class SynthesisJob:
    """One utterance to synthesise. ``voice`` is an espeak-ng voice, optionally with a variant (``en-us+m3``)."""

    text: str
    voice: str
    out_path: Path
    speed_wpm: int = 160
    pitch: int = 50
    snr_db: float | None = None
    noise_seed: int = 0


def espeak_available() -> bool:
    return shutil.which(ESPEAK) is not None


def synthesize(job: SynthesisJob) -> float:
    """Write ``job.out_path`` (16 kHz mono PCM16) and return its duration in seconds."""
    raw, rate = _espeak(job)
    audio = to_mono_rate(raw, rate, SAMPLE_RATE)
    if job.snr_db is not None:
        audio = add_noise(audio, job.snr_db, job.noise_seed)
    job.out_path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(job.out_path, audio)
    return len(audio) / SAMPLE_RATE


def check_voice(voice: str) -> None:
    """Fail on a voice espeak-ng does not know: it would silently fall back to its default voice."""
    languages, variants = _catalogue()
    language, _, variant = voice.partition("+")
    if language not in languages:
        raise SynthesisError(f"unknown espeak-ng voice {language!r} in {voice!r}; see `espeak-ng --voices=en`")
    if variant and variant not in variants:
        raise SynthesisError(f"unknown espeak-ng variant {variant!r} in {voice!r}; see `espeak-ng --voices=variant`")


@functools.lru_cache(maxsize=1)
def _catalogue() -> tuple[frozenset[str], frozenset[str]]:
    """(language codes, variant names) that this espeak-ng installation has."""
    if not espeak_available():
        raise SynthesisError("espeak-ng is not installed (apt-get install espeak-ng)")
    listing = subprocess.run([ESPEAK, "--voices"], capture_output=True, text=True, timeout=30, check=True).stdout
    languages = {line.split()[1] for line in listing.splitlines()[1:] if len(line.split()) > 1}
    version = subprocess.run([ESPEAK, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    data_dir = Path(version.split("Data at:")[-1].strip())
    variants = {path.name for path in (data_dir / "voices" / "!v").iterdir()} if "Data at:" in version else set()
    return frozenset(languages), frozenset(variants)


def _espeak(job: SynthesisJob) -> tuple[np.ndarray, int]:
    """Run espeak-ng into a temporary WAV and read it back."""
    check_voice(job.voice)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "espeak.wav"
        command = [ESPEAK, "-v", job.voice, "-s", str(job.speed_wpm), "-p", str(job.pitch), "-w", str(wav),
                   "--", job.text]
        result = subprocess.run(command, capture_output=True, text=True, timeout=SYNTHESIS_TIMEOUT_S, check=False)
        if result.returncode != 0 or not wav.is_file():
            raise SynthesisError(f"espeak-ng failed for voice {job.voice!r} (exit {result.returncode}): "
                                 f"{result.stderr.strip()}")
        data, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    if len(data) == 0:
        raise SynthesisError(f"espeak-ng produced no audio for {job.text!r} with voice {job.voice!r}")
    return data, rate


def add_noise(audio: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """Add white noise so that speech power / noise power = ``snr_db`` (speech = samples above -40 dB of peak)."""
    peak = float(np.max(np.abs(audio))) or 1.0
    speech = audio[np.abs(audio) > peak * 0.01]
    power = float(np.mean(speech**2)) if speech.size else float(np.mean(audio**2))
    noise = np.random.default_rng(seed).normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), size=audio.shape)
    return (audio + noise).astype(np.float32)


def synthesize_all(jobs: Iterable[SynthesisJob], processes: int = 2) -> list[float]:
    """Synthesise every job (in a pool of ``processes``); durations in job order."""
    job_list = list(jobs)
    if processes <= 1 or len(job_list) < 8:
        return [synthesize(job) for job in job_list]
    with ProcessPoolExecutor(max_workers=processes) as pool:
        return list(pool.map(synthesize, job_list, chunksize=16))


def list_voices(language: str = "en") -> list[str]:
    """Names espeak-ng lists for ``language`` (``espeak-ng --voices=en``), mbrola voices excluded."""
    result = subprocess.run([ESPEAK, f"--voices={language}"], capture_output=True, text=True, timeout=30,
                            check=True)
    voices = []
    for line in result.stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 5 and not parts[4].startswith("mb/"):
            voices.append(parts[1])
    return voices
