#!/usr/bin/env bash
# Installed as .venv/bin/airflow by `make setup`: the real Airflow CLI with this checkout's defaults, so
# `.venv/bin/airflow dags test finetune_weekly` works from the repo with zero configuration. Every value can be
# overridden by exporting it first (a cluster sets its own AIRFLOW_HOME, database and executor).
repo="@REPO@"
: "${AIRFLOW_HOME:=$repo/.airflow}"
: "${AIRFLOW__CORE__DAGS_FOLDER:=$repo/dags}"
: "${AIRFLOW__CORE__PLUGINS_FOLDER:=$repo/plugins}"
: "${AIRFLOW__CORE__LOAD_EXAMPLES:=False}"
: "${TUNELOOP_HOME:=$repo/.tuneloop}"
export AIRFLOW_HOME AIRFLOW__CORE__DAGS_FOLDER AIRFLOW__CORE__PLUGINS_FOLDER AIRFLOW__CORE__LOAD_EXAMPLES TUNELOOP_HOME
exec "@PYTHON@" -m airflow "$@"
