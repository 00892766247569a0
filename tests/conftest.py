"""Shared fixtures: an isolated tuneloop home and Airflow home per test session."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import soundfile as sf

if TYPE_CHECKING:
    from tests.standins.kubernetes_api import KubernetesApiStandin

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory) -> dict[str, str]:
    """Environment for Airflow in tests: its own AIRFLOW_HOME (SQLite), this repo's dags and plugins.

    Set in os.environ too, because Airflow reads its configuration at import time.
    """
    home = tmp_path_factory.mktemp("airflow_home")
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
    }
    os.environ.update(env)
    return {**os.environ, **env}


# --- audio for the data-core tests (store, audio, datasets) -------------------------------------------------
# Synthesised with numpy + soundfile, so tests need no recordings and no network.


@pytest.fixture
def wav_factory(tmp_path: Path) -> Callable[..., Path]:
    """``wav_factory("a.wav", seconds=0.5, sample_rate=16000, channels=1, subtype="PCM_16") -> Path``.

    Each file name gives different samples (a tone plus noise seeded by the name), so distinct names are distinct
    recordings for content hashing; the same name and parameters always give the same samples.
    """

    def make(name: str, *, seconds: float = 0.5, sample_rate: int = 16_000, channels: int = 1,
             subtype: str = "PCM_16") -> Path:
        seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
        rng = np.random.default_rng(seed)
        t = np.arange(int(seconds * sample_rate)) / sample_rate
        tone = 0.3 * np.sin(2 * np.pi * (200 + seed % 600) * t)
        samples = np.stack([tone + 0.01 * rng.standard_normal(t.size) for _ in range(channels)], axis=1)
        path = tmp_path / "audio" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, samples, sample_rate, subtype=subtype)
        return path

    return make


# --- object storage: a GCS emulator on loopback -----------------------------------------------------------------


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[str]:
    """gcp-storage-emulator on a free loopback port, with bucket ``acme-tuneloop``; ``STORAGE_EMULATOR_HOST`` points
    the real google-cloud-storage client and gcsfs (so Airflow's ObjectStoragePath) at it."""
    import logging
    import socket
    import threading

    from gcp_storage_emulator.server import create_server

    # its access log runs in the server thread and would outlive the stream pytest captures for one test
    logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="acme-tuneloop")
    threading.Thread(target=server.start, daemon=True).start()
    host = f"http://127.0.0.1:{port}"
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = host
    yield host
    server.stop()
    if previous is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = previous


# --- Compute Engine: a stand-in REST API on loopback ------------------------------------------------------------


@pytest.fixture
def compute_standin(tmp_path, gcs_emulator):
    """The stand-in Compute Engine API (tests/standins/compute_api.py); point the real client at ``.endpoint``
    (``training.gce.api_endpoint``). Inserted VMs run their startup script here, uploading markers to the GCS
    emulator. Read ``.instances`` (bodies as received, by name), ``.deleted``, ``.requests``; a request the
    stand-in crashed on fails the test."""
    from tests.standins.compute_api import ComputeStandIn

    standin = ComputeStandIn(tmp_path / "compute", storage_emulator=gcs_emulator).start()
    yield standin
    standin.close()
    assert not standin.errors, "the Compute Engine stand-in failed on a request:\n" + "\n".join(standin.errors)


# --- Kubernetes: a stand-in API server on loopback ---------------------------------------------------------------


@pytest.fixture
def kubernetes_standin(tmp_path, monkeypatch) -> Iterator[KubernetesApiStandin]:
    """The stand-in Kubernetes API server (tests/standins/kubernetes_api.py) with ``kubernetes_default`` pointing at
    it, so the stock KubernetesPodOperator, sync or deferrable, runs each pod as local processes.

    Fill ``.secrets[(secret, key)] = value`` before a pod starts; read ``.pods`` (manifests as submitted, by name),
    ``.logs(name)``, ``.requests``, ``.deleted``; ``.kubeconfig`` is the file the connection names. A request the
    server crashed on fails the test.
    """
    import json

    from tests.standins.kubernetes_api import KubernetesApiStandin

    standin = KubernetesApiStandin(workdir=tmp_path).start()
    kubeconfig = standin.write_kubeconfig(tmp_path / "kubeconfig")
    # the operator hands $KUBECONFIG to its trigger as config_dict, which the hook refuses next to kube_config_path
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps(
        {"conn_type": "kubernetes", "extra": {"kube_config_path": str(kubeconfig), "in_cluster": False}}))
    yield standin
    standin.stop()
    assert not standin.errors, "the Kubernetes stand-in failed on a request:\n" + "\n".join(standin.errors)
