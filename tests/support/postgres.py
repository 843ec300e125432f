"""Fresh schemas on the machine's PostgreSQL, one per store a test needs, dropped after."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


@contextmanager
def fresh_schemas(prefix: str = "evguard_test") -> Iterator[Callable[[], str]]:
    """Yields `new_url()`: each call creates an empty schema and returns a store URL whose
    search_path is that schema. Skips the test when no PostgreSQL answers."""
    admin = sa.create_engine(POSTGRES)
    try:
        with admin.connect():
            pass
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {exc}")
    made: list[str] = []

    def new_url() -> str:
        made.append(f"{prefix}_{uuid.uuid4().hex[:8]}")
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {made[-1]}"))
        return f"{POSTGRES}?options=-csearch_path%3D{made[-1]}"

    try:
        yield new_url
    finally:
        with admin.begin() as conn:
            for schema in made:
                conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
