"""A stand-in for the OpenAI API on loopback, for the real ``openai`` client: chat completions, files, supervised
fine-tuning jobs and models, all on one base URL, since the product evaluates a fine-tuned model through chat
completions on the endpoint that trained it.

Chat. ``POST /v1/chat/completions`` answers a ``chat.completion`` (usage included) whose content is a rule the test
sets: ``reply``, a function from the request body to the message content (e.g. a judge that prefers the reply equal
to the reference, one that always answers ``[[A]]``, garbage, or one that answers by ``body["model"]``). Failures are
programmed too: :meth:`fail_next` answers the next requests with an HTTP error (with ``retry-after-ms``, so the
client's retries are quick), :attr:`fail_status` fails every request. A deleted fine-tuned model, and with
``strict_models=True`` any model the stand-in does not list, is a 404 ``model_not_found``.

Files. Upload (multipart ``file`` + ``purpose``), retrieve, list, content, delete; every upload is kept in
``uploads`` as (FileObject, content).

Fine-tuning. Create, retrieve, list (``after``, ``limit``, ``metadata[k]=v``), cancel, events, checkpoints. A job's
state follows the clock (``clock``, ``time.time`` unless a test drives its own) from its creation, using the
durations set when it was created: ``validating_s`` in ``validating_files``, where the training file is checked as
the service does (every line JSON with a ``messages`` list holding an assistant message, at least 10 examples; a bad
file fails the job with ``invalid_training_file``, creation itself succeeds), ``queued_s`` queued, ``running_s``
running (one metrics event a step), then succeeded: model ``ft:{base}:tuneloop-standin:{suffix}:{id}``,
``trained_tokens``, a result file (the base64 of the step-metrics CSV, as OpenAI serves it), one checkpoint an
epoch. The state is worked out whenever the API is called, so no thread ticks; these attributes are read then too:

* ``refuse_jobs = (status, code, message)``: job creation answers that error; :data:`WIND_DOWN` is OpenAI's
  wind-down of self-serve fine-tuning as the stand-in guesses it (a 403, the client's PermissionDeniedError).
* ``fail_running = (code, message)``: a running job fails halfway through its steps with ``error`` = that.
* ``hold_running = True``: running jobs stay running until it is set back.

Token counts are the stand-in's own (words + 4 a message + 3 an example), not tiktoken's.

Models. ``GET /v1/models`` lists ``base_models``, ``standin-judge`` and the fine-tuned models not deleted;
``DELETE`` deletes a fine-tuned model (recorded in ``deleted_models``); a base model cannot be deleted (403).

Authentication. With ``api_key`` set, a request without ``Authorization: Bearer <api_key>`` is a 401
``invalid_api_key``. Every request is recorded in ``calls`` (method, path with query, headers lower-cased, body), so
tests assert where a secret did and did not travel; chat bodies are also in ``requests`` and their headers in
``headers``.

    with OpenAIStandIn(reply=lambda body: "[[A]]") as api:
        client = OpenAI(api_key="k", base_url=api.base_url)
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import math
import re
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote

Reply = Callable[[dict[str, Any]], str]
Response = tuple[int, dict[str, Any] | bytes]

DEFAULT_BASE_MODELS = frozenset({"gpt-4.1-mini-2025-04-14", "gpt-4.1-2025-04-14", "gpt-4o-mini-2024-07-18"})
JUDGE_MODEL = "standin-judge"
ORGANIZATION = "org-standin"
WIND_DOWN = (403, "fine_tuning_unavailable", "Fine-tuning job creation is no longer available for this organization.")
MIN_EXAMPLES = 10
AUTO = {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 2.0}  # what "auto" resolves to here
PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
VALID_EVERY = 10  # steps between validation metrics in the result file, when there is a validation file


def last_user_message(body: dict[str, Any]) -> str:
    """The text of the last user message of a chat request."""
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


@dataclass(frozen=True)
class Call:
    """One request as it arrived: ``target`` is the path with its query string, ``headers`` are lower-cased."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes


class OpenAIStandIn:
    """The API's behaviour and what it saw; :meth:`start` serves it on ``127.0.0.1`` from a thread.

    ``reply``: request body -> assistant content (settable at any time). ``requests``: every chat completion body,
    in arrival order, programmed failures included; ``headers``: their headers; ``failures_served``: programmed
    error responses sent. ``fail_status``: when set, every chat request fails with it. ``uploads``, ``jobs_created``,
    ``job_requests`` (every creation body, refused ones too), :attr:`jobs`, ``deleted_models`` and ``calls`` record
    the rest.
    """

    def __init__(self, reply: Reply | None = None, *, retry_after_ms: int = 5, api_key: str | None = None,
                 base_models: frozenset[str] | set[str] = DEFAULT_BASE_MODELS, strict_models: bool = False,
                 validating_s: float = 0.3, queued_s: float = 0.3, running_s: float = 1.5,
                 clock: Callable[[], float] = time.time) -> None:
        self.reply: Reply = reply or (lambda body: "[[C]]")
        self.retry_after_ms = retry_after_ms
        self.fail_status: int | None = None
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.failures_served = 0
        self.api_key = api_key
        self.calls: list[Call] = []
        self.base_models = set(base_models)
        self.strict_models = strict_models
        self.deleted_models: list[str] = []
        self.uploads: list[tuple[dict[str, Any], bytes]] = []
        self.validating_s, self.queued_s, self.running_s = validating_s, queued_s, running_s
        self.refuse_jobs: tuple[int, str, str] | None = None
        self.fail_running: tuple[str, str] | None = None
        self.hold_running = False
        self.jobs_created = 0
        self.job_requests: list[dict[str, Any]] = []
        self.clock = clock
        self._fail_next: list[int] = []
        self._files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None

    # --- running the server ------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """What the client's ``base_url`` is set to (``.../v1``)."""
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> OpenAIStandIn:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> OpenAIStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- programming it and reading what it did ----------------------------------------------------------------

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` chat requests (from any thread) with HTTP ``status``."""
        with self._lock:
            self._fail_next.extend([status] * count)

    @property
    def jobs(self) -> list[dict[str, Any]]:
        """Every job created, as the API would serve it now, oldest first."""
        with self._lock:
            self._advance_all(self.clock())
            return [copy.deepcopy(job.info) for job in self._jobs.values()]

    # --- dispatch ----------------------------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        """Answer one request: the HTTP handler's only way in."""
        path, _, query = target.partition("?")
        with self._lock:
            self.calls.append(Call(method, target, headers, body))
            if not self._authorized(headers):
                return 401, _unauthorized(headers)
        if method == "POST" and path == "/v1/chat/completions":
            return self._chat(body, headers)  # it locks only around its records: the test's reply rule may be slow
        for verb, pattern, name in _ROUTES:
            match = pattern.fullmatch(path)
            if match and verb == method:
                ids = {key: unquote(value) for key, value in match.groupdict().items()}
                return self._locked(name, _Request(dict(parse_qsl(query)), headers, body), ids)
        return 404, _error(404, f"unknown route {method} {target}")

    def _locked(self, name: str, request: _Request, ids: dict[str, str]) -> Response:
        with self._lock:
            now = self.clock()
            self._advance_all(now)
            try:
                return getattr(self, name)(request, now, **ids)
            except _Refused as refusal:
                return refusal.status, refusal.body

    def _authorized(self, headers: dict[str, str]) -> bool:
        return self.api_key is None or headers.get("authorization") == f"Bearer {self.api_key}"

    # --- chat --------------------------------------------------------------------------------------------------

    def _chat(self, raw: bytes, headers: dict[str, str]) -> Response:
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError as error:
            return 400, _error(400, f"the body is not JSON: {error}")
        return self.chat_completion(body, headers)

    def chat_completion(self, body: dict[str, Any], headers: dict[str, str]) -> Response:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            status = self._fail_next.pop(0) if self._fail_next else self.fail_status
            if status is not None:
                self.failures_served += 1
            number = next(self._ids)
            self._advance_all(self.clock())
            unavailable = self._unavailable(body.get("model"))
        if status is not None:
            return status, _error(status, f"the stand-in was told to fail this request with {status}")
        missing = [name for name in ("model", "messages") if name not in body]
        if missing:
            return 400, _error(400, f"missing required parameter: {missing[0]!r}", param=missing[0])
        if unavailable:
            return 404, _error(404, f"The model `{body['model']}` does not exist or you do not have access to it.",
                               code="model_not_found")
        content = self.reply(body)
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        completion_tokens = len(content.split())
        return 200, {
            "id": f"chatcmpl-standin-{number}", "object": "chat.completion", "created": int(time.time()),
            "model": body["model"], "system_fingerprint": "fp_standin",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": content, "refusal": None}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    def _fine_tunable(self, model: Any) -> bool:
        """A base model, or one fine-tuned here and not deleted (OpenAI fine-tunes a fine-tuned model further)."""
        if model in self.base_models:
            return True
        made = any(job.info.get("fine_tuned_model") == model for job in self._jobs.values())
        return made and model not in self.deleted_models

    def _unavailable(self, model: Any) -> bool:
        if model in self.deleted_models:
            return True
        return self.strict_models and model is not None and model not in self._models()

    # --- models ------------------------------------------------------------------------------------------------

    def _models(self) -> dict[str, dict[str, Any]]:
        """Model id -> Model object, for every model the API lists."""
        models = {name: _model(name, 1_700_000_000, "system") for name in sorted(self.base_models)}
        models[JUDGE_MODEL] = _model(JUDGE_MODEL, 0, "tuneloop-tests")
        for job in self._jobs.values():
            name = job.info["fine_tuned_model"]
            if name and name not in self.deleted_models:
                models[name] = _model(name, job.info["finished_at"], ORGANIZATION)
        return models

    def _list_models(self, request: _Request, now: float) -> Response:
        return 200, {"object": "list", "data": list(self._models().values())}

    def _retrieve_model(self, request: _Request, now: float, model: str) -> Response:
        return 200, self._model(model)

    def _delete_model(self, request: _Request, now: float, model: str) -> Response:
        self._model(model)
        if model in self.base_models or model == JUDGE_MODEL:
            raise _Refused(403, f"You do not have permission to delete the base model {model}; only fine-tuned "
                                "models can be deleted.", param="model")
        self.deleted_models.append(model)
        return 200, {"id": model, "object": "model", "deleted": True}

    def _model(self, model: str) -> dict[str, Any]:
        found = self._models().get(model)
        if found is None:
            raise _Refused(404, f"The model '{model}' does not exist", param="model", code="model_not_found")
        return found

    # --- files -------------------------------------------------------------------------------------------------

    def _upload(self, request: _Request, now: float) -> Response:
        fields = _multipart(request.headers.get("content-type", ""), request.body)
        for name in ("file", "purpose"):
            if name not in fields:
                raise _Refused(400, f"Missing required parameter: '{name}'.", param=name)
        filename, content = fields["file"]
        purpose = fields["purpose"][1].decode()
        if purpose not in PURPOSES:
            raise _Refused(400, f"'{purpose}' is not one of {sorted(PURPOSES)} - 'purpose'", param="purpose")
        if purpose == "fine-tune" and not (filename or "").endswith(".jsonl"):
            raise _Refused(400, "Invalid file format for Fine-Tuning API. Must be .jsonl", param="file")
        info = self._store(filename or "upload", purpose, content, now)
        self.uploads.append((copy.deepcopy(info), content))
        return 200, info

    def _store(self, filename: str, purpose: str, content: bytes, now: float) -> dict[str, Any]:
        info = {"id": f"file-standin{next(self._ids):06d}", "object": "file", "bytes": len(content),
                "created_at": int(now), "filename": filename, "purpose": purpose, "status": "processed",
                "expires_at": None, "status_details": None}
        self._files[info["id"]] = (info, content)
        return info

    def _file(self, file_id: str) -> tuple[dict[str, Any], bytes]:
        if file_id not in self._files:
            raise _Refused(404, f"No such File object: {file_id}", param="id")
        return self._files[file_id]

    def _retrieve_file(self, request: _Request, now: float, file_id: str) -> Response:
        return 200, self._file(file_id)[0]

    def _file_content(self, request: _Request, now: float, file_id: str) -> Response:
        return 200, self._file(file_id)[1]

    def _delete_file(self, request: _Request, now: float, file_id: str) -> Response:
        self._file(file_id)
        del self._files[file_id]
        return 200, {"id": file_id, "object": "file", "deleted": True}

    def _list_files(self, request: _Request, now: float) -> Response:
        files = [info for info, _ in self._files.values()
                 if request.query.get("purpose") in (None, info["purpose"])]
        if request.query.get("order", "desc") == "desc":
            files.reverse()
        return 200, _page(files, request.query, 10_000)

    # --- fine-tuning jobs --------------------------------------------------------------------------------------

    def _create_job(self, request: _Request, now: float) -> Response:
        body = _json_body(request.body)
        self.job_requests.append(body)
        if self.refuse_jobs is not None:
            status, code, message = self.refuse_jobs
            raise _Refused(status, message, code=code)
        self._check_job_request(body)
        job = self._new_job(body, _hyperparameters(body), now)
        self._jobs[job.info["id"]] = job
        self.jobs_created += 1
        return 200, copy.deepcopy(job.info)

    def _check_job_request(self, body: dict[str, Any]) -> None:
        """Refuse what the service refuses at creation (a bad file *content* only fails the job later)."""
        for name in ("model", "training_file"):
            if not body.get(name):
                raise _Refused(400, f"Missing required parameter: '{name}'.", param=name)
        if not self._fine_tunable(body["model"]):
            raise _Refused(400, f"Model {body['model']} is not available for fine-tuning or does not exist.",
                           param="model", code="model_not_available")
        for name in ("training_file", "validation_file"):
            if body.get(name):
                self._fine_tune_file(body[name], name)
        suffix = body.get("suffix") or ""
        if len(suffix) > 64:
            raise _Refused(400, f"Invalid 'suffix': string too long. Expected a string with maximum length 64, but "
                                f"got a string with length {len(suffix)} instead.", param="suffix",
                           code="string_above_max_length")
        metadata = body.get("metadata") or {}
        if len(metadata) > 16:
            raise _Refused(400, f"Invalid 'metadata': too many properties. Expected an object with at most 16 "
                                f"properties, but got an object with {len(metadata)} properties instead.",
                           param="metadata", code="object_above_max_properties")
        method = (body.get("method") or {}).get("type", "supervised")
        if method != "supervised":
            raise _Refused(400, f"The stand-in only runs method type 'supervised', not {method!r}.",
                           param="method.type")

    def _fine_tune_file(self, file_id: str, param: str) -> None:
        if file_id not in self._files:
            raise _Refused(400, f"invalid {param}: {file_id}", param=param)
        purpose = self._files[file_id][0]["purpose"]
        if purpose != "fine-tune":
            raise _Refused(400, f"File {file_id} has purpose '{purpose}'; files for fine-tuning must be uploaded "
                                "with purpose 'fine-tune'.", param=param)

    def _new_job(self, body: dict[str, Any], requested: dict[str, Any], now: float) -> _Job:
        number = next(self._ids)
        job_id = f"ftjob-standin{number:06d}"
        training = _Dataset.read(self._files[body["training_file"]][1], MIN_EXAMPLES)
        problem = _invalid_file("training_file", training.problem)
        if problem is None and body.get("validation_file"):
            validation = _Dataset.read(self._files[body["validation_file"]][1], 1)
            problem = _invalid_file("validation_file", validation.problem)
        seed = body.get("seed")
        info = {
            "id": job_id, "object": "fine_tuning.job", "created_at": int(now), "error": None,
            "fine_tuned_model": None, "finished_at": None, "hyperparameters": dict(requested),
            "model": body["model"], "organization_id": ORGANIZATION, "result_files": [],
            "seed": zlib.crc32(job_id.encode()) & 0x7FFFFFFF if seed is None else seed,
            "status": "validating_files", "trained_tokens": None, "training_file": body["training_file"],
            "validation_file": body.get("validation_file"), "estimated_finish": None, "integrations": [],
            "metadata": body.get("metadata"), "user_provided_suffix": body.get("suffix"),
            "method": {"type": "supervised", "supervised": {"hyperparameters": dict(requested)}},
        }
        resolved = {name: AUTO[name] if value == "auto" else value for name, value in requested.items()}
        job = _Job(number, info, (self.validating_s, self.queued_s, self.running_s), training.examples,
                   training.tokens, problem, resolved, since=now, observed=now)
        job.log(now, f"Created fine-tuning job: {job_id}")
        job.log(now, f"Validating training file: {body['training_file']}")
        return job

    def _job(self, job_id: str) -> _Job:
        if job_id not in self._jobs:
            raise _Refused(404, f"Could not find fine-tuning job: {job_id}", param="fine_tuning_job_id",
                           code="fine_tuning_job_not_found")
        return self._jobs[job_id]

    def _retrieve_job(self, request: _Request, now: float, job_id: str) -> Response:
        return 200, copy.deepcopy(self._job(job_id).info)

    def _list_jobs(self, request: _Request, now: float) -> Response:
        wanted = {key[len("metadata["):-1]: value for key, value in request.query.items()
                  if key.startswith("metadata[") and key.endswith("]")}
        jobs = [copy.deepcopy(job.info) for job in reversed(self._jobs.values())
                if all((job.info["metadata"] or {}).get(key) == value for key, value in wanted.items())]
        return 200, _page(jobs, request.query, 20)

    def _cancel_job(self, request: _Request, now: float, job_id: str) -> Response:
        job = self._job(job_id)
        if job.status in TERMINAL:
            raise _Refused(400, f"Job {job_id} has already {job.status} and cannot be cancelled.", param="job_id")
        job.end(now, "cancelled", "Fine-tuning job cancelled")
        return 200, copy.deepcopy(job.info)

    def _list_events(self, request: _Request, now: float, job_id: str) -> Response:
        return 200, _page(self._job(job_id).event_list(), request.query, 20)

    def _list_checkpoints(self, request: _Request, now: float, job_id: str) -> Response:
        job = self._job(job_id)
        checkpoints = job.checkpoints() if job.status == "succeeded" else []
        return 200, _page(checkpoints, request.query, 10)

    # --- the clock ---------------------------------------------------------------------------------------------

    def _advance_all(self, now: float) -> None:
        for job in self._jobs.values():
            self._advance(job, now)

    def _advance(self, job: _Job, now: float) -> None:
        """Make every transition due by ``now``, each dated when it fell due, but never before the job was last
        brought up to date (every call does that): a client must not learn afterwards that what it saw was already
        over (a job held, or one told to fail after it had passed halfway)."""
        while job.status not in TERMINAL:
            transition = self._next_transition(job)
            if transition is None:
                break
            due, make = transition
            at = max(due, job.observed)
            if at > now:
                break
            make(job, at)
        if job.status == "running":
            job.info["estimated_finish"] = math.ceil(max(job.since + job.durations[2], now))
        job.observed = now

    def _next_transition(self, job: _Job) -> tuple[float, Callable[[_Job, float], None]] | None:
        validating_s, queued_s, running_s = job.durations
        if job.status == "validating_files":
            return job.since + validating_s, self._validated
        if job.status == "queued":
            return job.since + queued_s, _start
        if self.fail_running is not None:
            return job.since + running_s / 2, self._fail_programmed
        if self.hold_running:
            return None
        return job.since + running_s, self._succeed

    def _validated(self, job: _Job, at: float) -> None:
        if job.problem is not None:
            job.fail(at, job.problem)
        else:
            job.move(at, "queued")
            job.log(at, "Files validated, moving job to queued state")

    def _fail_programmed(self, job: _Job, at: float) -> None:
        assert self.fail_running is not None
        code, message = self.fail_running
        job.fail(at, {"code": code, "message": message, "param": None})

    def _succeed(self, job: _Job, at: float) -> None:
        base, suffix = job.info["model"], job.info["user_provided_suffix"] or ""
        result = self._store("step_metrics.csv", "fine-tune-results", base64.b64encode(job.result_csv()), at)
        job.info.update(fine_tuned_model=f"ft:{base}:tuneloop-standin:{suffix}:sti{job.number:05d}",
                        trained_tokens=job.resolved["n_epochs"] * job.tokens, result_files=[result["id"]])
        job.log(at, f"New fine-tuned model created: {job.info['fine_tuned_model']}")
        job.end(at, "succeeded", "The job has successfully completed")


def _start(job: _Job, at: float) -> None:
    job.move(at, "running")
    job.running_since = at
    job.info["hyperparameters"] = dict(job.resolved)
    job.info["method"]["supervised"]["hyperparameters"] = dict(job.resolved)
    job.log(at, "Fine-tuning job started")


@dataclass
class _Request:
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


class _Refused(Exception):
    """An error answer, raised from deep inside a route."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.body = status, _error(status, message, param=param, code=code)


@dataclass
class _Dataset:
    examples: int
    tokens: int  # billable tokens of one pass over it
    problem: str | None  # the first rule a line breaks, worded as the service does

    @classmethod
    def read(cls, content: bytes, minimum: int) -> _Dataset:
        examples, tokens = 0, 0
        for number, line in enumerate(content.decode("utf-8", "replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                messages = _messages(line, number)
            except ValueError as problem:
                return cls(examples, tokens, str(problem))
            examples += 1
            tokens += 3 + sum(4 + len(_text(m.get("content")).split()) for m in messages)
        if examples < minimum:
            return cls(examples, tokens, f"Training file has {examples} example(s), but must have at least "
                                         f"{minimum} examples.")
        return cls(examples, tokens, None)


def _messages(line: str, number: int) -> list[dict[str, Any]]:
    """The messages of one example; ValueError naming the line and the rule it breaks."""
    try:
        example = json.loads(line)
    except json.JSONDecodeError:
        raise ValueError(f"Invalid file format. Line {number} is not valid JSON.") from None
    messages = example.get("messages") if isinstance(example, dict) else None
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ValueError(f"Invalid file format. Line {number}, key \"messages\": expected a list of message objects.")
    if not any(m.get("role") == "assistant" for m in messages):
        raise ValueError(f"Invalid file format. Line {number}: no message with role \"assistant\"; every example "
                         "needs one.")
    return messages


def _invalid_file(param: str, problem: str | None) -> dict[str, Any] | None:
    if problem is None:
        return None
    return {"code": f"invalid_{param}", "param": param,
            "message": f"The job failed due to an invalid {param.replace('_', ' ')}. {problem}"}


@dataclass
class _Job:
    number: int
    info: dict[str, Any]  # the FineTuningJob as served
    durations: tuple[float, float, float]  # validating, queued, running, as set when it was created
    examples: int
    tokens: int
    problem: dict[str, Any] | None  # the error the file check found: the job fails with it when validation ends
    resolved: dict[str, Any]  # the hyperparameters, "auto" resolved
    since: float  # when the current status began
    observed: float  # when the job was last brought up to date
    running_since: float | None = None
    ended: float | None = None
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (time, level, message)

    @property
    def status(self) -> str:
        return self.info["status"]

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.examples / self.resolved["batch_size"])

    @property
    def total_steps(self) -> int:
        return self.resolved["n_epochs"] * self.steps_per_epoch

    def log(self, at: float, message: str, level: str = "info") -> None:
        self.events.append((at, level, message))

    def move(self, at: float, status: str) -> None:
        self.info["status"], self.since = status, at

    def end(self, at: float, status: str, message: str, level: str = "info") -> None:
        self.move(at, status)
        self.ended = at
        self.info.update(estimated_finish=None, finished_at=None if status == "cancelled" else int(at))
        self.log(at, message, level)

    def fail(self, at: float, error: dict[str, Any]) -> None:
        self.info["error"] = error
        self.end(at, "failed", error["message"], "error")

    def step_time(self, step: int) -> float:
        assert self.running_since is not None
        return self.running_since + self.durations[2] * (step / self.total_steps)

    def steps_done(self) -> list[int]:
        """The steps finished by the time the job was last brought up to date."""
        if self.running_since is None:
            return []
        until = self.observed if self.ended is None else self.ended
        return [step for step in range(1, self.total_steps + 1) if self.step_time(step) <= until]

    def event_list(self) -> list[dict[str, Any]]:
        """Newest first, as the API lists them: the messages logged and one metrics event a finished step."""
        prefix = f"ftevent-standin{self.number:06d}"
        entries = [((at, 1, index), _event(f"{prefix}m{index:04d}", at, level, message, "message", {}))
                   for index, (at, level, message) in enumerate(self.events)]
        for step in self.steps_done():
            loss, accuracy = _curve(step, self.total_steps)
            data = {"step": step, "total_steps": self.total_steps, "train_loss": loss,
                    "train_mean_token_accuracy": accuracy}
            message = f"Step {step}/{self.total_steps}: training loss={loss:.2f}"
            entries.append(((self.step_time(step), 0, step),
                            _event(f"{prefix}s{step:06d}", self.step_time(step), "info", message, "metrics", data)))
        return [event for _, event in sorted(entries, key=lambda entry: entry[0], reverse=True)]

    def checkpoints(self) -> list[dict[str, Any]]:
        """One an epoch, newest first."""
        steps = [epoch * self.steps_per_epoch for epoch in range(self.resolved["n_epochs"], 0, -1)]
        return [{"id": f"ftckpt_standin{self.number:06d}s{step:06d}", "object": "fine_tuning.job.checkpoint",
                 "created_at": int(self.step_time(step)), "fine_tuning_job_id": self.info["id"], "step_number": step,
                 "fine_tuned_model_checkpoint": f"{self.info['fine_tuned_model']}:ckpt-step-{step}",
                 "metrics": self._checkpoint_metrics(step)} for step in steps]

    def _checkpoint_metrics(self, step: int) -> dict[str, Any]:
        loss, accuracy = _curve(step, self.total_steps)
        valid = self.info["validation_file"] is not None
        valid_loss, valid_accuracy = (round(loss + 0.05, 4), round(accuracy - 0.02, 4)) if valid else (None, None)
        return {"step": step, "train_loss": loss, "train_mean_token_accuracy": accuracy, "valid_loss": valid_loss,
                "valid_mean_token_accuracy": valid_accuracy, "full_valid_loss": valid_loss,
                "full_valid_mean_token_accuracy": valid_accuracy}

    def result_csv(self) -> bytes:
        """The step metrics, validation columns filled every VALID_EVERY steps and at the end when there is a
        validation file, empty otherwise."""
        rows = ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"]
        for step in range(1, self.total_steps + 1):
            loss, accuracy = _curve(step, self.total_steps)
            validated = self.info["validation_file"] and (step % VALID_EVERY == 0 or step == self.total_steps)
            valid = f"{loss + 0.05:.5f},{accuracy - 0.02:.5f}" if validated else ","
            rows.append(f"{step},{loss:.5f},{accuracy:.5f},{valid}")
        return ("\n".join(rows) + "\n").encode()


def _curve(step: int, total: int) -> tuple[float, float]:
    """The training loss and token accuracy at ``step``: a smooth decay, the same for every job of that length."""
    loss = 0.2 + 1.6 * 0.5 ** (8 * step / total)
    return round(loss, 4), round(1 - loss / 2.5, 4)


def _event(event_id: str, at: float, level: str, message: str, kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"id": event_id, "object": "fine_tuning.job.event", "created_at": int(at), "level": level,
            "message": message, "type": kind, "data": data}


def _hyperparameters(body: dict[str, Any]) -> dict[str, Any]:
    """The supervised hyperparameters asked for, "auto" where not given; ``method`` wins over the deprecated
    top-level ``hyperparameters``."""
    method = body.get("method")
    given = ((method.get("supervised") or {}).get("hyperparameters") if method else body.get("hyperparameters"))
    requested = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"} | (given or {})
    for name, highest in (("n_epochs", 50), ("batch_size", 256)):
        value = requested[name]
        if value != "auto" and not (isinstance(value, int) and 1 <= value <= highest):
            raise _Refused(400, f"Invalid '{name}': expected 'auto' or an integer from 1 to {highest}, got {value!r}.",
                           param=f"hyperparameters.{name}")
    rate = requested["learning_rate_multiplier"]
    if rate != "auto" and not (isinstance(rate, (int, float)) and rate > 0):
        raise _Refused(400, f"Invalid 'learning_rate_multiplier': expected 'auto' or a positive number, got {rate!r}.",
                       param="hyperparameters.learning_rate_multiplier")
    return requested


def _model(name: str, created: int, owned_by: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}


def _page(items: list[dict[str, Any]], query: dict[str, str], default_limit: int) -> dict[str, Any]:
    """A cursor page: the items after the one named by ``after``, at most ``limit`` of them, and ``has_more``."""
    ids = [item["id"] for item in items]
    after = query.get("after")
    start = 0 if after is None else ids.index(after) + 1 if after in ids else len(items)
    end = start + int(query.get("limit", default_limit))
    return {"object": "list", "data": items[start:end], "has_more": end < len(items)}


def _json_body(raw: bytes) -> dict[str, Any]:
    try:
        return json.loads(raw or b"{}")
    except json.JSONDecodeError as error:
        raise _Refused(400, f"the body is not JSON: {error}") from None


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart/form-data body: name -> (filename, value)."""
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    if boundary is None:
        return {}
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in body.split(b"--" + boundary.group(1).encode())[1:-1]:
        head, _, value = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        name = re.search(r'\bname="([^"]*)"', head.decode("utf-8", "replace"))
        filename = re.search(r'\bfilename="([^"]*)"', head.decode("utf-8", "replace"))
        if name:
            fields[name.group(1)] = (filename and filename.group(1), value.removesuffix(b"\r\n"))
    return fields


def _text(content: Any) -> str:
    return content if isinstance(content, str) else json.dumps(content) if content else ""


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _unauthorized(headers: dict[str, str]) -> dict[str, Any]:
    """OpenAI's 401; unlike the service, it never echoes any part of a wrong key back."""
    if "authorization" not in headers:
        message = ("You didn't provide an API key. You need to provide your API key in an Authorization header "
                   "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
    else:
        message = "Incorrect API key provided."
    return _error(401, message, code="invalid_api_key")


_ROUTES = [(verb, re.compile(pattern), name) for verb, pattern, name in [
    ("GET", r"/v1/models", "_list_models"),
    ("GET", r"/v1/models/(?P<model>[^/]+)", "_retrieve_model"),
    ("DELETE", r"/v1/models/(?P<model>[^/]+)", "_delete_model"),
    ("POST", r"/v1/files", "_upload"),
    ("GET", r"/v1/files", "_list_files"),
    ("GET", r"/v1/files/(?P<file_id>[^/]+)", "_retrieve_file"),
    ("GET", r"/v1/files/(?P<file_id>[^/]+)/content", "_file_content"),
    ("DELETE", r"/v1/files/(?P<file_id>[^/]+)", "_delete_file"),
    ("POST", r"/v1/fine_tuning/jobs", "_create_job"),
    ("GET", r"/v1/fine_tuning/jobs", "_list_jobs"),
    ("GET", r"/v1/fine_tuning/jobs/(?P<job_id>[^/]+)", "_retrieve_job"),
    ("POST", r"/v1/fine_tuning/jobs/(?P<job_id>[^/]+)/cancel", "_cancel_job"),
    ("GET", r"/v1/fine_tuning/jobs/(?P<job_id>[^/]+)/events", "_list_events"),
    ("GET", r"/v1/fine_tuning/jobs/(?P<job_id>[^/]+)/checkpoints", "_list_checkpoints"),
]]


def _handler(api: OpenAIStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms wait for a delayed ACK

        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def do_DELETE(self) -> None:
            self._answer()

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            self._send(*api.handle(self.command, self.path, headers, body))

        def _send(self, status: int, payload: dict[str, Any] | bytes) -> None:
            raw = isinstance(payload, bytes)
            data = payload if raw else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/octet-stream" if raw else "application/json")
            self.send_header("content-length", str(len(data)))
            if status >= 500 or status == 429:
                self.send_header("retry-after-ms", str(api.retry_after_ms))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # the tests read .calls instead
            pass

    return Handler


def section(prompt: str, name: str) -> str:
    match = re.search(rf"\[The Start of {re.escape(name)}\]\n(.*?)\n\[The End of {re.escape(name)}\]", prompt, re.S)
    assert match, f"no {name} section in the judge prompt"
    return match.group(1)


def prefers_the_reference(body: dict) -> str:
    """A consistent judge: the reply equal to the reference answer wins; neither or both: a tie."""
    prompt = last_user_message(body)
    reference = section(prompt, "Reference Answer")
    a, b = section(prompt, "Assistant A's Reply"), section(prompt, "Assistant B's Reply")
    verdict = "A" if a == reference and b != reference else "B" if b == reference and a != reference else "C"
    return f"Comparing both replies with the reference answer.\n[[{verdict}]]"
