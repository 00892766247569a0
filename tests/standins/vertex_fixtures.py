"""Fixtures for tests that drive the stand-in Vertex AI API (tests/standins/vertex_api.py) by hand: its clock, the
server, a service account of it, a real ``google-genai`` client with that account's credentials, and datasets in
the GCS emulator.

Import them into a test module (``from tests.standins.vertex_fixtures import api, clock, client, info``); the
stand-in's clock starts at a fixed moment and moves only on ``clock.tick``, so every job state is seen exactly.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from google import genai
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.genai.types import HttpOptions
from google.oauth2 import service_account

from tests.standins.clock import ManualClock
from tests.standins.vertex_api import CLOUD_PLATFORM, VertexStandIn

PROJECT, LOCATION = "acme-ml", "us-central1"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"
BASE = "gemini-2.5-flash"
BUCKET = "acme-tuneloop"
PENDING_S, RUNNING_S = 1, 10


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def api(clock: ManualClock, gcs_emulator: str) -> Iterator[VertexStandIn]:
    """Pending 1 s, running 10 s of the stand-in's clock; a request the stand-in crashed on fails the test."""
    with VertexStandIn(clock=clock, storage_emulator=gcs_emulator, pending_s=PENDING_S,
                       running_s=RUNNING_S) as standin:
        yield standin
    assert not standin.errors, "the Vertex stand-in failed on a request:\n" + "\n".join(standin.errors)


@pytest.fixture
def info(api: VertexStandIn) -> dict[str, str]:
    """A service account key of project acme-ml, issued by the stand-in."""
    return api.service_account_info()


@pytest.fixture
def client(api: VertexStandIn, info: dict[str, str]) -> genai.Client:
    """A client without retries: every answer of the stand-in is seen as it is."""
    credentials = service_account.Credentials.from_service_account_info(info, scopes=[CLOUD_PLATFORM])
    return genai.Client(vertexai=True, project=PROJECT, location=LOCATION, credentials=credentials,
                        http_options=HttpOptions(base_url=api.base_url))


def example(i: int) -> dict[str, Any]:
    """A line of a Gemini tuning file: a system instruction, a question and its answer (3 words of content)."""
    return {"systemInstruction": {"role": "system", "parts": [{"text": "Answer briefly."}]},
            "contents": [{"role": "user", "parts": [{"text": f"question {i}"}]},
                         {"role": "model", "parts": [{"text": f"answer {i}"}]}]}


# the stand-in's token count of example(i): 3 for the example, then 4 + its words for each content
TOKENS_PER_EXAMPLE = 3 + (4 + 2) * 3


def upload(lines: list[Any]) -> str:
    """A JSONL dataset in the GCS emulator (a dict a line, a str as it is); its gs:// URI."""
    name = f"vertex-fixtures/{uuid.uuid4().hex}.jsonl"
    content = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    storage.Client(project="test", credentials=AnonymousCredentials()).bucket(BUCKET).blob(name).upload_from_string(
        content)
    return f"gs://{BUCKET}/{name}"


def set_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, info: dict[str, str] | None,
                   project: str | None = PROJECT) -> None:
    """Airflow connection ``conn_id`` (type google_cloud_platform, from ``AIRFLOW_CONN_*``) holding the service account
    key ``info`` as its keyfile_dict and naming ``project`` (None: no project of its own)."""
    extra = {"keyfile_dict": json.dumps(info)} if info is not None else {}
    if project is not None:
        extra["project"] = project
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "google_cloud_platform",
                                                                      "extra": extra}))
