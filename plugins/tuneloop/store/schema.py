"""The store's tables (``metadata``) and the column type that keeps every time in UTC."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from tuneloop.intake import as_utc


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Stores naive UTC (portable across SQLite and PostgreSQL) and hands back aware UTC datetimes."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else as_utc(value).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


metadata = sa.MetaData()

cases_table = sa.Table(
    "tuneloop_error_cases",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("created_at", UTCDateTime, nullable=False, index=True),
    sa.Column("ingested_at", UTCDateTime, nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(200), index=True),
    sa.Column("audio_uri", sa.Text, nullable=False),
    sa.Column("audio_hash", sa.String(64), index=True),
    sa.Column("prediction", sa.Text, nullable=False),
    sa.Column("correction", sa.Text),
    sa.Column("error_types", sa.JSON, nullable=False),
    sa.Column("error_score", sa.Float),
    sa.Column("annotator", sa.String(200)),
    sa.Column("metadata", sa.JSON, nullable=False, key="meta"),
    sa.Column("content_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("state_reason", sa.Text),
    sa.Column("state_changed_at", UTCDateTime),
    sa.Column("consumed_by_run", sa.String(250)),
)

rejections_table = sa.Table(
    "tuneloop_ingest_rejections",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rejection_key", sa.String(64), nullable=False, unique=True),
    sa.Column("batch", sa.Text, nullable=False),
    sa.Column("line", sa.Integer, nullable=False),
    sa.Column("field", sa.String(100), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("snippet", sa.Text, nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
)

inferences_table = sa.Table(
    "tuneloop_inference_counts",
    metadata,
    sa.Column("model_version", sa.String(200), primary_key=True),
    sa.Column("period_start", UTCDateTime, primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
)

runs_table = sa.Table(
    "tuneloop_training_runs",
    metadata,
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime, index=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("dataset_id", sa.String(100)),
    sa.Column("candidate_version", sa.String(200)),
    sa.Column("summary", sa.JSON, nullable=False),
)

deployments_table = sa.Table(
    "tuneloop_deployment_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_key", sa.String(64), nullable=False, unique=True),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False, index=True),
    sa.Column("from_version", sa.String(200)),
    sa.Column("to_version", sa.String(200)),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("run_id", sa.String(250)),
    sa.Column("at", UTCDateTime, nullable=False, index=True),
    sa.Column("details", sa.JSON, nullable=False),
)

suites_table = sa.Table(
    "tuneloop_regression_suites",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("registered_at", UTCDateTime, nullable=False),
)

suite_results_table = sa.Table(
    "tuneloop_suite_results",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("suite", sa.String(200), nullable=False, index=True),
    sa.Column("model_version", sa.String(200)),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False, index=True),
    sa.Column("wer", sa.Float, nullable=False),
    sa.Column("cer", sa.Float, nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("result", sa.JSON, nullable=False),
    sa.UniqueConstraint("suite", "run_id", name="uq_tuneloop_suite_results_suite_run"),
)
