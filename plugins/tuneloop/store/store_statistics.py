"""The store's counts for ``tuneloop status`` and the seed's ``get_statistics``, computed by the database.

Every number is an SQL aggregate: Python receives one row per group (state, model version, error type, inference
version, run status), never one per case, so the cost is what the database's scans cost, and memory does not grow
with the store (reading every case's ``error_types`` into Python took 3.9 s at a million cases).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tuneloop.store.cases import CASE_STATES
from tuneloop.store.database import StoreBase, _grouped
from tuneloop.store.schema import cases_table, inferences_table, rejections_table, runs_table

UNKNOWN_VERSION = "unknown"  # how cases without a model version are counted in ``by_model_version``


@dataclass(frozen=True)
class StoreStatistics:
    """Counts for ``tuneloop status`` and the seed's ``get_statistics``, of one model.

    ``by_error_type`` is ordered like ``Counter.most_common``: most frequent first; types with the same count by
    name (code-point order, the same on every database whatever its collation).
    """

    model: str
    total_cases: int
    by_state: dict[str, int]
    corrected_cases: int
    new_corrected_cases: int
    by_model_version: dict[str, int]
    by_error_type: dict[str, int]
    rejected_rows: int
    inferences_total: int
    inferences_by_model_version: dict[str, int]
    training_runs_by_status: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StatisticsRecords(StoreBase):
    """The store's model's totals (``ErrorCaseStore.statistics``)."""

    def statistics(self) -> StoreStatistics:
        """The model's totals by state, model version and error type, plus rejections, inferences and runs.

        Cases are counted by four aggregate queries rather than one, because each alone is answered from an
        index without reading the table: cases by state (the ``(model, state, created_at)`` index), corrected
        cases by state (the partial index of corrected cases), cases by model version (``(model, model_version,
        created_at)``); only the error types (:func:`error_type_counts`) read the table. One query grouping by
        state and version together reads every row (SQLite: twice as slow at a million cases). The error types,
        the one query that reads the table, run at the same time on a second connection (unless the store has a
        single one: in memory), so the database works on both at once: each query has always been its own
        snapshot. Cases without a model version count as ``"unknown"``, together with a version literally named so.
        """
        c, i, r = cases_table.c, inferences_table.c, runs_table.c
        mine = c.model == self._model
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="statistics") as pool:
            types = None if self.single_connection else pool.submit(self._error_type_counts)
            return self._statistics(mine, c, i, r, types)

    def _error_type_counts(self) -> dict[str, int]:
        with self._engine.connect() as conn:
            return error_type_counts(conn, self._model)

    def _statistics(self, mine: Any, c: Any, i: Any, r: Any, types: Future[dict[str, int]] | None) -> StoreStatistics:
        with self._engine.connect() as conn:
            by_state = dict.fromkeys(CASE_STATES, 0) | _grouped(conn, c.state, sa.func.count(), mine)
            corrected = _grouped(conn, c.state, sa.func.count(), mine & c.correction.is_not(None))
            by_version: dict[str, int] = {}
            for version, cases in _grouped(conn, c.model_version, sa.func.count(), mine).items():
                key = UNKNOWN_VERSION if version is None else str(version)
                by_version[key] = by_version.get(key, 0) + cases
            error_types = types.result() if types is not None else error_type_counts(conn, self._model)
            rejected = conn.scalar(sa.select(sa.func.count()).select_from(rejections_table)
                                   .where(rejections_table.c.model == self._model)) or 0
            inferences = _grouped(conn, i.model_version, sa.func.sum(i.count), i.model == self._model)
            runs = _grouped(conn, r.status, sa.func.count(), r.model == self._model)
        return StoreStatistics(
            model=self._model,
            total_cases=sum(by_state.values()),
            by_state=by_state,
            corrected_cases=sum(corrected.values()),
            new_corrected_cases=corrected.get("new", 0),
            by_model_version=dict(sorted(by_version.items())),
            by_error_type=error_types,
            rejected_rows=rejected,
            inferences_total=int(sum(inferences.values())),
            inferences_by_model_version={k: int(v) for k, v in inferences.items()},
            training_runs_by_status=runs,
        )


def error_type_counts(conn: Connection, model: str) -> dict[str, int]:
    """How many of ``model``'s cases name each error type (a type named twice in one case counts twice), most
    frequent first, ties by name in code-point order.

    The cases are first grouped by their list as stored (few distinct lists: each is a handful of labels from a
    short vocabulary), then each distinct list is expanded into its elements by the database's table-valued
    function and the counts summed per element. Expanding every case's list instead parses a million JSON arrays
    at a million cases: SQLite 0.7-1.0 s and PostgreSQL 1.2 s, against 0.5 s and 0.3 s this way (and SQLite
    0.05 s with an index on ``(model, error_types)``, which it walks in order instead of sorting). Were every
    list different, this would cost one sort more than expanding each case's list.

    Dialect-specific, because it has to be: SQLite groups the column itself (so such an index serves it) and
    expands it with ``json_each``; PostgreSQL's ``json`` type has no equality, so the lists are grouped as text
    and cast back to ``json`` for ``json_array_elements_text`` (SQLite would read ``CAST(... AS JSON)`` as a
    number). Neither database has the other's function, and SQLAlchemy has no portable spelling of "the elements
    of a JSON array"; both return the elements as text in a column named ``value``. The order is applied here,
    on the few aggregated rows, because ``ORDER BY`` on text follows the database's collation, which differs
    between SQLite (code points) and PostgreSQL (the locale's).
    """
    c = cases_table.c
    postgres = conn.dialect.name == "postgresql"
    stored = sa.cast(c.error_types, sa.Text) if postgres else c.error_types
    lists = (sa.select(stored.label("list"), sa.func.count().label("cases"))
             .where(c.model == model).group_by(stored).subquery("lists"))
    if postgres:
        elements = sa.func.json_array_elements_text(sa.cast(lists.c.list, sa.JSON)).table_valued("value")
    else:
        elements = sa.func.json_each(lists.c.list).table_valued("value")
    query = (sa.select(elements.c.value, sa.func.sum(lists.c.cases))
             .select_from(lists).join(elements, sa.true()).group_by(elements.c.value))
    counts = ((str(name), int(n)) for name, n in conn.execute(query).tuples())
    return dict(sorted(counts, key=lambda item: (-item[1], item[0])))
