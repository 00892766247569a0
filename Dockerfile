# tuneloop's Airflow image (first draft; the production-topology milestone finishes it).
# Build: docker build -t tuneloop-airflow .
FROM apache/airflow:3.3.2-python3.11

USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1 \
    && rm -rf /var/lib/apt/lists/*
USER airflow

# Pinned set; torch is the CPU build (training runs on the trainer backend, the worker only orchestrates).
COPY --chown=airflow:root requirements.txt /opt/tuneloop/requirements.txt
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        -r /opt/tuneloop/requirements.txt

COPY --chown=airflow:root pyproject.toml README.md /opt/tuneloop/
COPY --chown=airflow:root plugins /opt/tuneloop/plugins
COPY --chown=airflow:root include /opt/tuneloop/include
COPY --chown=airflow:root dags /opt/airflow/dags
RUN pip install --no-cache-dir --no-deps -e /opt/tuneloop

ENV AIRFLOW__CORE__LOAD_EXAMPLES=False \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/tuneloop/plugins \
    TUNELOOP_CONFIG=/opt/tuneloop/include/config/tuneloop.yaml \
    TUNELOOP_HOME=/opt/airflow/tuneloop
