"""Append-only storage of audit entries and signed tree heads.

`SqlStore` (SQLAlchemy Core; SQLite by default, PostgreSQL in production) has no UPDATE or
DELETE statement, and `create_schema` installs triggers that make the engine refuse both
(and TRUNCATE on PostgreSQL). `MemoryStore` is the in-memory twin for unit tests. Writers
in several processes coordinate through the primary key: an insert at an index already
taken fails, and the writer catches up and retries.

Appends go through one connection the store keeps open (no pool checkout or pre-ping per
entry). On PostgreSQL that connection is in autocommit mode and an append is one
statement (the entry, and a signed head when one is due, in one ``INSERT`` with a
data-modifying CTE): one round trip and one WAL flush per entry.
"""

from __future__ import annotations

import contextlib
import logging
import threading
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
    bindparam,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

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

# Statements built once and executed with parameters (building one per append, with the
# values inlined, costs about 0.2 ms each time).
_ENTRY_INSERT = entries_table.insert()
_HEAD_INSERT = heads_table.insert()
_PG_ENTRY_AND_HEAD_INSERT = _ENTRY_INSERT.values(
    {c.name: bindparam(c.name, type_=c.type) for c in entries_table.columns}
).add_cte(
    heads_table.insert()
    .values({c.name: bindparam(f"h_{c.name}", type_=c.type) for c in heads_table.columns})
    .cte("h")
)
_PG_INSERT_UNLESS_TAKEN = (
    pg_insert(entries_table)
    .on_conflict_do_nothing(index_elements=[entries_table.c.idx])
    .returning(entries_table.c.idx)
)
_SQLITE_INSERT_UNLESS_TAKEN = (
    sqlite_insert(entries_table)
    .on_conflict_do_nothing(index_elements=[entries_table.c.idx])
    .returning(entries_table.c.idx)
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
        self._writer_lock = threading.Lock()
        self._writer: Connection | None = None

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

    def _writer_conn(self) -> Connection:
        """The held append connection (opened on first use and after a failure)."""
        conn = self._writer
        if conn is None or conn.closed or conn.invalidated:
            if conn is not None:
                conn.close()
            conn = self._engine.connect()
            if self._pg:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                if self._async_commit:
                    conn.execute(text("SET synchronous_commit = off"))
            self._writer = conn
        return conn

    def _drop_writer(self) -> None:
        conn, self._writer = self._writer, None
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError):  # already gone
                conn.invalidate()

    def _insert_once(self, row: EntryRow, head: TreeHead | None) -> None:
        conn = self._writer_conn()
        values = entry_values(row)
        if self._pg:  # one statement, atomic: autocommit makes it its own transaction
            if head is None:
                conn.execute(_ENTRY_INSERT, values)
            else:
                heads = {f"h_{k}": v for k, v in _head_values(head).items()}
                conn.execute(_PG_ENTRY_AND_HEAD_INSERT, values | heads)
            return
        with conn.begin():
            conn.execute(_ENTRY_INSERT, values)
            if head is not None:
                conn.execute(_HEAD_INSERT, _head_values(head))

    def insert(self, row: EntryRow, head: TreeHead | None) -> bool:
        """Insert entry ``row`` (and ``head``) atomically. False when the index (or the
        head's size) is taken: another writer appended first. A connection lost before
        or during the statement is replaced and the statement sent once more; if the
        first one had in fact committed, the second fails as taken, and the caller sees
        its own row at that index (`AuditLog` checks the leaf hash)."""
        with self._writer_lock:
            for attempt in (1, 2):
                try:
                    self._insert_once(row, head)
                except IntegrityError:
                    return False
                except DBAPIError as exc:
                    self._drop_writer()
                    if attempt == 1 and exc.connection_invalidated:
                        log.warning("audit append connection lost; reconnecting")
                        continue
                    raise AuditStoreError(f"audit append failed: {exc.__class__.__name__}") from exc
                except SQLAlchemyError as exc:
                    self._drop_writer()
                    raise AuditStoreError(f"audit append failed: {exc.__class__.__name__}") from exc
                return True
        raise AssertionError("unreachable")  # pragma: no cover

    def insert_in(self, conn: Connection, row: EntryRow, head: TreeHead | None) -> bool:
        """Insert entry ``row`` (and ``head``) inside the caller's open transaction on
        ``conn`` (a connection to this same database): they commit or roll back with it.
        False when the index is taken; ``ON CONFLICT DO NOTHING`` keeps the caller's
        transaction usable, so the caller catches up and tries the next index in it."""
        if _database_of(conn.engine.url) != _database_of(self._engine.url):
            raise AuditStoreError(
                f"the audit log is on {_database_of(self._engine.url)}, the transaction on "
                f"{_database_of(conn.engine.url)}: one commit needs one database"
            )
        stmt = _PG_INSERT_UNLESS_TAKEN if self._pg else _SQLITE_INSERT_UNLESS_TAKEN
        try:
            if conn.execute(stmt, entry_values(row)).first() is None:
                return False
            if head is not None:
                conn.execute(_HEAD_INSERT, _head_values(head))
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
        with self._writer_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        self._engine.dispose()


def entry_values(row: EntryRow) -> dict[str, Any]:
    """The column values of an entry row."""
    return {
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


def _head_values(head: TreeHead) -> dict[str, Any]:
    return {
        "size": head.size,
        "root": head.root,
        "timestamp_ms": head.timestamp_ms,
        "key_id": head.key_id,
        "signature": head.signature,
    }


def _database_of(url: URL) -> str:
    """Which database a URL names (driver and password left out): two engines on the same
    database may share a commit, two databases of one kind may not."""
    return f"{url.get_backend_name()}://{url.host or ''}:{url.port or ''}/{url.database or ''}"
