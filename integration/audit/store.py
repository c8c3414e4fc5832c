"""Append-only storage of audit entries and signed tree heads.

`SqlStore` (SQLAlchemy Core; SQLite by default, PostgreSQL in production) has no UPDATE or
DELETE statement, and `create_schema` installs triggers that make the engine refuse both
(and TRUNCATE on PostgreSQL). `MemoryStore` is the in-memory twin for unit tests. Writers
in several processes coordinate through the primary key: an insert at an index already
taken fails, and the writer catches up and retries.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from integration.audit.codec import EntryRow
from integration.audit.errors import AuditStoreError
from integration.audit.signing import TreeHead

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """Filters for `AuditLog.search`; every field is optional. Times are inclusive."""

    patient_key: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    kinds: tuple[str, ...] = ()
    model_version: str | None = None
    finding: str | None = None
    override: bool | None = None
    ecg_id: str | None = None
    limit: int = 100
    offset: int = 0
    newest_first: bool = True

    def matches(self, row: EntryRow) -> bool:
        return (
            (self.patient_key is None or row.patient_key == self.patient_key)
            and (self.since is None or row.recorded_ms >= int(self.since.timestamp() * 1000))
            and (self.until is None or row.recorded_ms <= int(self.until.timestamp() * 1000))
            and (not self.kinds or row.kind in self.kinds)
            and (self.model_version is None or row.model_version == self.model_version)
            and (self.finding is None or row.finding == self.finding)
            and (self.override is None or row.override == self.override)
            and (self.ecg_id is None or row.ecg_id == self.ecg_id)
        )


class AuditStore(Protocol):
    def create_schema(self) -> None: ...
    def size(self) -> int: ...
    def leaf_hashes(self, start: int, stop: int | None = None) -> list[bytes]: ...
    def insert(self, row: EntryRow, head: TreeHead | None) -> bool: ...
    def add_head(self, head: TreeHead) -> bool: ...
    def heads(self) -> list[TreeHead]: ...
    def stream(self, *, batch: int = 20_000) -> Iterator[tuple[int, bytes, bytes]]: ...
    def rows(self, indexes: list[int]) -> list[EntryRow]: ...
    def search(self, query: SearchQuery) -> list[EntryRow]: ...
    def append_only_enforced(self) -> bool: ...
    def dispose(self) -> None: ...


@dataclass
class MemoryStore:
    """In-memory twin of `SqlStore`. Tests may tamper with ``entries`` and ``tree_heads``."""

    entries: list[EntryRow] = field(default_factory=list)
    tree_heads: list[TreeHead] = field(default_factory=list)

    def create_schema(self) -> None:
        return None

    def size(self) -> int:
        return len(self.entries)

    def leaf_hashes(self, start: int, stop: int | None = None) -> list[bytes]:
        return [r.leaf_hash for r in self.entries[start:stop]]

    def insert(self, row: EntryRow, head: TreeHead | None) -> bool:
        if row.index != len(self.entries):
            return False
        self.entries.append(row)
        if head is not None:
            self.add_head(head)
        return True

    def add_head(self, head: TreeHead) -> bool:
        if any(h.size == head.size for h in self.tree_heads):
            return False
        self.tree_heads.append(head)
        return True

    def heads(self) -> list[TreeHead]:
        return sorted(self.tree_heads, key=lambda h: h.size)

    def stream(self, *, batch: int = 20_000) -> Iterator[tuple[int, bytes, bytes]]:
        for r in self.entries:
            yield r.index, r.entry, r.leaf_hash

    def rows(self, indexes: list[int]) -> list[EntryRow]:
        wanted = set(indexes)
        return [r for r in self.entries if r.index in wanted]

    def search(self, query: SearchQuery) -> list[EntryRow]:
        found = [r for r in self.entries if query.matches(r)]
        if query.newest_first:
            found.reverse()
        return found[query.offset : query.offset + query.limit]

    def append_only_enforced(self) -> bool:
        return True

    def dispose(self) -> None:
        return None


metadata = MetaData()

entries_table = Table(
    "audit_entries",
    metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("recorded_ms", BigInteger, nullable=False),
    Column("kind", String(40), nullable=False),
    Column("outcome", String(4), nullable=False),
    Column("patient_key", String(64), nullable=True),
    Column("ecg_id", String(64), nullable=True),
    Column("model_version", String(64), nullable=True),
    Column("finding", String(64), nullable=True),
    Column("override", Boolean, nullable=False),
    Column("leaf_hash", LargeBinary, nullable=False),
    Column("entry", LargeBinary, nullable=False),
    Index("ix_audit_entries_recorded_ms", "recorded_ms"),
    Index("ix_audit_entries_patient_key", "patient_key"),
    Index("ix_audit_entries_ecg_id", "ecg_id"),
)

heads_table = Table(
    "audit_tree_heads",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root", LargeBinary, nullable=False),
    Column("timestamp_ms", BigInteger, nullable=False),
    Column("key_id", String(16), nullable=False),
    Column("signature", LargeBinary, nullable=False),
)

_TABLES = ("audit_entries", "audit_tree_heads")

_SQLITE_TRIGGERS = [
    f"CREATE TRIGGER IF NOT EXISTS {t}_no_{op.lower()} BEFORE {op} ON {t} "
    f"BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END"
    for t in _TABLES
    for op in ("UPDATE", "DELETE")
]

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit log is append-only (% on %)', TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END $$
"""
_PG_TRIGGERS = [
    stmt
    for t in _TABLES
    for stmt in (
        f"CREATE OR REPLACE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE ON {t} "
        f"FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
        f"CREATE OR REPLACE TRIGGER {t}_no_truncate BEFORE TRUNCATE ON {t} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()",
    )
]


def make_engine(url: str, *, sqlite_synchronous: str = "NORMAL") -> Engine:
    """SQLite gets WAL, a busy timeout and ``synchronous`` as configured; a plain
    ``postgresql://`` URL is given the psycopg 3 driver."""
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != url and not path.startswith(":memory:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        sync = sqlite_synchronous.upper()
        if sync not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"bad SQLite synchronous mode {sqlite_synchronous!r}")

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={sync}")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True)


def _row(m: Any) -> EntryRow:
    return EntryRow(
        index=int(m["idx"]),
        entry=bytes(m["entry"]),
        leaf_hash=bytes(m["leaf_hash"]),
        recorded_ms=int(m["recorded_ms"]),
        kind=m["kind"],
        outcome=m["outcome"],
        patient_key=m["patient_key"],
        ecg_id=m["ecg_id"],
        model_version=m["model_version"],
        finding=m["finding"],
        override=bool(m["override"]),
    )


class SqlStore:
    """The audit tables in the database named by ``ECGBRIDGE_DATABASE_URL``."""

    def __init__(self, engine: Engine, *, pg_synchronous_commit: bool = True) -> None:
        self._engine = engine
        self._pg = engine.dialect.name == "postgresql"
        # off: commit returns before the WAL flush (at most ~3 x wal_writer_delay of
        # entries can be lost in a server crash; never corrupted or reordered)
        self._async_commit = self._pg and not pg_synchronous_commit

    @classmethod
    def from_url(
        cls, url: str, *, sqlite_synchronous: str = "NORMAL", pg_synchronous_commit: bool = True
    ) -> SqlStore:
        store = cls(
            make_engine(url, sqlite_synchronous=sqlite_synchronous),
            pg_synchronous_commit=pg_synchronous_commit,
        )
        store.create_schema()
        return store

    @property
    def engine(self) -> Engine:
        return self._engine

    def create_schema(self) -> None:
        try:
            with self._engine.begin() as conn:
                if self._pg:  # several processes may start at once
                    conn.execute(text("SELECT pg_advisory_xact_lock(7150329)"))
                metadata.create_all(conn)
                for stmt in [_PG_FUNCTION, *_PG_TRIGGERS] if self._pg else _SQLITE_TRIGGERS:
                    conn.execute(text(stmt))
        except SQLAlchemyError as exc:
            raise AuditStoreError(f"audit schema failed: {exc.__class__.__name__}") from exc

    def append_only_enforced(self) -> bool:
        """Are the UPDATE/DELETE-refusing triggers in place?"""
        if self._pg:
            q = text(
                "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgenabled <> 'D' "
                "AND tgname LIKE 'audit_%append_only'"
            )
            want = len(_TABLES)
        else:
            q = text(
                "SELECT count(*) FROM sqlite_master WHERE type='trigger' AND name LIKE "
                "'audit_%_no_%'"
            )
            want = len(_SQLITE_TRIGGERS)
        with self._engine.connect() as conn:
            return int(conn.execute(q).scalar_one()) >= want

    def size(self) -> int:
        from sqlalchemy import func

        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(entries_table)).scalar_one())

    def leaf_hashes(self, start: int, stop: int | None = None) -> list[bytes]:
        c = entries_table.c
        stmt = select(c.leaf_hash).where(c.idx >= start).order_by(c.idx)
        if stop is not None:
            stmt = stmt.where(c.idx < stop)
        with self._engine.connect() as conn:
            return [bytes(h) for (h,) in conn.execute(stmt)]

    def insert(self, row: EntryRow, head: TreeHead | None) -> bool:
        values = {
            "idx": row.index,
            "recorded_ms": row.recorded_ms,
            "kind": row.kind,
            "outcome": row.outcome,
            "patient_key": row.patient_key,
            "ecg_id": row.ecg_id,
            "model_version": row.model_version,
            "finding": row.finding,
            "override": row.override,
            "leaf_hash": row.leaf_hash,
            "entry": row.entry,
        }
        try:
            with self._engine.begin() as conn:
                if self._async_commit:
                    conn.execute(text("SET LOCAL synchronous_commit = off"))
                conn.execute(entries_table.insert().values(**values))
                if head is not None:
                    conn.execute(heads_table.insert().values(**_head_values(head)))
        except IntegrityError:
            return False
        except SQLAlchemyError as exc:
            raise AuditStoreError(f"audit append failed: {exc.__class__.__name__}") from exc
        return True

    def add_head(self, head: TreeHead) -> bool:
        try:
            with self._engine.begin() as conn:
                conn.execute(heads_table.insert().values(**_head_values(head)))
        except IntegrityError:
            return False
        except SQLAlchemyError as exc:
            raise AuditStoreError(f"tree head write failed: {exc.__class__.__name__}") from exc
        return True

    def heads(self) -> list[TreeHead]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(heads_table).order_by(heads_table.c.size))
            return [
                TreeHead(
                    int(r.size), bytes(r.root), int(r.timestamp_ms), r.key_id, bytes(r.signature)
                )
                for r in rows
            ]

    def stream(self, *, batch: int = 20_000) -> Iterator[tuple[int, bytes, bytes]]:
        """Every entry in index order, in batches (keyset pagination: constant memory and
        no long-lived cursor on either engine)."""
        c = entries_table.c
        after = -1
        while True:
            stmt = (
                select(c.idx, c.entry, c.leaf_hash)
                .where(c.idx > after)
                .order_by(c.idx)
                .limit(batch)
            )
            with self._engine.connect() as conn:
                rows = conn.execute(stmt).all()
            yield from rows
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def rows(self, indexes: list[int]) -> list[EntryRow]:
        stmt = select(entries_table).where(entries_table.c.idx.in_(indexes))
        with self._engine.connect() as conn:
            return [_row(r._mapping) for r in conn.execute(stmt.order_by(entries_table.c.idx))]

    def search(self, query: SearchQuery) -> list[EntryRow]:
        c = entries_table.c
        stmt = select(entries_table)
        if query.patient_key is not None:
            stmt = stmt.where(c.patient_key == query.patient_key)
        if query.since is not None:
            stmt = stmt.where(c.recorded_ms >= int(query.since.timestamp() * 1000))
        if query.until is not None:
            stmt = stmt.where(c.recorded_ms <= int(query.until.timestamp() * 1000))
        if query.kinds:
            stmt = stmt.where(c.kind.in_(query.kinds))
        if query.model_version is not None:
            stmt = stmt.where(c.model_version == query.model_version)
        if query.finding is not None:
            stmt = stmt.where(c.finding == query.finding)
        if query.override is not None:
            stmt = stmt.where(c.override == query.override)
        if query.ecg_id is not None:
            stmt = stmt.where(c.ecg_id == query.ecg_id)
        stmt = stmt.order_by(c.idx.desc() if query.newest_first else c.idx)
        stmt = stmt.limit(query.limit).offset(query.offset)
        with self._engine.connect() as conn:
            return [_row(r._mapping) for r in conn.execute(stmt)]

    def dispose(self) -> None:
        self._engine.dispose()


def _head_values(head: TreeHead) -> dict[str, Any]:
    return {
        "size": head.size,
        "root": head.root,
        "timestamp_ms": head.timestamp_ms,
        "key_id": head.key_id,
        "signature": head.signature,
    }
