"""Shared fixtures. Tests that start real servers are marked `e2e`."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

POSTGRES_URL = os.environ.get(
    "ECGBRIDGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def _postgres_up() -> bool:
    import psycopg

    try:
        with psycopg.connect(POSTGRES_URL.replace("+psycopg", ""), connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL server. Required in CI; elsewhere the test is skipped if it is down."""
    if not _postgres_up():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_URL} (required in CI)")
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL}")
    return POSTGRES_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[str]:
    """Both inbox engines: a fresh SQLite file, and the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/inbox.sqlite3"
    else:
        yield str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:12]


@contextmanager
def _new_database(postgres_url: str, prefix: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL server, dropped afterwards."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = postgres_url.replace("+psycopg", "")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL server, dropped afterwards (so state left by
    an earlier run can never satisfy a test)."""
    with _new_database(postgres_url, "ecgbridge_test") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def audit_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty audit database: a SQLite file, or a new database on the PostgreSQL server
    (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/audit.sqlite3"
        return
    with _new_database(str(request.getfixturevalue("postgres_url")), "ecgbridge_audit") as url:
        yield url
