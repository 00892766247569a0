"""Airflow ``[core] hostname_callable`` for the native cluster: each process says which cluster member it is.

Every process of a cluster started by ``scripts/cluster/cluster.py`` runs on the same machine, so the default
(the machine's FQDN) would give both Celery workers the same task-instance ``hostname``. The script gives each
process ``TUNELOOP_CLUSTER_HOSTNAME`` (``<cluster>-worker1``, ``<cluster>-scheduler``...) and puts this folder on
``PYTHONPATH``; anywhere else the machine's FQDN is used, as Airflow would.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("TUNELOOP_CLUSTER_HOSTNAME") or socket.getfqdn()
