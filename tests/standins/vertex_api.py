"""A stand-in for the Vertex AI generative-AI API on loopback, for the real ``google-genai`` client with
``vertexai=True``: Google's OAuth2 token endpoint, supervised tuning jobs of Gemini models and ``generateContent`` on
base models and tuned endpoints, all on one base URL, since the product evaluates a tuned model on the endpoint the
job deployed it to. Point the client at it with project and location set; it then sends every request to
``{base_url}v1beta1/projects/{project}/locations/{location}/...``::

    with VertexStandIn(reply=lambda body, model: "[[A]]", storage_emulator=gcs_emulator) as api:
        creds = service_account.Credentials.from_service_account_info(api.service_account_info(), scopes=[SCOPE])
        client = genai.Client(vertexai=True, project="acme-ml", location="us-central1", credentials=creds,
                              http_options=HttpOptions(base_url=api.base_url))

Authentication, as Google does it. :meth:`service_account_info` issues a service account: a key file dict (fresh
RSA key) whose ``token_uri`` is this stand-in's ``POST /token``. That endpoint takes the JWT-bearer grant google-auth
sends and checks the assertion as Google does: RS256 signature by the account's key, ``iss`` the account,
``aud`` Google's token URI (google-auth always puts ``https://oauth2.googleapis.com/token`` there, whatever the
key file's ``token_uri``), a scope, ``iat``/``exp`` at most an hour apart around the wall clock (google-auth signs
with it, not with :attr:`clock`); a bad one is a 400 ``invalid_grant``. Every API request needs ``Authorization:
Bearer <a token issued here>`` (else 401 ``UNAUTHENTICATED``), the cloud-platform scope (else 403) and a URL in
the account's own project (else 403 ``PERMISSION_DENIED``: the stand-in grants an account roles in its project
only). Issued tokens never expire. Every error has Google's shape ``{"error": {"code", "message", "status"}}``.

Tuning jobs (create, get, list with ``labels.KEY=VALUE`` / ``state=STATE`` filters joined by `` AND `` and
``pageSize``/``pageToken`` paging, newest first; cancel). Creation checks the body (a base model among
``base_models``, or ``preTunedModel.tunedModelName`` naming a model an earlier job tuned: continuous tuning, whose
tuned model knows both jobs' examples; a ``gs://`` training dataset, Google's label rules, the hyperparameters the
stand-in models: ``epochCount``, ``learningRateMultiplier``, ``adapterSize``; any other field is refused) and
answers 400 ``INVALID_ARGUMENT`` naming the field. A job's state follows the clock (``clock``, ``time.time`` unless
a test drives its own) from its creation: ``pending_s`` in ``JOB_STATE_PENDING``; when that ends the datasets are read
from the GCS emulator and checked as Vertex checks Gemini SFT data (every line a JSON object with a non-empty
``contents`` list of ``{"role": "user"|"model", "parts": [{"text": str}]}`` ending with a ``model`` turn, an
optional ``systemInstruction`` with text parts; text parts only here); a missing file or a bad line fails the job
with ``error = {"code": 3, "message": "...line N..."}`` (creation itself succeeds). Then ``running_s`` in
``JOB_STATE_RUNNING`` (``startTime`` and ``tuningDataStats`` set, as Vertex reports them once the data is read), then
``JOB_STATE_SUCCEEDED`` with ``tunedModel`` (``.../models/{id}@1`` deployed to ``.../endpoints/{id}``). A cancelled
job ends at once in ``JOB_STATE_CANCELLED``. The state is worked out whenever the API is called, so no thread
ticks; these attributes are read then too:

* ``refuse_jobs = (http_status, status, message)``: job creation answers that error.
* ``fail_running = (code, message)``: a running job fails halfway through with ``error`` = that.
* ``hold_running = True``: running jobs stay running until it is set back.

The data stats are the stand-in's own counts: an example is 3 tokens plus, for each content and the system
instruction, 4 plus its words; ``totalBillableTokenCount`` is that sum times the epochs (``DEFAULT_EPOCHS`` when
not given); ``tuningStepCount`` is epochs times ceil(examples / ``BATCH_SIZE``). int64 fields are JSON strings, as
Vertex serves them (the client's types parse them into ints).

Generate content. ``POST .../publishers/google/models/{name}:generateContent`` (what the client makes of a bare
model name; any of ``serving_models``) and ``POST .../endpoints/{id}:generateContent`` (endpoints of succeeded jobs
not deleted) answer one candidate whose text is ``reply(body, model)``, ``model`` being the resource as in the URL,
with usage metadata counted in words; :meth:`training_examples` gives a reply rule the lines a tuned endpoint was
trained on. :meth:`fail_next` answers the next requests with an error (429 ``RESOURCE_EXHAUSTED``, 503
``UNAVAILABLE``...). ``DELETE .../endpoints/{id}`` and ``.../models/{id}`` (refused while its endpoint is not
deleted, as Vertex refuses to delete a deployed model) are recorded in ``deleted``.

Every request is recorded in ``calls`` (method, path with query, headers lower-cased, body); generateContent bodies
also in ``requests`` as (model, body); ``errors`` holds the tracebacks of requests the stand-in itself crashed on.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import math
import os
import re
import secrets
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from google.api_core.exceptions import NotFound
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

Reply = Callable[[dict[str, Any], str], str]
Response = tuple[int, dict[str, Any]]

DEFAULT_BASE_MODELS = ("gemini-2.5-flash", "gemini-2.5-flash-lite")
DEFAULT_SERVING_MODELS = (*DEFAULT_BASE_MODELS, "gemini-2.5-pro")
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # the audience Google requires of a JWT-bearer assertion
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOCK_SKEW_S = 300  # how far in the future an assertion's iat may be
DEFAULT_EPOCHS = 4
BATCH_SIZE = 8  # examples a tuning step, for tuningStepCount
ADAPTER_SIZES = frozenset({"ADAPTER_SIZE_ONE", "ADAPTER_SIZE_TWO", "ADAPTER_SIZE_FOUR", "ADAPTER_SIZE_EIGHT",
                           "ADAPTER_SIZE_SIXTEEN", "ADAPTER_SIZE_THIRTY_TWO"})
ENDED = frozenset({"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"})
STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
          409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE",
          504: "DEADLINE_EXCEEDED"}
JOB_FIELDS = frozenset({"baseModel", "preTunedModel", "supervisedTuningSpec", "tunedModelDisplayName", "description",
                        "labels"})
SPEC_FIELDS = frozenset({"trainingDatasetUri", "validationDatasetUri", "hyperParameters"})
HYPERPARAMETERS = frozenset({"epochCount", "learningRateMultiplier", "adapterSize"})
LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")  # Google's label rules (international letters aside)
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
GCS_URI = re.compile(r"gs://[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]/.+")
ID_BASE = 4_000_000_000_000_000_000  # resource ids are 19-digit numbers, as Vertex's are


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user content of a generateContent request body."""
    for content in reversed(body.get("contents", [])):
        if content.get("role", "user") == "user":
            return "".join(part.get("text", "") for part in content.get("parts", []))
    return ""


@dataclass(frozen=True)
class Call:
    """One request as it arrived: ``target`` is the path with its query string, ``headers`` are lower-cased."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes


class VertexStandIn:
    """The API's behaviour and what it saw; :meth:`start` serves it on ``127.0.0.1`` from a thread.

    ``reply``: (request body, model resource) -> candidate text (settable at any time). ``storage_emulator``: where
    datasets are read from; None: ``$STORAGE_EMULATOR_HOST`` when a dataset is read. ``tokens``: access token ->
    the account it was issued to. ``created``: jobs created; :attr:`jobs`, ``requests``, ``deleted``, ``calls``
    and ``errors`` record the rest.
    """

    def __init__(self, reply: Reply | None = None, *, storage_emulator: str | None = None,
                 base_models: tuple[str, ...] = DEFAULT_BASE_MODELS,
                 serving_models: tuple[str, ...] = DEFAULT_SERVING_MODELS,
                 pending_s: float = 0.3, running_s: float = 1.5, clock: Callable[[], float] = time.time) -> None:
        self.reply: Reply = reply or (lambda body, model: "[[C]]")
        self.storage_emulator = storage_emulator
        self.base_models = set(base_models)
        self.serving_models = set(serving_models)
        self.pending_s, self.running_s = pending_s, running_s
        self.clock = clock
        self.refuse_jobs: tuple[int, str, str] | None = None
        self.fail_running: tuple[int, str] | None = None
        self.hold_running = False
        self.created = 0
        self.tokens: dict[str, str] = {}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.deleted: list[str] = []
        self.calls: list[Call] = []
        self.errors: list[str] = []
        self._accounts: dict[str, _Account] = {}
        self._grants: dict[str, _Grant] = {}
        self._fail_next: list[int] = []
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None

    # --- running the server ------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """What the client's ``HttpOptions(base_url=...)`` is set to (``http://127.0.0.1:PORT/``)."""
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    @property
    def token_uri(self) -> str:
        """The OAuth2 token endpoint, the ``token_uri`` of the key files it issues."""
        return f"{self.base_url}token"

    def start(self) -> VertexStandIn:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> VertexStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- programming it and reading what it did ----------------------------------------------------------------

    def service_account_info(self, project: str = "acme-ml") -> dict[str, str]:
        """A new service account of ``project``: its key file as a dict, as the IAM console downloads it, so
        ``service_account.Credentials.from_service_account_info`` (or an Airflow connection's ``keyfile_dict``)
        gets tokens here."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        number = next(self._ids)
        email = f"tuneloop-{number}@{project}.iam.gserviceaccount.com"
        key_id = secrets.token_hex(20)
        with self._lock:
            self._accounts[email] = _Account(project, key_id, key.public_key())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        return {"type": "service_account", "project_id": project, "private_key_id": key_id, "private_key": pem,
                "client_email": email, "client_id": str(100_000_000_000_000_000_000 + number),
                "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": self.token_uri,
                "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
                "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{quote(email)}",
                "universe_domain": "googleapis.com"}

    def fail_next(self, count: int, http_status: int = 429) -> None:
        """Answer the next ``count`` generateContent requests (from any thread) with ``http_status``."""
        with self._lock:
            self._fail_next.extend([http_status] * count)

    @property
    def jobs(self) -> list[dict[str, Any]]:
        """Every job created, as the API would serve it now, oldest first."""
        with self._lock:
            self._advance_all(self.clock())
            return [copy.deepcopy(job.info) for job in self._jobs.values()]

    def training_examples(self, endpoint: str) -> list[dict[str, Any]]:
        """The training lines, parsed, of the job that deployed its tuned model to ``endpoint``, after those of
        the model it tuned further: a reply rule's way to make a tuned model "know" what it was trained on."""
        with self._lock:
            for job in self._jobs.values():
                if job.info.get("tunedModel", {}).get("endpoint") == endpoint:
                    return copy.deepcopy(job.inherited + job.examples)
        raise KeyError(f"no tuning job deployed to {endpoint}")

    # --- dispatch ----------------------------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        """Answer one request: the HTTP handler's only way in."""
        path, _, query = target.partition("?")
        with self._lock:
            self.calls.append(Call(method, target, headers, body))
        if method == "POST" and path == "/token":
            return self._token(body)
        for verb, pattern, name, permission in _ROUTES:
            match = pattern.fullmatch(path)
            if match and verb == method:
                ids = {key: unquote(value) for key, value in match.groupdict().items()}
                denied = self._denied(headers, ids["project"], ids["location"], permission)
                if denied is not None:
                    return denied
                if name == "_generate":  # it locks only around its records: the test's reply rule may be slow
                    return self._generate(body, f"projects/{ids['project']}/locations/{ids['location']}/{ids['model']}")
                return self._locked(name, dict(parse_qsl(query)), body, ids)
        return 404, _error(404, f"unknown route {method} {target}")

    def _locked(self, name: str, query: dict[str, str], body: bytes, ids: dict[str, str]) -> Response:
        with self._lock:
            now = self.clock()
            self._advance_all(now)
            try:
                return getattr(self, name)(query, body, now, **ids)
            except _Refused as refusal:
                return refusal.http_status, refusal.body

    # --- authentication ----------------------------------------------------------------------------------------

    def _token(self, raw: bytes) -> Response:
        """Google's token endpoint, for the JWT-bearer grant of a service account."""
        form = dict(parse_qsl(raw.decode("utf-8", "replace")))
        if form.get("grant_type") != JWT_BEARER:
            return 400, {"error": "unsupported_grant_type",
                         "error_description": f"Invalid grant_type: {form.get('grant_type', '')}"}
        try:
            email, scopes = self._verify(form.get("assertion", ""))
        except _BadGrant as bad:
            return 400, {"error": bad.error, "error_description": str(bad)}
        token = f"ya29.standin-{secrets.token_urlsafe(32)}"
        with self._lock:
            self._grants[token] = _Grant(self._accounts[email].project, scopes)
            self.tokens[token] = email
        return 200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}

    def _verify(self, assertion: str) -> tuple[str, frozenset[str]]:
        """The account and scopes an assertion grants; _BadGrant worded as Google words it."""
        try:
            encoded_header, encoded_claims, encoded_signature = assertion.split(".")
            header, claims = json.loads(_unbase64(encoded_header)), json.loads(_unbase64(encoded_claims))
            signature = _unbase64(encoded_signature)
        except ValueError:
            raise _BadGrant("invalid_grant", "Invalid JWT: the assertion is not a signed JWT.") from None
        if not isinstance(header, dict) or not isinstance(claims, dict) or header.get("alg") != "RS256":
            raise _BadGrant("invalid_grant", "Invalid JWT: expected an RS256-signed JWT.")
        issuer = claims.get("iss")
        with self._lock:
            account = self._accounts.get(issuer) if isinstance(issuer, str) else None
        if account is None:
            raise _BadGrant("invalid_grant", "Invalid grant: account not found")
        try:
            if header.get("kid", account.key_id) != account.key_id:
                raise InvalidSignature
            account.public_key.verify(signature, f"{encoded_header}.{encoded_claims}".encode(), padding.PKCS1v15(),
                                      hashes.SHA256())
        except InvalidSignature:
            raise _BadGrant("invalid_grant", "Invalid JWT Signature.") from None
        if claims.get("aud") != GOOGLE_TOKEN_URI:
            raise _BadGrant("invalid_grant", f"Invalid JWT: Failed audience check. The right audience is "
                                             f"{GOOGLE_TOKEN_URI}")
        issued, expires, now = claims.get("iat"), claims.get("exp"), time.time()
        if not (isinstance(issued, int) and isinstance(expires, int)
                and issued - CLOCK_SKEW_S <= now < expires and expires - issued <= 3600):
            raise _BadGrant("invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                                             "reasonable timeframe. Check your iat and exp values in the JWT claim.")
        scopes = frozenset(str(claims.get("scope") or "").split())
        if not scopes:
            raise _BadGrant("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        return issuer, scopes

    def _denied(self, headers: dict[str, str], project: str, location: str, permission: str) -> Response | None:
        """The error answering a request its bearer may not make; None when it may."""
        scheme, _, token = headers.get("authorization", "").partition(" ")
        with self._lock:
            grant = self._grants.get(token) if scheme.lower() == "bearer" else None
        if grant is None:
            said = ("Request is missing required authentication credential" if "authorization" not in headers
                    else "Request had invalid authentication credentials")
            return 401, _error(401, f"{said}. Expected OAuth 2 access token, login cookie or other valid "
                                    "authentication credential. See "
                                    "https://developers.google.com/identity/sign-in/web/devconsole-project.")
        if CLOUD_PLATFORM not in grant.scopes:
            return 403, _error(403, "Request had insufficient authentication scopes.")
        if grant.project != project:
            return 403, _error(403, f"Permission '{permission}' denied on resource '//aiplatform.googleapis.com/"
                                    f"projects/{project}/locations/{location}' (or it may not exist).")
        return None

    # --- tuning jobs -------------------------------------------------------------------------------------------

    def _create_job(self, query: dict[str, str], raw: bytes, now: float, project: str, location: str) -> Response:
        body = _json_body(raw)
        if self.refuse_jobs is not None:
            http_status, status, message = self.refuse_jobs
            raise _Refused(http_status, message, status)
        earlier = self._pre_tuned(body.get("preTunedModel"))
        _check_job_request(body, self.base_models, pre_tuned=earlier is not None)
        parent = f"projects/{project}/locations/{location}"
        stamp = _rfc3339(now)
        base = earlier.info["baseModel"] if earlier else body["baseModel"]
        info = {"name": f"{parent}/tuningJobs/{ID_BASE + next(self._ids)}", "state": "JOB_STATE_PENDING",
                "createTime": stamp, "updateTime": stamp, "baseModel": base,
                "supervisedTuningSpec": copy.deepcopy(body["supervisedTuningSpec"])}
        if earlier:
            info["preTunedModel"] = {"tunedModelName": earlier.info["tunedModel"]["model"], "baseModel": base}
        info.update({key: copy.deepcopy(body[key]) for key in ("tunedModelDisplayName", "description", "labels")
                     if key in body})
        epochs = body["supervisedTuningSpec"].get("hyperParameters", {}).get("epochCount", DEFAULT_EPOCHS)
        self._jobs[info["name"]] = _Job(info, epochs, (self.pending_s, self.running_s), since=now, observed=now,
                                        inherited=copy.deepcopy(earlier.examples) if earlier else [])
        self.created += 1
        return 200, copy.deepcopy(info)

    def _pre_tuned(self, pre_tuned: Any) -> _Job | None:
        """The succeeded job whose tuned model ``preTunedModel.tunedModelName`` names (None without one)."""
        if pre_tuned is None:
            return None
        # proto JSON takes a field's JSON name or its proto name; genai sends the latter here
        name = (pre_tuned.get("tunedModelName") or pre_tuned.get("tuned_model_name")) \
            if isinstance(pre_tuned, dict) else None
        for job in self._jobs.values():
            if name and job.info.get("tunedModel", {}).get("model") == name:
                return job
        raise _Refused(400, f"preTunedModel.tunedModelName: {name!r} is not a tuned model of this project.")

    def _job(self, name: str) -> _Job:
        if name not in self._jobs:
            raise _Refused(404, f"The TuningJob {name} does not exist.")
        return self._jobs[name]

    def _get_job(self, query: dict[str, str], raw: bytes, now: float, project: str, location: str,
                 job_id: str) -> Response:
        return 200, copy.deepcopy(self._job(f"projects/{project}/locations/{location}/tuningJobs/{job_id}").info)

    def _list_jobs(self, query: dict[str, str], raw: bytes, now: float, project: str, location: str) -> Response:
        parent = f"projects/{project}/locations/{location}/"
        wanted = _filter(query.get("filter", ""))
        jobs = [copy.deepcopy(job.info) for job in reversed(self._jobs.values())
                if job.info["name"].startswith(parent) and all(test(job.info) for test in wanted)]
        token = query.get("pageToken") or "0"
        if not token.isdigit():
            raise _Refused(400, f"Invalid page token: {token}")
        start, size = int(token), int(query.get("pageSize") or 100)
        page: dict[str, Any] = {"tuningJobs": jobs[start:start + size]} if jobs[start:start + size] else {}
        if start + size < len(jobs):
            page["nextPageToken"] = str(start + size)
        return 200, page  # proto3 JSON leaves empty lists out: no jobs is {}

    def _cancel_job(self, query: dict[str, str], raw: bytes, now: float, project: str, location: str,
                    job_id: str) -> Response:
        job = self._job(f"projects/{project}/locations/{location}/tuningJobs/{job_id}")
        if job.state in ENDED:
            raise _Refused(400, f"Cannot cancel tuning job {job.info['name']} in state {job.state}.",
                           "FAILED_PRECONDITION")
        job.end(now, "JOB_STATE_CANCELLED")
        job.info["error"] = {"code": 1, "message": "CANCELED"}
        return 200, {}

    # --- the clock ---------------------------------------------------------------------------------------------

    def _advance_all(self, now: float) -> None:
        for job in self._jobs.values():
            self._advance(job, now)

    def _advance(self, job: _Job, now: float) -> None:
        """Make every transition due by ``now``, each dated when it fell due, but never before the job was last
        brought up to date (every call does that): a client must not learn afterwards that what it saw was already
        over (a job held, or one told to fail after it had passed halfway)."""
        while job.state not in ENDED:
            transition = self._next_transition(job)
            if transition is None:
                break
            due, make = transition
            at = max(due, job.observed)
            if at > now:
                break
            make(job, at)
        job.observed = now

    def _next_transition(self, job: _Job) -> tuple[float, Callable[[_Job, float], None]] | None:
        pending_s, running_s = job.durations
        if job.state == "JOB_STATE_PENDING":
            return job.since + pending_s, self._read_data
        if self.fail_running is not None:
            return job.since + running_s / 2, self._fail_programmed
        if self.hold_running:
            return None
        return job.since + running_s, self._succeed

    def _read_data(self, job: _Job, at: float) -> None:
        """Read and check the datasets, then start training or fail the job as Vertex does (code 3)."""
        spec = job.info["supervisedTuningSpec"]
        try:
            job.examples = _examples("training", spec["trainingDatasetUri"], self._download)
            if "validationDatasetUri" in spec:
                _examples("validation", spec["validationDatasetUri"], self._download)
        except ValueError as problem:
            job.end(at, "JOB_STATE_FAILED")
            job.info["error"] = {"code": 3, "message": str(problem)}
            return
        job.move(at, "JOB_STATE_RUNNING")
        job.info["startTime"] = _rfc3339(at)
        job.info["tuningDataStats"] = {"supervisedTuningDataStats": _stats(job.examples, job.epochs)}

    def _download(self, uri: str) -> bytes | None:
        """The object at a gs:// URI, from the GCS emulator; None when there is none."""
        host = self.storage_emulator or os.environ.get("STORAGE_EMULATOR_HOST")
        assert host, "no GCS emulator: pass storage_emulator= or set STORAGE_EMULATOR_HOST"
        client = storage.Client(project="standin", credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": host})
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        try:
            return client.bucket(bucket).blob(name).download_as_bytes()
        except NotFound:
            return None

    def _fail_programmed(self, job: _Job, at: float) -> None:
        assert self.fail_running is not None
        code, message = self.fail_running
        job.end(at, "JOB_STATE_FAILED")
        job.info["error"] = {"code": code, "message": message}

    def _succeed(self, job: _Job, at: float) -> None:
        parent = job.info["name"].rpartition("/tuningJobs/")[0]
        model, endpoint = ID_BASE + next(self._ids), ID_BASE + next(self._ids)
        job.info["tunedModel"] = {"model": f"{parent}/models/{model}@1", "endpoint": f"{parent}/endpoints/{endpoint}"}
        job.end(at, "JOB_STATE_SUCCEEDED")

    # --- generate content and the tuned models -----------------------------------------------------------------

    def _generate(self, raw: bytes, model: str) -> Response:
        with self._lock:
            self._advance_all(self.clock())
            try:
                body = _json_body(raw)
            except _Refused as refusal:
                return refusal.http_status, refusal.body
            self.requests.append((model, body))
            failure = self._fail_next.pop(0) if self._fail_next else None
            version = self._serving(model)
        if failure is not None:
            return failure, _error(failure, f"the stand-in was told to fail this request with {failure}")
        if version is None:
            what = "Endpoint" if "/endpoints/" in model else "Publisher Model"
            return 404, _error(404, f"{what} `{model}` was not found or your project does not have access to it.")
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            return 400, _error(400, "Unable to submit request because it has an empty contents field.")
        text = self.reply(body, model)
        prompt = sum(_words(content) for content in [*contents, body.get("systemInstruction") or {}])
        answer = len(text.split())
        return 200, {
            "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": answer,
                              "totalTokenCount": prompt + answer, "trafficType": "ON_DEMAND"},
            "modelVersion": version, "createTime": _rfc3339(time.time()),
            "responseId": secrets.token_urlsafe(16),
        }

    def _serving(self, model: str) -> str | None:
        """The modelVersion that answers for ``model``: a serving publisher model's name, or the tuned model of a
        succeeded job's endpoint not deleted; None when nothing serves there."""
        name = model.rpartition("/publishers/google/models/")[2]
        if "/publishers/google/models/" in model:
            return name if name in self.serving_models else None
        for job in self._jobs.values():
            tuned = job.info.get("tunedModel", {})
            if tuned.get("endpoint") == model and model not in self.deleted:
                return tuned["model"]
        return None

    def _delete_endpoint(self, query: dict[str, str], raw: bytes, now: float, project: str, location: str,
                         endpoint_id: str) -> Response:
        endpoint = f"projects/{project}/locations/{location}/endpoints/{endpoint_id}"
        if self._serving(endpoint) is None:
            raise _Refused(404, f"Endpoint `{endpoint}` not found.")
        self.deleted.append(endpoint)
        return 200, self._operation(endpoint)

    def _delete_model(self, query: dict[str, str], raw: bytes, now: float, project: str, location: str,
                      model_id: str) -> Response:
        model = f"projects/{project}/locations/{location}/models/{model_id}"
        tuned = [job.info["tunedModel"] for job in self._jobs.values()
                 if job.info.get("tunedModel", {}).get("model") == f"{model}@1"]
        if not tuned or model in self.deleted:
            raise _Refused(404, f"Model `{model}` not found.")
        if tuned[0]["endpoint"] not in self.deleted:
            raise _Refused(400, f"Model {model} is deployed or being deployed at the following Endpoint(s): "
                                f"{tuned[0]['endpoint']}.", "FAILED_PRECONDITION")
        self.deleted.append(model)
        return 200, self._operation(model)

    def _operation(self, resource: str) -> dict[str, Any]:
        """The long-running operation a deletion answers, already done."""
        return {"name": f"{resource}/operations/{ID_BASE + next(self._ids)}", "done": True,
                "response": {"@type": "type.googleapis.com/google.protobuf.Empty"}}


@dataclass
class _Account:
    project: str
    key_id: str
    public_key: rsa.RSAPublicKey


@dataclass(frozen=True)
class _Grant:
    """What an access token allows: requests to this project with these scopes."""

    project: str
    scopes: frozenset[str]


class _BadGrant(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error


class _Refused(Exception):
    """An error answer, raised from deep inside a route."""

    def __init__(self, http_status: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.http_status, self.body = http_status, _error(http_status, message, status)


@dataclass
class _Job:
    info: dict[str, Any]  # the TuningJob as served
    epochs: int
    durations: tuple[float, float]  # pending, running, as set when it was created
    since: float  # when the current state began
    observed: float  # when the job was last brought up to date
    examples: list[dict[str, Any]] = field(default_factory=list)  # the training lines, once read
    inherited: list[dict[str, Any]] = field(default_factory=list)  # the pre-tuned model's (continuous tuning)

    @property
    def state(self) -> str:
        return self.info["state"]

    def move(self, at: float, state: str) -> None:
        self.info.update(state=state, updateTime=_rfc3339(at))
        self.since = at

    def end(self, at: float, state: str) -> None:
        self.move(at, state)
        self.info["endTime"] = _rfc3339(at)


def _check_job_request(body: dict[str, Any], base_models: set[str], *, pre_tuned: bool) -> None:
    """Refuse what the service refuses at creation (bad dataset *content* only fails the job later)."""
    spec = body.get("supervisedTuningSpec") or {}
    hyper = spec.get("hyperParameters") or {}
    for given, allowed, where in ((body, JOB_FIELDS, "tuning_job"), (spec, SPEC_FIELDS, "supervised_tuning_spec"),
                                  (hyper, HYPERPARAMETERS, "hyper_parameters")):
        unknown = sorted(set(given) - allowed)
        if unknown:
            raise _Refused(400, f"Invalid JSON payload received. Unknown name \"{unknown[0]}\" at '{where}': the "
                                "stand-in models supervised tuning of a base model only.")
    if pre_tuned and "baseModel" in body:
        raise _Refused(400, "baseModel and preTunedModel: give one of them.")
    if not pre_tuned and body.get("baseModel") not in base_models:
        raise _Refused(400, f"baseModel: {body.get('baseModel')!r} is not a supported base model for tuning; "
                            f"supported: {', '.join(sorted(base_models))}.")
    for name in ("trainingDatasetUri", "validationDatasetUri"):
        uri = spec.get(name)
        if (name in spec or name == "trainingDatasetUri") and not (isinstance(uri, str) and GCS_URI.fullmatch(uri)):
            raise _Refused(400, f"supervisedTuningSpec.{name}: {uri!r} is not a Cloud Storage URI "
                                "(gs://BUCKET/OBJECT).")
    epochs = hyper.get("epochCount", 1)
    if not (isinstance(epochs, int) and 1 <= epochs <= 100):
        raise _Refused(400, f"supervisedTuningSpec.hyperParameters.epochCount: {epochs!r} is not an integer from 1 "
                            "to 100.")
    rate = hyper.get("learningRateMultiplier", 1.0)
    if not (isinstance(rate, (int, float)) and rate > 0):
        raise _Refused(400, f"supervisedTuningSpec.hyperParameters.learningRateMultiplier: {rate!r} is not a "
                            "positive number.")
    if hyper.get("adapterSize", "ADAPTER_SIZE_ONE") not in ADAPTER_SIZES:
        raise _Refused(400, f"supervisedTuningSpec.hyperParameters.adapterSize: {hyper['adapterSize']!r} is not one "
                            f"of {', '.join(sorted(ADAPTER_SIZES))}.")
    _check_labels(body.get("labels") or {})
    display_name = body.get("tunedModelDisplayName", "")
    if not isinstance(display_name, str) or len(display_name) > 128:
        raise _Refused(400, "tunedModelDisplayName: at most 128 characters.")


def _check_labels(labels: dict[str, Any]) -> None:
    """Google's label rules: at most 64; keys start with a lower-case letter; keys and values at most 63 lower-case
    letters, digits, '_' and '-'."""
    if len(labels) > 64:
        raise _Refused(400, f"labels: {len(labels)} labels; at most 64 are allowed.")
    for key, value in labels.items():
        if not LABEL_KEY.fullmatch(key):
            raise _Refused(400, f"labels: key {key!r} must start with a lower-case letter and have at most 63 "
                                "lower-case letters, digits, '_' or '-'.")
        if not (isinstance(value, str) and LABEL_VALUE.fullmatch(value)):
            raise _Refused(400, f"labels: value {value!r} of key {key!r} must have at most 63 lower-case letters, "
                                "digits, '_' or '-'.")


def _filter(text: str) -> list[Callable[[dict[str, Any]], bool]]:
    """The tests of a list filter: ``labels.KEY=VALUE`` and ``state=STATE`` terms (values may be quoted) joined by
    ``AND``."""
    tests: list[Callable[[dict[str, Any]], bool]] = []
    for term in filter(None, (term.strip() for term in re.split(r"\s+AND\s+", text.strip()))):
        match = re.fullmatch(r'(?:labels\.(?P<label>[a-z][a-z0-9_-]*)|(?P<state>state))\s*=\s*(?P<value>"[^"]*"|\S+)',
                             term)
        if match is None:
            raise _Refused(400, f"Unsupported filter term {term!r}: the stand-in knows labels.KEY=VALUE and "
                                "state=STATE, joined by AND.")
        label, value = match.group("label"), match.group("value").strip('"')
        if label is None:
            tests.append(lambda info, value=value: info["state"] == value)
        else:
            tests.append(lambda info, label=label, value=value: (info.get("labels") or {}).get(label) == value)
    return tests


def _examples(kind: str, uri: str, download: Callable[[str], bytes | None]) -> list[dict[str, Any]]:
    """The examples of a dataset; ValueError naming the dataset, the line and the rule it breaks."""
    content = download(uri)
    if content is None:
        raise ValueError(f"The {kind} dataset {uri} does not exist or cannot be read.")
    examples = []
    for number, line in enumerate(content.decode("utf-8", "replace").splitlines(), start=1):
        if line.strip():
            problem = _problem(line)
            if problem is not None:
                raise ValueError(f"Invalid {kind} dataset {uri}: line {number}: {problem}")
            examples.append(json.loads(line))
    if not examples:
        raise ValueError(f"Invalid {kind} dataset {uri}: it has no examples.")
    return examples


def _problem(line: str) -> str | None:
    """The first rule of Gemini supervised tuning data that one line breaks; None when it breaks none."""
    try:
        example = json.loads(line)
    except json.JSONDecodeError:
        return "not valid JSON."
    if not isinstance(example, dict):
        return "expected a JSON object."
    contents = example.get("contents")
    if not isinstance(contents, list) or not contents:
        return '"contents" must be a non-empty list.'
    for index, content in enumerate(contents):
        if not isinstance(content, dict) or content.get("role") not in ("user", "model"):
            return f'contents[{index}].role must be "user" or "model".'
        problem = _parts_problem(content, f"contents[{index}]")
        if problem:
            return problem
    if contents[-1]["role"] != "model":
        return 'the last content must have role "model".'
    if "systemInstruction" not in example:
        return None
    if not isinstance(example["systemInstruction"], dict):
        return '"systemInstruction" must be an object.'
    return _parts_problem(example["systemInstruction"], "systemInstruction")


def _parts_problem(content: dict[str, Any], where: str) -> str | None:
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        return f"{where}.parts must be a non-empty list."
    if not all(isinstance(part, dict) and isinstance(part.get("text"), str) for part in parts):
        return f'{where}.parts: every part must have a "text" string (the stand-in tunes on text only).'
    return None


def _words(content: dict[str, Any]) -> int:
    return sum(len(part.get("text", "").split()) for part in content.get("parts", []))


def _turns(example: dict[str, Any]) -> list[dict[str, Any]]:
    """The contents of a checked example, its system instruction first when it has one."""
    return [example["systemInstruction"], *example["contents"]] if "systemInstruction" in example \
        else example["contents"]


def _stats(examples: list[dict[str, Any]], epochs: int) -> dict[str, Any]:
    """SupervisedTuningDataStats by the stand-in's own counts (see the module docstring); int64s as strings."""
    tokens = sum(3 + sum(4 + _words(content) for content in _turns(example)) for example in examples)
    characters = sum(len(part["text"]) for example in examples for content in _turns(example)
                     for part in content["parts"])
    return {"tuningDatasetExampleCount": str(len(examples)), "totalTuningCharacterCount": str(characters),
            "totalBillableTokenCount": str(tokens * epochs), "totalTruncatedExampleCount": "0",
            "tuningStepCount": str(epochs * math.ceil(len(examples) / BATCH_SIZE))}


def _rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _unbase64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except json.JSONDecodeError as error:
        raise _Refused(400, f"Invalid JSON payload received. {error}") from None
    if not isinstance(body, dict):
        raise _Refused(400, "Invalid JSON payload received. Expected an object.")
    return body


def _error(http_status: int, message: str, status: str | None = None) -> dict[str, Any]:
    return {"error": {"code": http_status, "message": message, "status": status or STATUS.get(http_status, "UNKNOWN")}}


_PARENT = r"/v1beta1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
_ROUTES = [(verb, re.compile(_PARENT + pattern), name, permission) for verb, pattern, name, permission in [
    ("POST", r"/tuningJobs", "_create_job", "aiplatform.tuningJobs.create"),
    ("GET", r"/tuningJobs", "_list_jobs", "aiplatform.tuningJobs.list"),
    ("GET", r"/tuningJobs/(?P<job_id>[^/:]+)", "_get_job", "aiplatform.tuningJobs.get"),
    ("POST", r"/tuningJobs/(?P<job_id>[^/:]+):cancel", "_cancel_job", "aiplatform.tuningJobs.cancel"),
    ("POST", r"/(?P<model>publishers/google/models/[^/:]+|endpoints/[^/:]+):generateContent", "_generate",
     "aiplatform.endpoints.predict"),
    ("DELETE", r"/endpoints/(?P<endpoint_id>[^/:]+)", "_delete_endpoint", "aiplatform.endpoints.delete"),
    ("DELETE", r"/models/(?P<model_id>[^/:@]+)", "_delete_model", "aiplatform.models.delete"),
]]


def _handler(api: VertexStandIn) -> type[BaseHTTPRequestHandler]:
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
            try:
                status, payload = api.handle(self.command, self.path, headers, body)
            except Exception:  # the stand-in's own bug: a 500 to the client, the traceback to the test
                api.errors.append(f"{self.command} {self.path}\n{traceback.format_exc()}")
                status, payload = 500, _error(500, "the stand-in crashed on this request")
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json; charset=UTF-8")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # the tests read .calls instead
            pass

    return Handler
