"""MLflow "models from code" definition of a tuneloop speech-to-text model.

Logged with ``mlflow.pyfunc.log_model(name="model", python_model=tuneloop_trainer.serving_path(),
artifacts={"model": <HF model dir>})``. MLflow copies only this file, so it must not import the rest of
tuneloop_trainer: audio decoding and CTC decoding are repeated here on purpose (keep them in step with
``tuneloop_trainer.audio`` and ``tuneloop_trainer.evaluate``).

Input: a pandas DataFrame with an ``audio`` column (file path or raw WAV/FLAC bytes), or a list of paths/bytes.
Output: a list of transcripts, one per input, in order.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import soundfile as sf
import torch
from scipy.signal import resample_poly
from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

SAMPLE_RATE = 16_000
BATCH_SIZE = 16
_DROP = re.compile(r"[^a-z'\s]")


def _load_audio(source: Any) -> np.ndarray:
    """Path or bytes -> 16 kHz mono float32 (channels averaged, polyphase resampling)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    data, rate = sf.read(source, dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        divisor = math.gcd(int(rate), SAMPLE_RATE)
        mono = resample_poly(mono, SAMPLE_RATE // divisor, int(rate) // divisor)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _inputs(model_input: Any) -> list[Any]:
    if isinstance(model_input, pd.DataFrame):
        if "audio" not in model_input.columns:
            raise ValueError(f"expected a DataFrame with an 'audio' column, got columns {list(model_input.columns)}")
        return model_input["audio"].tolist()
    if isinstance(model_input, pd.Series):
        return model_input.tolist()
    if isinstance(model_input, (str, bytes)):
        return [model_input]
    if isinstance(model_input, dict) and "audio" in model_input:
        values = model_input["audio"]
        return list(values) if isinstance(values, (list, tuple, np.ndarray)) else [values]
    return list(model_input)


class SpeechToTextModel(mlflow.pyfunc.PythonModel):
    """Greedy CTC transcription with a wav2vec2 model stored as the ``model`` artifact."""

    def load_context(self, context: Any) -> None:
        model_dir = context.artifacts["model"]
        self.processor = Wav2Vec2Processor.from_pretrained(model_dir)
        self.model = Wav2Vec2ForCTC.from_pretrained(model_dir).eval()

    # model_input is deliberately unannotated: MLflow turns a predict() type hint into a schema and would
    # convert or reject inputs (and warns for Any); paths, bytes and DataFrames are all handled below.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        audio = [_load_audio(item) for item in _inputs(model_input)]
        return [text for start in range(0, len(audio), BATCH_SIZE)
                for text in self._transcribe(audio[start : start + BATCH_SIZE])]

    @torch.inference_mode()
    def _transcribe(self, audio: list[np.ndarray]) -> list[str]:
        features = self.processor.feature_extractor(
            audio, sampling_rate=SAMPLE_RATE, padding=True, return_attention_mask=True, return_tensors="pt")
        logits = self.model(input_values=features["input_values"], attention_mask=features["attention_mask"]).logits
        frames = self.model._get_feat_extract_output_lengths(features["attention_mask"].sum(-1)).tolist()
        ids = logits.argmax(dim=-1)
        texts = [self.processor.decode(ids[i, : int(n)].tolist()) for i, n in enumerate(frames)]
        return [" ".join(_DROP.sub("", text.lower()).split()) for text in texts]


mlflow.models.set_model(SpeechToTextModel())
