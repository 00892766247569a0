"""`airflow dags test` of one DAG run that can be run again: ``python -m tests.e2e.dag_test_run DAG_ID RUN_AFTER CONF``.

The CLI names each run after the moment it starts, so running it twice makes two runs. A worker that dies
mid-run is retried in the same run (same run id, same run folder): this runs ``DAG.test`` with a fixed
``run_after`` (the run id's suffix), so a second call after a SIGKILL is that retry. Exits 1 when the run failed.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

from airflow.utils.cli import get_bagged_dag


def main(dag_id: str, run_after: str, conf: str) -> int:
    at = datetime.fromisoformat(run_after)
    run = get_bagged_dag(bundle_names=None, dag_id=dag_id).test(run_after=at, logical_date=at,
                                                                 run_conf=json.loads(conf))
    print(f"dag run {run.run_id}: {run.state}")
    return 0 if run.state == "success" else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
