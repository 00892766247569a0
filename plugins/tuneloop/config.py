"""tuneloop configuration: one typed object, read from YAML, overridden by environment variables.

Precedence (last wins): the defaults below (the seed's names and defaults), ``include/config/tuneloop.yaml`` (or
the file named by ``TUNELOOP_CONFIG``), then ``TUNELOOP__<SECTION>__<FIELD>`` environment variables, e.g.
``TUNELOOP__VALIDATION__SIGNIFICANCE_ALPHA=0.01``. Every default works with zero configuration: SQLite store,
local folders, local MLflow, CPU training. ``TUNELOOP_HOME`` moves all local state at once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "TUNELOOP__"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_FILE = REPO_ROOT / "include" / "config" / "tuneloop.yaml"


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the field."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FinetuningConfig(_Section):
    """When to fine-tune (the seed's FinetuningConfig, plus a cooldown and an error-rate window)."""

    min_error_cases: int = Field(100, ge=0, description="new (unconsumed) error cases needed")
    min_corrected_cases: int = Field(50, ge=0, description="new cases that carry a human correction")
    trigger_on_error_rate: bool = Field(True, description="also trigger when the production error rate is high")
    error_rate_threshold: float = Field(0.15, ge=0, le=1, description="errors / inferences over the window")
    error_rate_window_hours: float = Field(168, gt=0, description="window for the error rate (default a week)")
    min_inferences_for_rate: int = Field(100, ge=1, description="below this many inferences the rate is not used")
    cooldown_hours: float = Field(24, ge=0, description="minimum time since the last training run finished")
    auto_approve_finetuning: bool = Field(
        False, description="start training without a person approving it in Airflow (approve_training task)"
    )
    approval_timeout_hours: float = Field(72, gt=0, description="an unanswered training approval is a reject")


class ChatDatasetConfig(_Section):
    """What a chat export keeps and writes (``dataset.chat``; see :mod:`tuneloop.tasks.chat`)."""

    formats: tuple[Literal["openai", "alpaca", "chatml", "raw"], ...] = Field(
        ("openai",), description="extra files written beside train.jsonl/eval.jsonl, e.g. train.alpaca.jsonl")
    min_rating: int = Field(4, ge=1, le=5, description="a case without an ideal response trains on the model's own "
                            "output when a person rated it at least this (1-5)")
    domains: tuple[str, ...] = Field((), description="only cases of these domains (empty: all)")
    task_types: tuple[str, ...] = Field((), description="only cases of these task types (empty: all)")
    metadata_min: dict[str, float] = Field(default_factory=dict, description="metadata field -> minimum: a case is "
                                           "kept only if metadata[field] is a number at least this")
    max_age_days: float | None = Field(None, gt=0, description="only cases created within this many days before "
                                       "the export (None: any age)")
    min_prompt_chars: int = Field(10, ge=0, description="a shorter last user turn (stripped) is quarantined")
    min_response_chars: int = Field(20, ge=0, description="a shorter training target (stripped) is quarantined")
    system_prompt: str | None = Field(None, description="system message of rows whose case has none")


class DatasetConfig(_Section):
    """How error cases become a training/eval dataset."""

    sample_rate: int = Field(16000, gt=0, description="audio is resampled to this rate in the export")
    min_duration_s: float = Field(0.3, ge=0)
    max_duration_s: float = Field(30.0, gt=0)
    eval_fraction: float = Field(0.3, gt=0, lt=1, description="most recent share of cases held out for eval")
    min_eval_cases: int = Field(10, ge=1)
    max_cases: int | None = Field(None, ge=1, description="cap on cases per export (most recent kept)")
    slice_fields: tuple[str, ...] = Field(("voice", "condition", "source"), description="metadata kept per row")
    replay_path: Path | None = Field(None, description="JSONL of known-good older examples {id, audio, text} "
                                                       "mixed into every train split, so fine-tuning on new "
                                                       "mistakes does not erode what the model already does well")
    replay_size: int | None = Field(None, ge=1, description="rows drawn from replay_path (seeded); default all")
    replay_seed: int = 0
    max_chars_per_second: float = Field(
        50.0, gt=0, description="transcript characters one second of audio can carry: a wav2vec2-style CTC model "
        "emits 50 frames per second and needs one per character, so a longer transcript cannot be aligned "
        "(people rarely speak over ~20 characters per second)")
    chat: ChatDatasetConfig = Field(ChatDatasetConfig(), description="chat exports (task chat) only")

    @model_validator(mode="after")
    def _durations(self) -> "DatasetConfig":
        if self.min_duration_s >= self.max_duration_s:
            raise ValueError("dataset.min_duration_s must be below dataset.max_duration_s")
        return self


TRAINER_IMAGE = "ghcr.io/tuneloop/trainer:0.3.0"


class PodConfig(_Section):
    """The trainer as a Kubernetes pod (``kubernetes`` and ``gke``); ``image`` and ``env`` serve the ``gce`` VM too.

    ``secret_env`` maps an environment variable to ``<kubernetes secret>:<key>``: the pod spec carries only the
    reference, never the value (e.g. ``MLFLOW_TRACKING_TOKEN: mlflow-credentials:token``). Cloud credentials come
    from the pod's service account (GKE Workload Identity), not from files.
    """

    image: str = Field(TRAINER_IMAGE, description="trainer image, pinned by tag or digest")
    namespace: str = "tuneloop"
    service_account: str | None = Field("tuneloop-trainer", description="Kubernetes service account of the pod")
    gpus: int = Field(1, ge=0, description="GPUs requested and limited (0: CPU pod)")
    gpu_resource: str = "nvidia.com/gpu"
    cpu: str = "4"
    memory: str = "16Gi"
    node_selector: dict[str, str] = Field(default_factory=lambda: {"cloud.google.com/gke-accelerator": "nvidia-l4"})
    tolerations: tuple[dict[str, str], ...] = (
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},)
    env: dict[str, str] = Field(default_factory=dict, description="plain environment of the trainer (pods and VMs); "
                                "no secrets here")
    secret_env: dict[str, str] = Field(default_factory=dict, description="ENV_NAME: '<secret>:<key>'")
    kubernetes_conn_id: str = "kubernetes_default"
    startup_timeout_seconds: int = Field(900, ge=1, description="image pull + GPU node scale-up")

    @model_validator(mode="after")
    def _secret_refs(self) -> "PodConfig":
        for name, ref in self.secret_env.items():
            if ref.count(":") != 1 or not all(ref.split(":")):
                raise ValueError(f"secret_env.{name}: expected '<secret name>:<key>', got {ref!r}")
        return self


class GkeConfig(_Section):
    """Where the ``gke`` backend's pods run; the pod itself is ``training.pod``."""

    project_id: str | None = None
    location: str = "europe-west4"
    cluster_name: str = "tuneloop"
    gcp_conn_id: str = "google_cloud_default"


class GceConfig(_Section):
    """The ``gce`` backend: one GPU VM per step, running the trainer image, deleted afterwards."""

    project_id: str | None = None
    zone: str = "europe-west4-a"
    machine_type: str = "g2-standard-8"
    accelerator_type: str = "nvidia-l4"
    accelerator_count: int = Field(1, ge=0)
    boot_image: str = "projects/cos-cloud/global/images/family/cos-stable"
    boot_disk_gb: int = Field(100, ge=10)
    network: str = "global/networks/default"
    service_account_email: str | None = Field(None, description="the VM's identity (bucket access)")
    gcp_conn_id: str = "google_cloud_default"
    api_endpoint: str | None = Field(None, description="Compute Engine API endpoint; None = Google's")
    poll_seconds: float = Field(30, gt=0)
    timeout_hours: float = Field(12, gt=0)


class OpenAIFineTuningConfig(_Section):
    """The ``openai`` backend (chat models): OpenAI's supervised fine-tuning API trains the candidate.

    The key and endpoint come only from Airflow connection ``conn_id`` (type ``openai``: key in the password,
    optional base URL in the host or ``extra.openai_client_kwargs.base_url``), never from this file. OpenAI is
    winding down self-serve fine-tuning (no new jobs from 2027-01-06): see the README.
    """

    conn_id: str = Field("openai_default", min_length=1, description="Airflow connection (type openai)")
    base_model: str = Field("gpt-4.1-mini-2025-04-14", min_length=1, description="the OpenAI model fine-tuned when "
                            "no production version exists; later runs fine-tune production's model further")
    n_epochs: int | Literal["auto"] = Field("auto", description="'auto': OpenAI's default for the dataset size; "
                                            "the Params form's epochs overrides")
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"
    max_example_tokens: int = Field(65536, ge=1, description="an example with more tokens is refused before upload")
    min_examples: int = Field(10, ge=10, description="OpenAI needs at least 10 training examples")
    poll_seconds: float = Field(30, gt=0, description="how often the triggerer reads the job and its events")
    timeout_hours: float = Field(24, gt=0, description="after this the job is cancelled and the run fails")
    request_timeout_seconds: float = Field(60, gt=0, description="per API request")
    max_retries: int = Field(5, ge=0, description="retries of a request that failed with 408/409/429/5xx or a "
                             "connection error, with the client's exponential backoff (honouring Retry-After)")
    concurrency: int = Field(8, ge=1, le=64, description="evaluation requests in flight at once")
    max_reply_tokens: int = Field(512, ge=1, description="max_completion_tokens of each evaluation reply")


class VertexTuningConfig(_Section):
    """The ``vertex`` backend (chat models): Vertex AI's supervised tuning of Gemini models trains the candidate.

    Credentials come only from Airflow connection ``conn_id`` (type google_cloud_platform, read by the google
    provider's GenAI hook: a key file, ADC or impersonation), never from this file. Vertex reads the training
    files from Cloud Storage, so the run's folder must be in a bucket (``storage_root: gs://...``): the splits are
    written there in Vertex's format. A tuned model is served by the endpoint Vertex deploys it to; later runs tune
    production's tuned model further (Vertex's continuous tuning).
    """

    conn_id: str = Field("google_cloud_default", min_length=1, description="Airflow connection "
                         "(type google_cloud_platform)")
    project_id: str | None = Field(None, description="None: the connection's project")
    location: str = Field("us-central1", min_length=1, description="the Vertex AI region tuning and serving run in")
    api_endpoint: str | None = Field(None, description="the API's base URL (a private endpoint); None: "
                                     "https://{location}-aiplatform.googleapis.com/")
    base_model: str = Field("gemini-2.5-flash", min_length=1, description="the Gemini model tuned when no "
                            "production version exists")
    epoch_count: int = Field(3, ge=1, description="epochs of the job (sent to Vertex, whose own default depends "
                             "on the dataset; and what the cost estimate counts); the Params form's epochs overrides")
    learning_rate_multiplier: float | None = Field(None, gt=0)
    adapter_size: Literal[1, 2, 4, 8, 16] | None = Field(None, description="LoRA adapter size; None: Vertex's")
    max_example_tokens: int = Field(131072, ge=1, description="an example with more (estimated) tokens is refused "
                                    "before anything is written")
    min_examples: int = Field(16, ge=1, description="fewer training examples are refused (Vertex recommends 100+)")
    train_earlier_replies: bool = Field(True, description="Vertex trains on every model turn of an example: true "
                                        "trains on a conversation's earlier replies too (the export marks them weight "
                                        "0: production's, uncorrected); false refuses such multi-turn rows")
    poll_seconds: float = Field(60, gt=0, description="how often the triggerer reads the job")
    timeout_hours: float = Field(24, gt=0, description="after this the job is cancelled and the run fails")
    request_timeout_seconds: float = Field(60, gt=0, description="per API request")
    max_retries: int = Field(5, ge=0, description="attempts of a request that failed with 408/429/5xx or a "
                             "connection error, with exponential backoff")
    concurrency: int = Field(8, ge=1, le=64, description="evaluation requests in flight at once")
    max_reply_tokens: int = Field(512, ge=1, description="maxOutputTokens of each evaluation reply")


class TrainingConfig(_Section):
    """How the trainer runs (mirrors the trainer's spec; the Params form overrides per run)."""

    backend: Literal["local", "kubernetes", "gke", "gce", "openai", "vertex"] = Field(
        "local", description="where the trainer runs; openai / vertex: OpenAI's fine-tuning API / Vertex AI's "
        "Gemini tuning (chat models)")
    base_model: str | None = Field(None, description="HF model dir used when no production model is registered")
    epochs: int = Field(3, ge=1)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(3e-5, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    use_lora: bool = True
    lora_rank: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 0
    checkpoint_every_steps: int = Field(50, ge=1)
    eval_batch_size: int = Field(16, ge=1)
    timeout_minutes: float = Field(120, gt=0, description="the local backend kills a trainer running longer")
    pod: PodConfig = PodConfig()
    gke: GkeConfig = GkeConfig()
    gce: GceConfig = GceConfig()
    openai: OpenAIFineTuningConfig = OpenAIFineTuningConfig()
    vertex: VertexTuningConfig = VertexTuningConfig()

    def timeout_hours(self) -> float:
        """How long the configured backend's training may take before it is stopped."""
        return {"gce": self.gce.timeout_hours, "openai": self.openai.timeout_hours,
                "vertex": self.vertex.timeout_hours}.get(
            self.backend, self.timeout_minutes / 60)


# Fields every exported eval row carries whatever dataset.slice_fields says (tuneloop.datasets writes them); with
# dataset.slice_fields they are all a slice can split on.
EXPORTED_ROW_FIELDS = ("duration_s", "sample_rate", "created_at", "model_version", "source")
CHAT_EXPORTED_ROW_FIELDS = ("created_at", "model_version", "source", "domain", "task_type", "rating")
EXPORTED_ROW_FIELDS_BY_TASK = {"speech_to_text": EXPORTED_ROW_FIELDS, "chat": CHAT_EXPORTED_ROW_FIELDS}


class SliceSpec(_Section):
    """A metadata field of the eval rows whose values are gated one by one (e.g. ``condition``: clean / noisy).

    A value with at least ``min_n`` utterances fails the gate when its WER rises by more than ``max_wer_increase``
    (absolute); smaller values are reported, not gated. ``buckets`` turns a numeric field into ranges, e.g.
    ``field: duration_s, buckets: [2, 5]`` gives ``<2``, ``2-5`` and ``>=5``.
    """

    field: str = Field(min_length=1)
    min_n: int = Field(30, ge=1, description="a slice value needs this many utterances to be gated")
    max_wer_increase: float = Field(0.0, ge=0, description="tolerated rise of the slice's WER (absolute)")
    max_score_drop: float = Field(0.0, ge=0, description="chat models: tolerated fall of the slice's mean primary "
                                  "score (validation.text.primary_metric, absolute)")
    buckets: tuple[float, ...] | None = Field(None, description="ascending edges for a numeric field")

    @model_validator(mode="after")
    def _ascending(self) -> "SliceSpec":
        if self.buckets is not None and (not self.buckets or list(self.buckets) != sorted(set(self.buckets))):
            raise ValueError(f"slice {self.field!r}: buckets must be strictly ascending, got {list(self.buckets)}")
        return self


class JudgeConfig(_Section):
    """The optional pairwise LLM judge of a chat candidate (``validation.text.judge``; :mod:`tuneloop.judge`).

    An OpenAI-compatible endpoint compares production's and the candidate's reply to each eval conversation, twice
    with the positions swapped; two verdicts that disagree are a tie. ``conn_id`` is an Airflow connection of type
    ``openai`` (base URL: host or extra ``openai_client_kwargs.base_url``; key: password or
    ``openai_client_kwargs.api_key``); without one, ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``.
    """

    enabled: bool = Field(False, description="ask the judge which reply is better")
    conn_id: str = Field("openai_default", min_length=1, description="Airflow connection (type openai) of the "
                         "judge's endpoint")
    model: str | None = Field(None, min_length=1, validate_default=True, description="the judge model's name at "
                              "the endpoint; required when enabled")
    max_examples: int = Field(200, ge=1, description="judge at most this many eval examples (a seeded sample), "
                              "two calls each, to bound the cost")
    seed: int = Field(0, description="seed of that sample")
    temperature: float = Field(0.0, ge=0, le=2, description="the judge's sampling temperature")
    gating: bool = Field(True, description="the gate requires the sign test on judge wins vs losses to be "
                         "significant at validation.significance_alpha; false: reported only")
    timeout_seconds: float = Field(60.0, gt=0, description="per request to the judge's endpoint")
    max_retries: int = Field(3, ge=0, description="retries of a failed request (connection errors, 408, 409, 429, "
                             "5xx) before the run fails")
    concurrency: int = Field(4, ge=1, le=64, description="requests to the judge in flight at once")

    @field_validator("model")
    @classmethod
    def _model_when_enabled(cls, value: str | None, info: Any) -> str | None:
        if value is None and info.data.get("enabled"):
            raise ValueError("required when the judge is enabled: the judge model's name at the endpoint "
                             "(e.g. gpt-4.1)")
        return value


class TextValidationConfig(_Section):
    """What the gate judges for a chat model (the rest, alpha, eval size, newly broken cap, resamples, first-run
    policy, is the shared ``validation`` section)."""

    primary_metric: Literal["exact_match", "contains", "token_f1", "json_valid", "json_field_match"] = Field(
        "exact_match", description="per-example score the gate judges: right/wrong ones (exact_match, contains, "
        "json_valid) by McNemar's exact test, graded ones (token_f1, json_field_match) by the paired bootstrap")
    min_improvement: float = Field(0.0, ge=0, le=1, description="required rise of the primary metric's mean")
    right_threshold: float = Field(1.0, gt=0, le=1, description="a score at or above this counts as right "
                                   "(for newly broken examples)")
    structured: bool = Field(False, description="replies must be JSON: json_valid is scored, and json_field_match "
                             "against a JSON reference")
    json_fields: tuple[str, ...] | None = Field(None, description="fields json_field_match compares; None: all of "
                                                "the reference's")
    judge: JudgeConfig = Field(JudgeConfig(), description="optional pairwise LLM judge (sign test on its "
                               "wins vs losses)")


class ValidationConfig(_Section):
    """The gate (the seed's ValidationConfig) plus the statistics it needs, slices, churn and the first-run policy.

    First run (no production model to compare with): ``first_run_policy: absolute`` judges the candidate alone
    against ``first_run_max_wer`` / ``first_run_max_cer``; ``require_approval`` (the default) runs the usual
    comparison against the base model it started from and, if it passes, waits for a person to approve the
    deployment whatever ``auto_deploy`` says.
    """

    min_wer_improvement: float = 0.0
    min_cer_improvement: float = 0.0
    require_significance: bool = True
    significance_alpha: float = Field(0.05, gt=0, lt=1)
    max_wer_degradation_rate: float = Field(0.10, ge=0, le=1, description="share of utterances allowed to worsen")
    require_no_major_degradation: bool = True
    major_degradation_threshold: float = Field(0.5, gt=0, description="per-utterance WER increase that is major")
    min_eval_size: int = Field(20, ge=1, description="below this many eval utterances: insufficient evidence")
    bootstrap_resamples: int = Field(10_000, ge=100)
    bootstrap_seed: int = 0
    slices: tuple[SliceSpec, ...] = Field((), description="metadata fields gated value by value")
    slice_resamples: int = Field(1_000, ge=100, description="bootstrap resamples for each slice's CI (display only)")
    max_newly_broken: int | None = Field(None, ge=0, description="cap on utterances production got right and the "
                                                                 "candidate gets wrong (count)")
    max_newly_broken_rate: float | None = Field(0.05, ge=0, le=1, description="the same cap as a share of eval")
    first_run_policy: Literal["absolute", "require_approval"] = "require_approval"
    first_run_max_wer: float = Field(0.5, gt=0, description="absolute policy: the candidate's WER must be below")
    first_run_max_cer: float | None = Field(None, gt=0, description="absolute policy: optional CER ceiling")
    text: TextValidationConfig = Field(TextValidationConfig(), description="chat models: the metric judged")


SuiteType = Literal["benchmark", "critical", "smoke"]


class SuiteSpec(_Section):
    """A regression suite (the seed's ``register_test``): a fixed JSONL test set the candidate must not regress on.

    Speech: ``data_path`` holds rows ``{"id", "audio", "text", ...}``, audio relative to the file; ``baseline_wer``
    / ``baseline_cer`` are the recorded baseline (with the ``baseline_version`` that made it); when absent,
    production's WER on the suite, measured in the same run, is the baseline. Chat: ``data_path`` holds the
    trainer's chat rows ``{"id", "messages": [..., {"role": "assistant", "content": <reference>}]}``;
    ``baseline_score`` is the recorded mean of ``validation.text.primary_metric`` (else production's, measured in
    the same run) and ``max_score_drop`` the fall of that mean the suite tolerates. A suite's baseline and cap
    are of its model's kind: :meth:`task_problem` names a field of the other kind.
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    type: SuiteType = "benchmark"
    data_path: Path
    baseline_wer: float | None = Field(None, ge=0)
    baseline_cer: float | None = Field(None, ge=0)
    baseline_version: str | None = None
    max_wer_degradation: float = Field(0.05, ge=0, description="allowed rise of the suite's WER (absolute)")
    baseline_score: float | None = Field(None, ge=0, le=1, description="chat: recorded mean of the primary metric")
    max_score_drop: float = Field(0.05, ge=0, le=1, description="chat: allowed fall of the suite's primary-metric "
                                  "mean below its baseline (absolute)")

    @model_validator(mode="after")
    def _not_eval(self) -> "SuiteSpec":
        if self.name == "eval":
            raise ValueError("suite name 'eval' is reserved for the run's eval split")
        return self

    def task_problem(self, task: str) -> str | None:
        """Why this suite cannot be judged for a model of ``task``, starting with the field's name, or None: a
        WER baseline or cap on a chat model's suite (or a score one on a speech model's) would be ignored, and
        the suite judged against something nobody asked for."""
        if task == "chat":
            foreign, judged = CHAT_TWIN_OF_SPEECH_FIELD, "its validation.text.primary_metric mean, not WER/CER"
        else:
            foreign, judged = {"baseline_score": "baseline_wer", "max_score_drop": "max_wer_degradation"}, "WER"
        for name, instead in foreign.items():
            if getattr(self, name) != type(self).model_fields[name].default:
                return (f"{name}: suite {self.name!r} belongs to a {task} model, judged by {judged}; "
                        f"use {instead}")
        return None


# A suite's speech-only fields and the chat field used instead of each.
CHAT_TWIN_OF_SPEECH_FIELD = {"baseline_wer": "baseline_score", "baseline_cer": "baseline_score",
                             "max_wer_degradation": "max_score_drop"}


class RegressionConfig(_Section):
    """Regression testing (the seed's RegressionConfig) and the suites registered in config."""

    run_on_deploy: bool = Field(True, description="run every suite on each candidate before deciding")
    fail_on_critical_degradation: bool = True
    critical_degradation_threshold: float = Field(
        0.1, ge=0, description="rise of a suite's WER over its baseline that is critical, in absolute WER (0.1: ten "
        "points, e.g. 0.15 -> 0.26), like every other WER threshold here; blocks the run whatever the suite's type. "
        "Chat: the same absolute fall of the suite's primary-metric mean")
    max_failed_samples_rate: float = Field(0.05, ge=0, le=1, description="share of samples allowed to fail")
    sample_degradation_threshold: float = Field(0.2, ge=0, description="per-sample WER rise that fails it (chat, "
                                                "graded metrics: per-example score fall)")
    exclude_suite_texts: bool = Field(True, description="leakage guard also matches transcripts, not only audio")
    suites: tuple[SuiteSpec, ...] = ()


class CanaryConfig(_Section):
    """The ``canary`` strategy's traffic share and online test (:mod:`tuneloop.online_test`)."""

    traffic_percent: float = Field(10, gt=0, lt=100, description="share of the requests the canary answers")
    min_samples: int = Field(200, ge=1, description="judged requests each arm needs before a promotion (seed 004: "
                             "at least 30, 100+ recommended); a clearly worse canary is rolled back before that")
    max_duration_hours: float = Field(72, gt=0, description="the deadline: no difference shown by then keeps "
                                      "production")
    alpha: float = Field(0.05, gt=0, lt=1, description="the sequential test's false-decision rate, however often it "
                         "looks")
    mixing_sd: float = Field(0.05, gt=0, le=1, description="mSPRT's tau: the size of error-rate difference (0.05 = 5 "
                             "points) the test finds fastest")
    poll_seconds: float = Field(300, gt=0, description="how often the waiting step looks at the counts")


class DeploymentConfig(_Section):
    """How a passing candidate is promoted (the seed's DeploymentConfig)."""

    deployment_strategy: Literal["replace", "canary", "blue_green"] = Field(
        "replace", description="'replace': the production alias moves in one step; 'blue_green': the candidate "
        "goes to the green alias, the post-deploy check runs on it, then production moves in one step; 'canary': "
        "the candidate answers deployment.canary.traffic_percent of the requests until the online test promotes "
        "it, rolls it back or keeps production")
    canary: CanaryConfig = Field(default_factory=CanaryConfig)
    keep_previous_versions: int = Field(5, ge=1, description="deployed versions kept as rollback targets")
    enable_auto_rollback: bool = True
    rollback_on_error_threshold: float = Field(
        0.5, gt=0, description="post-deploy check: roll back when the served model's WER on the smoke set exceeds it"
    )
    post_deploy_smoke_size: int = Field(20, ge=1, description="eval utterances transcribed through the alias")
    approval_timeout_hours: float = Field(72, gt=0, description="an unanswered deployment approval is a reject")



class MlflowConfig(_Section):
    tracking_uri: str | None = Field(None, description="default: sqlite:///<home>/mlflow.db")
    registry_uri: str | None = Field(None, description="default: the tracking URI")
    artifact_location: str | None = Field(None, description="default: <home>/mlartifacts")
    ui_url: str = Field("http://localhost:5000", description="MLflow UI base, for links from Airflow and records")
    experiment_name: str = "tuneloop"
    model_name: str = "speech-to-text"


class ScheduleConfig(_Section):
    weekly_cron: str = "0 2 * * 0"
    on_errors_cron: str = "*/30 * * * *"
    sensor_poke_seconds: float = Field(60, gt=0)
    sensor_timeout_minutes: float = Field(25, gt=0, description="how long one sensor run waits before skipping")
    retries: int = Field(2, ge=0, description="attempts after a failed task (a retried training resumes)")
    retry_delay_seconds: float = Field(60, ge=0, description="wait before a retry")
    run_timeout_hours: float = Field(336, gt=0, description="a fine-tuning run with no result this long after it "
                                     "started is failed (its cases stay new), whatever Airflow says; keep it above "
                                     "the longest real run, approval waits included")

    @field_validator("weekly_cron", "on_errors_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        """Refuse here what Airflow would refuse at parse time (the DAG would vanish with an import error)."""
        from croniter import croniter

        if not croniter.is_valid(value):
            raise ValueError("not a cron expression: five fields such as '0 2 * * 0', or a preset such as '@daily'")
        return value


class IngestConfig(_Section):
    """Limits that turn pathological JSONL rows into clear refusals before they cost memory or time."""

    max_line_bytes: int = Field(1_048_576, ge=1024, description="longer lines are refused unread")
    max_nesting_depth: int = Field(16, ge=2, description="deepest JSON nesting of a row (the row object is 1)")
    max_number_digits: int = Field(30, ge=1, description="digits of an integer literal")
    max_text_chars: int = Field(10_000, ge=1, description="characters of prediction and correction")
    max_metadata_bytes: int = Field(65_536, ge=2, description="size of a row's metadata as JSON")
    max_error_types: int = Field(50, ge=1, description="entries in error_types")
    settle_seconds: float = Field(10, ge=0, description="an inbox file modified more recently is still being "
                                  "written and waits for the next pass")


DEFAULT_MODEL = "default"
TaskName = Literal["speech_to_text", "chat"]
MODEL_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"  # part of DAG ids, run folders and MLflow tags
# Sections a model of ``models:`` may override; everything else (home, store, storage, mlflow server) is shared.
MODEL_SECTIONS = ("trigger", "ingest", "dataset", "training", "validation", "regression", "deployment", "schedule",
                  "costs", "notifications")


class Price(_Section):
    """What one priced thing costs, in dollars; set only what applies (see :mod:`tuneloop.costs`)."""

    training_per_1m_tokens: float | None = Field(None, ge=0, description="managed fine-tuning, per 1M trained "
                                                 "tokens (the base model's entry)")
    input_per_1m_tokens: float | None = Field(None, ge=0, description="inference, per 1M prompt tokens")
    output_per_1m_tokens: float | None = Field(None, ge=0, description="inference, per 1M completion tokens")
    per_hour: float | None = Field(None, ge=0, description="a machine type, an accelerator (per unit) or a "
                                   "backend's pod (kubernetes, gke), per hour")
    per_request: float | None = Field(None, ge=0, description="inference, per request")


class CostsConfig(_Section):
    """Prices, budgets and the value of an avoided error (seed 004's cost tracker).

    ``prices`` keys: an OpenAI model id, ``ft:<base model>`` (every model fine-tuned from it), a GCE machine type
    or accelerator type, ``kubernetes`` / ``gke``. A budget that is set is checked before training starts (the
    ``approve_budget`` step): over it, the run waits for a person's approval (``over_budget: approve``) or is
    refused with the numbers (``refuse``); nothing is uploaded or started before that decision.
    """

    prices: dict[str, Price] = Field(default_factory=dict, description="name -> price (dollars); none are built in")
    max_run_usd: float | None = Field(None, ge=0, description="one run's training may cost at most this")
    monthly_budget_usd: float | None = Field(None, ge=0, description="this model's training per calendar month (UTC)")
    over_budget: Literal["approve", "refuse"] = Field("approve", description="over budget: a person approves in "
                                                      "Airflow, or the run is refused")
    value_per_error_avoided_usd: float = Field(10.0, ge=0, description="what one avoided error is worth (seed 004)")
    expected_requests_per_month: int | None = Field(None, ge=0, description="for ROI; None: production's recorded "
                                                    "inferences over the last 30 days")
    approval_timeout_hours: float = Field(24, gt=0, description="an unanswered over-budget approval is a reject")


NotificationEvent = Literal["deployed", "rejected", "rolled_back", "failed", "waiting_for_approval",
                            "budget_exceeded"]
NOTIFICATION_EVENTS: tuple[str, ...] = ("deployed", "rejected", "rolled_back", "failed", "waiting_for_approval",
                                        "budget_exceeded")


NOTIFIER_CONNECTIONS = {"smtp": "smtp_default", "slack": "slack_default", "apprise": "apprise_default"}


class NotificationChannel(_Section):
    """Where a model's events are sent: e-mail through an Airflow SMTP connection (the SMTP provider), a Slack
    channel through a Slack incoming-webhook connection (the Slack provider), or any of Apprise's services (Teams,
    Discord, a JSON webhook...) through an Airflow Apprise connection whose ``config`` names their URLs."""

    kind: Literal["smtp", "slack", "apprise"] = Field("smtp", description="smtp: e-mail; slack: the incoming "
                                                      "webhook of connection conn_id; apprise: its services")
    conn_id: str | None = Field(None, min_length=1, description="Airflow connection; None: smtp_default / "
                                "slack_default / apprise_default")
    to: list[str] = Field(default_factory=list, description="recipients (smtp: at least one)")
    from_email: str | None = Field(None, description="sender (smtp); None: the connection's from_email")
    tag: str = Field("all", min_length=1, description="apprise: only the connection's services with this tag")
    events: list[NotificationEvent] = Field(default_factory=lambda: list(NOTIFICATION_EVENTS),
                                            description="the events sent here (default: all)")

    @model_validator(mode="after")
    def _recipients(self) -> "NotificationChannel":
        if self.kind == "smtp" and not self.to:
            raise ValueError("to: an smtp channel needs at least one recipient")
        if self.kind != "smtp" and (self.to or self.from_email):
            raise ValueError(f"to / from_email: a {self.kind} channel sends to its connection's services; name "
                             "recipients there")
        return self

    @property
    def connection(self) -> str:
        return self.conn_id or NOTIFIER_CONNECTIONS[self.kind]


class NotificationsConfig(_Section):
    """Who hears of a model's runs: each channel gets the events it lists, with the decision summary and links
    (the Airflow run, the MLflow run, the approval form). A notifier that fails is logged; it never fails a run."""

    channels: list[NotificationChannel] = Field(default_factory=list, description="none by default")
    airflow_url: str | None = Field(None, description="the Airflow UI base URL in messages; None: Airflow's "
                                    "api.base_url")


class ModelSpec(_Section):
    """One model of an installation with several (``models:``): its name, task, registered model and overrides.

    Each override is a partial section merged over the top-level one (nested mappings merged key by key), so
    what the models share is written once, e.g. ``training: {base_model: /models/support-v1, epochs: 2}``.
    """

    name: str = Field(pattern=MODEL_NAME_PATTERN, description="suffix of the model's DAG ids, e.g. "
                      "finetune_weekly_support; lower case letters, digits and _")
    task: TaskName = Field(description="what kind of model: speech_to_text or chat")
    model_name: str = Field(min_length=1, description="its registered model in MLflow")
    trigger: dict[str, Any] = Field(default_factory=dict)
    ingest: dict[str, Any] = Field(default_factory=dict)
    dataset: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    validation: dict[str, Any] = Field(default_factory=dict)
    regression: dict[str, Any] = Field(default_factory=dict)
    deployment: dict[str, Any] = Field(default_factory=dict)
    schedule: dict[str, Any] = Field(default_factory=dict)
    costs: dict[str, Any] = Field(default_factory=dict)
    notifications: dict[str, Any] = Field(default_factory=dict)


class TuneloopConfig(_Section):
    """The whole configuration. Paths default under ``home``.

    One model (the default): the sections below configure it, ``task`` says what it is. Several: ``models:``
    lists them; :meth:`for_model` gives each one's own configuration (top-level sections with its overrides).
    """

    home: Path = Field(default_factory=lambda: _default_home())
    name: str = Field(DEFAULT_MODEL, pattern=MODEL_NAME_PATTERN, description="the model's name in the store "
                      "(set from models: for each model; a one-model configuration leaves it 'default')")
    task: TaskName = Field("speech_to_text", description="what kind of model a one-model configuration trains")
    models: tuple[ModelSpec, ...] = Field((), description="several models in one installation, each with its "
                                          "own DAGs, cases, runs, aliases and history")
    store_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<home>/store.db")
    storage_root: str | None = Field(None, description="datasets, models and run files: a folder, or "
                                     "gs://bucket/prefix shared with pods and VMs; default <home>/storage")
    storage_conn_id: str | None = Field(None, description="Airflow connection for an object-storage storage_root "
                                        "(e.g. google_cloud_default); None: the scheme's default credentials")
    inbox: str | None = Field(None, description="JSONL batches dropped here are ingested: a folder or a bucket prefix "
                              "(gs://bucket/inbox, with storage_conn_id); default <home>/inbox")
    trigger: FinetuningConfig = FinetuningConfig()
    ingest: IngestConfig = IngestConfig()
    dataset: DatasetConfig = DatasetConfig()
    training: TrainingConfig = TrainingConfig()
    validation: ValidationConfig = ValidationConfig()
    regression: RegressionConfig = RegressionConfig()
    deployment: DeploymentConfig = DeploymentConfig()
    mlflow: MlflowConfig = MlflowConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    costs: CostsConfig = CostsConfig()
    notifications: NotificationsConfig = NotificationsConfig()

    @model_validator(mode="after")
    def _deadline_above_the_waits(self) -> "TuneloopConfig":
        """A deadline shorter than a run may legitimately take would fail a live run and let a second one train
        on the same cases: it must exceed the approval waits, one training budget and a canary's online test (any
        run may choose the canary strategy in its form)."""
        floor = (self.trigger.approval_timeout_hours + self.costs.approval_timeout_hours
                 + self.deployment.approval_timeout_hours + self.training.timeout_hours()
                 + self.deployment.canary.max_duration_hours)
        if self.schedule.run_timeout_hours <= floor:
            raise ValueError(
                f"schedule.run_timeout_hours: {self.schedule.run_timeout_hours:g} h would fail runs still waiting or "
                f"training: a run may wait trigger.approval_timeout_hours ({self.trigger.approval_timeout_hours:g}) "
                f"+ costs.approval_timeout_hours ({self.costs.approval_timeout_hours:g}) "
                f"+ deployment.approval_timeout_hours ({self.deployment.approval_timeout_hours:g}), train "
                f"for {self.training.timeout_hours():g} h (the {self.training.backend} backend's timeout) and run a "
                f"canary for deployment.canary.max_duration_hours ({self.deployment.canary.max_duration_hours:g}); "
                f"set it above {floor:g} h")
        return self

    @model_validator(mode="after")
    def _chat_first_runs_compare(self) -> "TuneloopConfig":
        """A chat model's first run compares with its base model and a person approves: an absolute ceiling on
        WER/CER means nothing for text."""
        if self.task == "chat" and self.validation.first_run_policy == "absolute":
            raise ValueError("validation.first_run_policy: 'absolute' judges a speech model alone by WER/CER; a chat "
                             "model's first run compares with its base model and waits for approval "
                             "(require_approval)")
        return self

    @model_validator(mode="after")
    def _suites_fit_the_task(self) -> "TuneloopConfig":
        """A suite's baseline and cap are of its model's kind (checked per model when ``models:`` lists several:
        the top-level sections are then shared settings, not a model)."""
        if self.models:
            return self
        for index, spec in enumerate(self.regression.suites):
            problem = spec.task_problem(self.task)
            if problem:
                raise ValueError(f"regression.suites[{index}].{problem}")
        return self

    @model_validator(mode="after")
    def _slices_are_exported(self) -> "TuneloopConfig":
        """A slice on a field the export drops puts every row in ``(missing)``: the slice gate would silently
        re-judge the whole eval set instead of a slice of it. Refuse it at load time."""
        exported = {*EXPORTED_ROW_FIELDS_BY_TASK[self.task], *self.dataset.slice_fields}
        for index, spec in enumerate(self.validation.slices):
            if spec.field not in exported:
                raise ValueError(
                    f"validation.slices[{index}].field: {spec.field!r} is not a field of the exported eval rows, so "
                    f"every row would be '(missing)'; add it to dataset.slice_fields (case metadata kept per row) "
                    f"or use one of {sorted(exported)}")
        return self

    @model_validator(mode="after")
    def _models_are_distinct(self) -> "TuneloopConfig":
        """Two models sharing a name would share DAG ids and cases; sharing a registered model, its aliases."""
        for field_name in ("name", "model_name"):
            seen: set[str] = set()
            for index, spec in enumerate(self.models):
                value = getattr(spec, field_name)
                if value in seen:
                    raise ValueError(f"models[{index}].{field_name}: {value!r} is already used by another model")
                seen.add(value)
        for index, spec in enumerate(self.models):  # refuse a bad override now, not when its DAG first runs
            try:
                self.for_model(spec.name)
            except ConfigError as error:
                raise ValueError(f"models[{index}] ({spec.name}): {error}") from None
        return self

    @property
    def several_models(self) -> bool:
        return bool(self.models)

    @property
    def model_names(self) -> tuple[str, ...]:
        """The configured models' names: those of ``models:``, or the one model's (``default``)."""
        return tuple(spec.name for spec in self.models) or (self.name,)

    def for_model(self, name: str) -> "TuneloopConfig":
        """The configuration of one model: the top-level sections with its overrides, ``name``, ``task`` and
        ``mlflow.model_name`` set, and no ``models``. A one-model configuration returns itself for its name."""
        if not self.models:
            if name != self.name:
                raise ConfigError(f"model {name!r} is not configured (this installation has one model, "
                                  f"{self.name!r}; list several under models:)")
            return self
        spec = next((m for m in self.models if m.name == name), None)
        if spec is None:
            raise ConfigError(f"model {name!r} is not configured; models: {', '.join(self.model_names)}")
        data = self.model_dump(exclude={"models"})
        for section in MODEL_SECTIONS:
            data[section] = _deep_merge(data[section], getattr(spec, section))
        data.update(name=spec.name, task=spec.task)
        data["mlflow"] = {**data["mlflow"], "model_name": spec.model_name,  # one experiment per model: its runs
                          "experiment_name": f"{self.mlflow.experiment_name}-{spec.name}"}  # get the same run ids
        try:
            return TuneloopConfig.model_validate(data)
        except ValidationError as error:
            raise ConfigError("; ".join(_field_errors(error))) from error

    def each_model(self) -> list["TuneloopConfig"]:
        """Every configured model's own configuration, in the order of ``models:``."""
        return [self.for_model(name) for name in self.model_names]

    def for_dag(self, dag_id: str) -> "TuneloopConfig":
        """The configuration of the model a DAG belongs to: the model whose name ends the DAG id
        (``finetune_weekly_support`` -> ``support``; the longest such name wins), or, with one model, that one."""
        if not self.models:
            return self
        owners = [name for name in self.model_names if dag_id.endswith(f"_{name}")]
        if not owners and DEFAULT_MODEL in self.model_names:
            owners = [DEFAULT_MODEL]  # a model named 'default' keeps today's DAG ids
        if not owners:
            raise ConfigError(f"DAG {dag_id!r} belongs to none of the configured models "
                              f"({', '.join(self.model_names)}): a model's DAG ids end with _<model name>")
        return self.for_model(max(owners, key=len))

    @property
    def model_key(self) -> str:
        """The store's key for this configuration's model (``name``)."""
        return self.name

    def dag_id(self, base: str) -> str:
        """``finetune_weekly`` for a one-model installation (today's ids), ``finetune_weekly_<name>`` for each
        model of several."""
        return base if self.name == DEFAULT_MODEL else f"{base}_{self.name}"

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.home / 'store.db'}"

    @property
    def resolved_storage_root(self):
        """A local ``Path`` or, for ``gs://...``, Airflow's ``ObjectStoragePath`` (see :mod:`tuneloop.storage`)."""
        from tuneloop.storage import storage_root

        return storage_root(self.storage_root, self.home / "storage", self.storage_conn_id)

    @property
    def resolved_inbox(self):
        """A local ``Path`` or, for ``gs://...``, Airflow's ``ObjectStoragePath`` with ``storage_conn_id``; each
        model of several has its own folder in it (``<inbox>/<name>``): a batch belongs to one model's task."""
        from tuneloop.storage import storage_root

        root = storage_root(self.inbox, self.home / "inbox", self.storage_conn_id)
        return root if self.name == DEFAULT_MODEL else root / self.name

    @property
    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def registry_uri(self) -> str:
        return self.mlflow.registry_uri or self.tracking_uri

    @property
    def artifact_location(self) -> str:
        return self.mlflow.artifact_location or (self.home / "mlartifacts").as_uri()


def load_model_config(dag_id: str) -> TuneloopConfig:
    """The configuration of the model whose DAG ``dag_id`` is (operators call this in ``execute``)."""
    return load_config().for_dag(dag_id)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _default_home() -> Path:
    env = os.environ.get("TUNELOOP_HOME")
    if env:
        return Path(env).expanduser().resolve()
    if DEFAULT_CONFIG_FILE.exists():  # running from a checkout: keep state beside it
        return REPO_ROOT / ".tuneloop"
    return Path.home() / ".tuneloop"


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None) -> TuneloopConfig:
    """Read the YAML file (if any), apply ``TUNELOOP__`` overrides, validate; raise ConfigError naming the field."""
    env = dict(os.environ if env is None else env)
    file = Path(path or env.get("TUNELOOP_CONFIG") or DEFAULT_CONFIG_FILE)
    data: dict[str, Any] = {}
    if file.exists():
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{file}: not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: top level must be a mapping, got {type(data).__name__}")
    elif path is not None or "TUNELOOP_CONFIG" in env:
        raise ConfigError(f"config file {file} does not exist")
    if env.get("TUNELOOP_HOME"):
        data["home"] = env["TUNELOOP_HOME"]
    _apply_env_overrides(data, env)
    try:
        return TuneloopConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, file)) from e


def _apply_env_overrides(data: dict[str, Any], env: dict[str, str]) -> None:
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        parts = key[len(ENV_PREFIX):].lower().split("__")
        target = data
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{key}: {'.'.join(parts[:-1])} is not a section")
        target[parts[-1]] = _parse_env_value(raw)


def _parse_env_value(raw: str) -> Any:
    """Environment values are YAML scalars or JSON lists: ``true``, ``0.01``, ``["q_proj"]``; anything YAML cannot
    read (a cron such as ``*/10 * * * *``) is the string itself."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _describe(error: ValidationError, file: Path) -> str:
    lines = [f"invalid tuneloop configuration ({file} and TUNELOOP__ variables):"]
    lines += [f"  {line}" for line in _field_errors(error)]
    return "\n".join(lines)


def _field_errors(error: ValidationError) -> list[str]:
    """One line per error: the field's dotted path, the reason and the value given."""
    lines = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if not item["loc"]:  # a rule over the whole configuration: its message names the fields, the input is all
            lines.append(message)
            continue
        field = ".".join(str(p) for p in item["loc"])
        lines.append(f"{field}: {message} (got {item.get('input')!r})")
    return lines
