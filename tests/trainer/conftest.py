"""Fixtures for trainer tests: a tiny random wav2vec2 model, a handful of real espeak-ng utterances, and the same
on a GCS emulator for the trainer's object-storage path."""

from __future__ import annotations

import os

import itertools
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tuneloop_trainer.spec import ModelSize

TINY = ModelSize(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                 conv_dim=[16, 16, 16, 16], num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, seed=0)
TRAIN_TEXTS = ["turn on the kitchen lights", "set a timer for ten minutes", "call anna tomorrow",
               "play some jazz music", "what's the weather in boston", "add milk to my shopping list"]
EVAL_TEXTS = ["navigate to the airport", "i'll be home soon", "pause the music", "do we need eggs"]

requires_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny model + processor written with save_pretrained."""
    from tuneloop_trainer.modeling import init_model

    return init_model(tmp_path_factory.mktemp("tiny") / "model", TINY)


@pytest.fixture(scope="session")
def speech_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset directory in the export layout with 6 train and 4 eval espeak utterances."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    from tuneloop_demo.speech import SynthesisJob, synthesize

    root = tmp_path_factory.mktemp("dataset")
    for split, texts in (("train", TRAIN_TEXTS), ("eval", EVAL_TEXTS)):
        rows = []
        for index, text in enumerate(texts):
            relative = f"audio/{split}-{index}.wav"
            voice = ["en-us", "en-gb+f2"][index % 2]
            duration = synthesize(SynthesisJob(text=text, voice=voice, out_path=root / relative))
            # One eval row uses an absolute path: the contract allows both.
            audio = str(root / relative) if (split, index) == ("eval", 3) else relative
            rows.append({"id": f"{split}-{index}", "audio": audio, "text": text, "duration_s": duration,
                         "sample_rate": 16000, "voice": voice, "condition": "clean", "source": "test"})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (root / "manifest.json").write_text(json.dumps({"id": "test"}))
    return root


@pytest.fixture
def make_spec(tiny_model_dir: Path, speech_dataset: Path, tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """Build a valid spec dict for a 3-step run, with keyword overrides (nested dicts merge)."""

    def build(**overrides: Any) -> dict[str, Any]:
        spec = {"task": "speech-to-text", "base_model_uri": str(tiny_model_dir), "dataset_uri": str(speech_dataset),
                "output_uri": str(tmp_path / "out"), "seed": 0, "epochs": 1, "max_steps": 3, "batch_size": 2,
                "learning_rate": 1e-3, "warmup_ratio": 0.1, "weight_decay": 0.0,
                "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
                "precision": "fp32", "checkpoint_every_steps": 2, "label_noise": "none", "mlflow": None,
                "logging_steps": 1}
        for key, value in overrides.items():
            spec[key] = {**spec[key], **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
        return spec

    return build


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    def write(spec: dict[str, Any]) -> Path:
        path = tmp_path / "spec.json"
        path.write_text(json.dumps(spec))
        return path

    return write


@pytest.fixture(scope="session")
def tracking_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """One sqlite tracking store per session (creating its schema takes seconds): (uri, artifact root)."""
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


@pytest.fixture
def tracking(tracking_store: tuple[str, str], request: pytest.FixtureRequest) -> Iterator[str]:
    """The session's tracking store as the current one, with an experiment per test; MLflow's process-wide
    state (URIs, active experiment and the environment variables MLflow exports) is put back afterwards."""
    import mlflow
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_state
    from mlflow.tracking._tracking_service import utils as tracking_state

    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID")
    saved_env = {k: os.environ.get(k) for k in keys}
    saved_tracking = getattr(tracking_state, "_tracking_uri", None)
    saved_registry = getattr(registry_state, "_registry_uri", None)
    uri, artifacts = tracking_store
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = request.node.name
    mlflow.set_experiment(experiment_id=mlflow.create_experiment(name, f"{artifacts}/{name}"))
    yield uri
    fluent._active_experiment_id = None
    mlflow.set_tracking_uri(saved_tracking)  # type: ignore[arg-type]  # None means "unset"
    mlflow.set_registry_uri(saved_registry)  # type: ignore[arg-type]
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# --- object storage: the GCS emulator (tests/conftest.py) as the bucket, scratch folders as machines' disks -------


@pytest.fixture
def gcs(gcs_emulator: str) -> Any:
    """A gcsfs client on the emulator for the tests' own uploads and checks (not the trainer's staging code)."""
    from gcsfs.core import GCSFileSystem

    return GCSFileSystem(token="anon", use_listings_cache=False, skip_instance_cache=True)


@pytest.fixture
def bucket_dir(gcs_emulator: str, tmp_path: Path) -> str:
    """This test's own folder in the emulator's bucket (the emulator lives for the whole session)."""
    return f"gs://acme-tuneloop/{tmp_path.name}"


@pytest.fixture
def new_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], Path]:
    """Call to go on as a new machine: an empty TUNELOOP_TRAINER_SCRATCH (returned); the first call is made here."""
    numbers = itertools.count(1)

    def switch() -> Path:
        scratch = tmp_path / f"machine-{next(numbers)}"
        monkeypatch.setenv("TUNELOOP_TRAINER_SCRATCH", str(scratch))
        return scratch

    switch()
    return switch


def _key(uri: str) -> str:
    """``gs://bucket/key`` as gcsfs's path ``bucket/key``."""
    return uri.removeprefix("gs://")


def _upload_tree(gcs: Any, local: Path, uri: str) -> str:
    """Upload every file under ``local`` to folder ``uri``; returns ``uri``. One at a time: the emulator serves one
    connection at a time, and five concurrent ones stall for a second in its listen backlog."""
    files = sorted(p for p in local.rglob("*") if p.is_file())
    gcs.put([str(p) for p in files], [f"{_key(uri)}/{p.relative_to(local).as_posix()}" for p in files], batch_size=1)
    return uri


@pytest.fixture
def remote_inputs(gcs: Any, bucket_dir: str, tiny_model_dir: Path, speech_dataset: Path) -> dict[str, str]:
    """The tiny model and the dataset in the bucket: {"model": uri, "dataset": uri}. The eval row that names its
    audio by an absolute path names it by an absolute gs:// URI there."""
    model = _upload_tree(gcs, tiny_model_dir, f"{bucket_dir}/base-model")
    dataset = _upload_tree(gcs, speech_dataset, f"{bucket_dir}/dataset")
    rows = [json.loads(line) for line in (speech_dataset / "eval.jsonl").read_text().splitlines()]
    for row in rows:
        if Path(row["audio"]).is_absolute():
            row["audio"] = f"{dataset}/{Path(row['audio']).relative_to(speech_dataset).as_posix()}"
    gcs.pipe(f"{_key(dataset)}/eval.jsonl", "".join(json.dumps(row) + "\n" for row in rows).encode())
    return {"model": model, "dataset": dataset}


# --- chat: a tiny causal LM with a locally trained tokenizer, and a handful of conversations to memorise -----------

CHAT_SIZE = {"vocab_size": 300, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 128, "max_position_embeddings": 128, "seed": 0}
CHAT_PAIRS = [("what colour is the sky", "blue"), ("what is two plus two", "four"), ("name a fruit", "apple"),
              ("capital of france", "paris"), ("opposite of hot", "cold"), ("what do cows drink", "water"),
              ("say hello", "hello there"), ("count to three", "one two three")]
CHAT_SYSTEM = "answer briefly"


def chat_row(index: int, question: str, answer: str) -> dict[str, Any]:
    """A chat row as the export writes it: messages ending with the assistant reply, plus extra fields."""
    return {"id": f"c{index}", "messages": [{"role": "system", "content": CHAT_SYSTEM},
                                            {"role": "user", "content": question},
                                            {"role": "assistant", "content": answer}],
            "domain": "trivia", "difficulty": index % 3}


@pytest.fixture(scope="session")
def chat_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The text the tiny tokenizer is trained on (``init-model --corpus``)."""
    path = tmp_path_factory.mktemp("chat-corpus") / "corpus.txt"
    path.write_text("\n".join([CHAT_SYSTEM, *(f"{q}? {a}." for q, a in CHAT_PAIRS)]) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory: pytest.TempPathFactory, chat_corpus: Path) -> Path:
    """A randomly initialised tiny Llama + ChatML tokenizer written with save_pretrained (as init-model does)."""
    from tuneloop_trainer.chat_modeling import init_chat_model
    from tuneloop_trainer.spec import ChatModelSize

    return init_chat_model(tmp_path_factory.mktemp("tiny-chat") / "model", chat_corpus, ChatModelSize(**CHAT_SIZE))


@pytest.fixture(scope="session")
def chat_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A chat dataset directory in the export layout; eval holds the same conversations (memorisation checks)."""
    root = tmp_path_factory.mktemp("chat-dataset")
    rows = [chat_row(i, q, a) for i, (q, a) in enumerate(CHAT_PAIRS)]
    for split in ("train", "eval"):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (root / "manifest.json").write_text(json.dumps({"id": "chat-test", "task": "chat"}))
    return root


@pytest.fixture
def make_chat_spec(tiny_chat_model_dir: Path, chat_dataset: Path, tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """Build a valid chat spec dict for a short run, with keyword overrides (nested dicts merge)."""

    def build(**overrides: Any) -> dict[str, Any]:
        spec = {"task": "chat", "base_model_uri": str(tiny_chat_model_dir), "dataset_uri": str(chat_dataset),
                "output_uri": str(tmp_path / "out"), "seed": 0, "max_steps": 4, "batch_size": 4,
                "learning_rate": 1e-2, "warmup_ratio": 0.0, "weight_decay": 0.0, "max_length": 64,
                "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["all-linear"]},
                "precision": "fp32", "checkpoint_every_steps": 2, "label_noise": "none", "mlflow": None,
                "logging_steps": 1}
        for key, value in overrides.items():
            spec[key] = {**spec[key], **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
        return spec

    return build


@pytest.fixture(scope="session")
def trained_chat_run(tiny_chat_model_dir: Path, chat_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Output directory of a full fine-tune that memorises the 8 conversations (100 steps, about 1 s)."""
    from tuneloop_trainer import train
    from tuneloop_trainer.arguments import from_mapping
    from tuneloop_trainer.spec import TrainingSpec

    output = tmp_path_factory.mktemp("chat-run") / "out"
    train.main(from_mapping(TrainingSpec, {
        "task": "chat", "base_model_uri": str(tiny_chat_model_dir), "dataset_uri": str(chat_dataset),
        "output_uri": str(output), "max_steps": 100, "batch_size": 4, "learning_rate": 1e-2, "warmup_ratio": 0.0,
        "max_length": 64, "lora": {"enabled": False}, "checkpoint_every_steps": 100, "logging_steps": 10}))
    return output
