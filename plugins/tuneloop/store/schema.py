"""The store's tables (``metadata``), the schema version they make up, and the column type that keeps every time
in UTC.

Every table that holds something of one model has a ``model`` column (the configured model's name, ``"default"``
for a single-model installation) at the front of its identity: two models' DAGs get the same Airflow run ids
(``scheduled__<same date>``), the same registry version numbers and may send the same case ids, and each must see
only its own. The column has a server default of ``"default"``: rows of a version-1 store are the default model's,
and so are rows written by a worker still running the previous release while an installation is upgraded.

Changing a table here means a new ``SCHEMA_VERSION`` and a migration in :mod:`tuneloop.store.migrations`.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from tuneloop.intake import as_utc

SCHEMA_VERSION = 4  # the version these tables are; version 1 had no ``model`` columns (one model per store) and
# suite results only of speech (WER and CER required, no metric and score); version 2 kept no audio duration and
# sample rate (the export decoded every file again) and had no indexes for the trigger's window and backlog counts;
# version 3 kept no served requests (the canary's online test)
DEFAULT_MODEL = "default"
MAX_MODEL_CHARS = 200


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Stores naive UTC (portable across SQLite and PostgreSQL) and hands back aware UTC datetimes."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else as_utc(value).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def model_column() -> sa.Column[str]:
    """The configured model a row belongs to."""
    return sa.Column("model", sa.String(MAX_MODEL_CHARS), nullable=False, server_default=DEFAULT_MODEL)


metadata = sa.MetaData()

CORRECTED = "correction IS NOT NULL"  # the rows of the partial index of corrected cases

cases_table = sa.Table(
    "tuneloop_error_cases",
    metadata,
    model_column(),
    sa.Column("id", sa.String(128), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("ingested_at", UTCDateTime, nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(200)),
    sa.Column("audio_uri", sa.Text),  # None for cases without audio (chat)
    sa.Column("audio_hash", sa.String(64), index=True),
    sa.Column("audio_duration_s", sa.Float),  # what ingest's probe found (None: not probed yet, e.g. remote audio)
    sa.Column("audio_sample_rate", sa.Integer),
    sa.Column("prediction", sa.Text, nullable=False),
    sa.Column("correction", sa.Text),
    sa.Column("error_types", sa.JSON, nullable=False),
    sa.Column("error_score", sa.Float),
    sa.Column("annotator", sa.String(200)),
    sa.Column("metadata", sa.JSON, nullable=False, key="meta"),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("state_reason", sa.Text),
    sa.Column("state_changed_at", UTCDateTime),
    sa.Column("consumed_by_run", sa.String(250)),
    sa.Column("payload", sa.JSON),  # what a task keeps beside the common fields (a chat's messages, ...)
    sa.PrimaryKeyConstraint("model", "id", name="pk_tuneloop_error_cases"),
    sa.UniqueConstraint("model", "content_hash", name="uq_tuneloop_error_cases_model_content_hash"),
    # Each query on cases has an index that matches it, so its cost follows what it asks, not the store's size:
    sa.Index("ix_tuneloop_error_cases_model_state_created_at", "model", "state", "created_at"),  # new cases
    sa.Index("ix_tuneloop_error_cases_model_created_at", "model", "created_at"),  # the error-rate window
    sa.Index("ix_tuneloop_error_cases_model_model_version_created_at", "model", "model_version", "created_at"),
    # cases that carry a correction, by state and age (the trigger's count, speech's export): only those rows
    sa.Index("ix_tuneloop_error_cases_corrected", "model", "state", "created_at", "id",
             sqlite_where=sa.text(CORRECTED), postgresql_where=sa.text(CORRECTED)),
    # error-type totals (``tuneloop status``) group the stored lists: SQLite reads them in order from here instead
    # of sorting every case's list; PostgreSQL's ``json`` has no btree order (it scans in parallel instead)
    sa.Index("ix_tuneloop_error_cases_model_error_types", "model", "error_types").ddl_if(dialect="sqlite"),
)

rejections_table = sa.Table(
    "tuneloop_ingest_rejections",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    model_column(),
    sa.Column("rejection_key", sa.String(64), nullable=False),
    sa.Column("batch", sa.Text, nullable=False),
    sa.Column("line", sa.Integer, nullable=False),
    sa.Column("field", sa.String(100), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("snippet", sa.Text, nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("model", "rejection_key", name="uq_tuneloop_ingest_rejections_model_rejection_key"),
)

inferences_table = sa.Table(
    "tuneloop_inference_counts",
    metadata,
    model_column(),
    sa.Column("model_version", sa.String(200), nullable=False),
    sa.Column("period_start", UTCDateTime, nullable=False),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("model", "model_version", "period_start", name="pk_tuneloop_inference_counts"),
    sa.Index("ix_tuneloop_inference_counts_model_period_start", "model", "period_start"),  # every version's window
)

runs_table = sa.Table(
    "tuneloop_training_runs",
    metadata,
    model_column(),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime, index=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("dataset_id", sa.String(100)),
    sa.Column("candidate_version", sa.String(200)),
    sa.Column("summary", sa.JSON, nullable=False),
    sa.PrimaryKeyConstraint("model", "run_id", name="pk_tuneloop_training_runs"),
)

deployments_table = sa.Table(
    "tuneloop_deployment_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    model_column(),
    sa.Column("event_key", sa.String(64), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False, index=True),  # the registered model
    sa.Column("from_version", sa.String(200)),
    sa.Column("to_version", sa.String(200)),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("run_id", sa.String(250)),
    sa.Column("at", UTCDateTime, nullable=False, index=True),
    sa.Column("details", sa.JSON, nullable=False),
    sa.UniqueConstraint("model", "event_key", name="uq_tuneloop_deployment_events_model_event_key"),
)

suites_table = sa.Table(
    "tuneloop_regression_suites",
    metadata,
    model_column(),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("registered_at", UTCDateTime, nullable=False),
    sa.PrimaryKeyConstraint("model", "name", name="pk_tuneloop_regression_suites"),
)

suite_results_table = sa.Table(
    "tuneloop_suite_results",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    model_column(),
    sa.Column("suite", sa.String(200), nullable=False, index=True),
    sa.Column("model_version", sa.String(200)),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False, index=True),
    sa.Column("wer", sa.Float),  # speech's suites; None for a chat suite
    sa.Column("cer", sa.Float),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("result", sa.JSON, nullable=False),
    sa.Column("metric", sa.String(64)),  # a chat suite's primary metric; None for a speech suite
    sa.Column("score", sa.Float),  # the candidate's mean of that metric
    sa.UniqueConstraint("model", "suite", "run_id", name="uq_tuneloop_suite_results_model_suite_run_id"),
)

served_table = sa.Table(
    "tuneloop_served_requests",
    metadata,
    model_column(),
    sa.Column("request_id", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(200), nullable=False),
    sa.Column("arm", sa.String(16), nullable=False),  # production | canary
    sa.Column("served_at", UTCDateTime, nullable=False),
    sa.Column("latency_ms", sa.Float),
    sa.Column("prompt_tokens", sa.Integer),  # a chat model's usage; None for speech
    sa.Column("completion_tokens", sa.Integer),
    sa.Column("outcome", sa.String(16)),  # None until judged: success | error
    sa.Column("judged_at", UTCDateTime),
    sa.Column("case_id", sa.String(128)),  # the error case a correction of this request became
    sa.PrimaryKeyConstraint("model", "request_id", name="pk_tuneloop_served_requests"),
    # the online test's counts: one version's judged requests since the canary started
    sa.Index("ix_tuneloop_served_requests_model_version_served_at", "model", "model_version", "served_at"),
)

MODEL_TABLES = (cases_table, rejections_table, inferences_table, runs_table, deployments_table, suites_table,
                suite_results_table, served_table)

# The schema version, one row. Not part of ``metadata`` on purpose: emptying the store's tables (a reset, the
# tests' TRUNCATE) must not make a current store look like an unversioned version-1 store.
version_table = sa.Table(
    "tuneloop_schema_version",
    sa.MetaData(),
    sa.Column("version", sa.Integer, nullable=False),
)
