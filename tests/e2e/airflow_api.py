"""``python -m tests.e2e.airflow_api PATH [METHOD]``: call one Airflow REST API path (GET unless told; in-process
api-server app, same metadata DB as the environment names) and print the JSON, as an API client would see it."""

from __future__ import annotations

import json
import sys


def main(path: str, method: str = "GET") -> int:
    from fastapi.testclient import TestClient

    from airflow.api_fastapi.app import create_app

    with TestClient(create_app(apps="core")) as client:
        response = client.request(method, path)
        body = response.json() if response.content else None
        print(json.dumps({"status": response.status_code, "body": body}))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
