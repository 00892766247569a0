#!/usr/bin/env bash
# Installed as .venv/bin/airflow by `make setup`: the real Airflow CLI with this checkout's defaults, so
# `.venv/bin/airflow dags test finetune_weekly` works from the repo with zero configuration. Every value can be
# overridden by exporting it first (a cluster sets its own AIRFLOW_HOME, database and executor).
repo="@REPO@"
python="@PYTHON@"
: "${AIRFLOW_HOME:=$repo/.airflow}"
: "${AIRFLOW__CORE__DAGS_FOLDER:=$repo/dags}"
: "${AIRFLOW__CORE__PLUGINS_FOLDER:=$repo/plugins}"
: "${AIRFLOW__CORE__LOAD_EXAMPLES:=False}"
: "${TUNELOOP_HOME:=$repo/.tuneloop}"
export AIRFLOW_HOME AIRFLOW__CORE__DAGS_FOLDER AIRFLOW__CORE__PLUGINS_FOLDER AIRFLOW__CORE__LOAD_EXAMPLES TUNELOOP_HOME

# `airflow standalone` starts its components by running `airflow` from PATH: make that this wrapper, so
# `.venv/bin/airflow standalone` works without activating the venv.
venv_bin="${python%/*}"
[[ "$PATH" == "$venv_bin:"* ]] || export PATH="$venv_bin:$PATH"

# The LocalExecutor forks `parallelism` worker processes at start (Airflow's default: 32). On a laptop or a small
# VM, one per CPU (at least 2) is what the machine can run; export AIRFLOW__CORE__PARALLELISM to choose another.
# Other executors (a cluster's Celery) are left alone: there parallelism caps the whole cluster.
if [[ -z "${AIRFLOW__CORE__PARALLELISM:-}" && "${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}" == LocalExecutor ]]; then
    cpus="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)"
    export AIRFLOW__CORE__PARALLELISM="$(( cpus > 2 ? cpus : 2 ))"
fi

# Ctrl-C signals the terminal's whole process group: every component then gets SIGINT from the terminal and
# SIGTERM from standalone at once, and about every other time the scheduler hangs with its workers (Airflow
# 3.3.2). So standalone runs in a process group of its own (job control) and only it gets the signal, which it
# passes on to each component once. Standalone stops its components only on SIGINT (KeyboardInterrupt); SIGTERM
# or SIGHUP (`kill`, a closed terminal) would end it alone and leave every component running, so those become
# SIGINT too.
# A shell without job control (a script, `... &`, nohup) starts background commands with SIGINT ignored, and an
# ignored signal stays ignored across exec: standalone would then never see the SIGINT that stops it. So it is
# started with SIGINT back at its default.
if [[ "${1:-}" == standalone ]]; then
    set -m
    "$python" -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execv(sys.executable, [sys.executable, "-m", "airflow", *sys.argv[1:]])' "$@" < /dev/null &
    pid=$!
    trap 'kill -INT "$pid" 2>/dev/null' INT TERM HUP
    while :; do
        wait "$pid"
        status=$?
        kill -0 "$pid" 2>/dev/null || exit "$status"
    done
fi
exec "$python" -m airflow "$@"
