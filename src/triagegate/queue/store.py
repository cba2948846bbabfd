"""The workers' outcome store: the PostgreSQL dialect of :mod:`triagegate.store`.

The queue writes to the one outcome store every interface shares; this module keeps the
names the queue has always imported.
"""

from __future__ import annotations

from triagegate.store.postgres import MIGRATIONS, OutcomeStore, migrate, migrate_dsn, outcome_row

__all__ = ["MIGRATIONS", "OutcomeStore", "migrate", "migrate_dsn", "outcome_row"]
