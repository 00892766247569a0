#!/usr/bin/env bash
# A native tuneloop cluster (no Docker): Postgres, Redis, MLflow server, Airflow api-server, scheduler,
# dag-processor, triggerer and Celery workers as local processes. See docs/cluster.md and `cluster.sh --help`.
#   scripts/cluster/cluster.sh start | status | env | stop [--drop] | kill-worker N | start-worker N
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${TUNELOOP_CLUSTER_PYTHON:-$repo/.venv/bin/python}"
if [ ! -x "$python" ]; then
  echo "[cluster] error: $python not found: run \`make setup\` first (or set TUNELOOP_CLUSTER_PYTHON)" >&2
  exit 2
fi
exec "$python" "$repo/scripts/cluster/cluster.py" "$@"
