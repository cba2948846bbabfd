"""The outcome store's schema, once per dialect, as numbered migrations.

Both dialects hold the same tables: ``outcomes`` keyed by ``(ticket_id, graph_hash)`` (the
whole Outcome as JSON, plus the columns a query filters on), ``labels`` keyed by
``(ticket_id, source)``, ``graphs`` (tiers and precision targets by graph hash) and
``reference_histograms`` (a tier's calibration-time confidence distribution, by graph name
and tier). Applied versions are recorded in ``schema_version``; add a version at the end of
both tuples, never edit an applied one. PostgreSQL's version 1 is the ``outcomes`` table the
queue workers have always written, so an existing worker database upgrades in place.
"""

from __future__ import annotations

SQLITE: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE outcomes (
            ticket_id   TEXT    NOT NULL,
            graph_hash  TEXT    NOT NULL,
            graph       TEXT,
            run_id      TEXT    NOT NULL,
            status      TEXT    NOT NULL,
            route       TEXT    NOT NULL,
            category    TEXT,
            priority    TEXT,
            cost_usd    REAL    NOT NULL DEFAULT 0,
            latency_ms  REAL    NOT NULL DEFAULT 0,
            outcome     TEXT    NOT NULL,
            writes      INTEGER NOT NULL DEFAULT 1,
            created_at  REAL    NOT NULL,
            updated_at  REAL    NOT NULL,
            PRIMARY KEY (ticket_id, graph_hash)
        ) WITHOUT ROWID;
        CREATE INDEX outcomes_created_at ON outcomes (created_at);
        CREATE INDEX outcomes_status_route ON outcomes (status, route);
        """,
    ),
    (
        2,
        """
        CREATE TABLE labels (
            ticket_id   TEXT NOT NULL,
            source      TEXT NOT NULL CHECK (source IN ('shadow', 'human', 'dataset')),
            label       TEXT NOT NULL,
            graph_hash  TEXT,
            tier        TEXT,
            acceptable  INTEGER,
            cost_usd    REAL NOT NULL DEFAULT 0,
            created_at  REAL NOT NULL,
            PRIMARY KEY (ticket_id, source)
        ) WITHOUT ROWID;
        CREATE TABLE graphs (graph_hash TEXT PRIMARY KEY, info TEXT NOT NULL, created_at REAL NOT NULL);
        CREATE TABLE reference_histograms (
            graph TEXT NOT NULL, tier TEXT NOT NULL, reference TEXT NOT NULL, created_at REAL NOT NULL,
            PRIMARY KEY (graph, tier)
        );
        """,
    ),
)

POSTGRES: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE outcomes (
            ticket_id   text             NOT NULL,
            graph_hash  text             NOT NULL,
            graph       text,
            run_id      text             NOT NULL,
            status      text             NOT NULL,
            route       text             NOT NULL,
            category    text,
            priority    text,
            cost_usd    double precision NOT NULL DEFAULT 0,
            latency_ms  double precision NOT NULL DEFAULT 0,
            outcome     jsonb            NOT NULL,
            writes      integer          NOT NULL DEFAULT 1,
            created_at  timestamptz      NOT NULL DEFAULT now(),
            updated_at  timestamptz      NOT NULL DEFAULT now(),
            PRIMARY KEY (ticket_id, graph_hash)
        );
        CREATE INDEX outcomes_created_at ON outcomes (created_at);
        CREATE INDEX outcomes_status_route ON outcomes (status, route);
        """,
    ),
    (
        2,
        """
        CREATE TABLE labels (
            ticket_id   text             NOT NULL,
            source      text             NOT NULL CHECK (source IN ('shadow', 'human', 'dataset')),
            label       text             NOT NULL,
            graph_hash  text,
            tier        text,
            acceptable  boolean,
            cost_usd    double precision NOT NULL DEFAULT 0,
            created_at  timestamptz      NOT NULL DEFAULT now(),
            PRIMARY KEY (ticket_id, source)
        );
        CREATE TABLE graphs (graph_hash text PRIMARY KEY, info jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
        CREATE TABLE reference_histograms (
            graph text NOT NULL, tier text NOT NULL, reference jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (graph, tier)
        );
        """,
    ),
)


OUTCOME_COLUMNS = (
    "ticket_id", "graph_hash", "graph", "run_id", "status", "route", "category", "priority",
    "cost_usd", "latency_ms", "outcome",
)  # fmt: skip
LABEL_COLUMNS = ("ticket_id", "source", "label", "graph_hash", "tier", "acceptable", "cost_usd")


def upserts(param: str, time: str) -> tuple[str, str]:
    """The outcome and label upserts in one dialect: ``param`` spells a named parameter
    (``:{}`` or ``%({})s``) and ``time`` turns a Unix-seconds parameter into the column's time."""

    def values(names: tuple[str, ...]) -> str:
        return ", ".join(param.format(n) for n in names)

    def updates(names: tuple[str, ...]) -> str:
        return ", ".join(f"{n} = excluded.{n}" for n in names)

    at = time.format(param.format("at"))
    outcome = (
        f"INSERT INTO outcomes ({', '.join(OUTCOME_COLUMNS)}, created_at, updated_at) "
        f"VALUES ({values(OUTCOME_COLUMNS)}, {at}, {at}) "
        f"ON CONFLICT (ticket_id, graph_hash) DO UPDATE SET {updates(OUTCOME_COLUMNS[2:])}, "
        "writes = outcomes.writes + 1, updated_at = excluded.updated_at"
    )
    label = (
        f"INSERT INTO labels ({', '.join(LABEL_COLUMNS)}, created_at) "
        f"VALUES ({values(LABEL_COLUMNS)}, {time.format(param.format('created_at'))}) "
        f"ON CONFLICT (ticket_id, source) DO UPDATE SET {updates((*LABEL_COLUMNS[2:], 'created_at'))}"
    )
    return outcome, label
