"""`AuditLog`: the one object the rest of ecgbridge talks to.

``append`` writes an entry (PHI encrypted, HMAC search key, chained, Merkle leaf) and every
``head_interval`` entries, or when the last head is older than ``head_max_age_s``, a signed
tree head in the same transaction. Several processes may append to one database: each
keeps the chain state (next index, last leaf hash, Merkle frontier) in memory and writes
without reading first; the primary key on the index makes the insert fail when another
process took that index, and the writer then catches up from the stored leaf hashes and
retries. The chain never forks: an entry is only ever written at the index right after the
leaf it chains to.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.engine import Connection

from integration.audit import merkle
from integration.audit.codec import ZERO_HASH, EntryRow, decode, decrypt_patient, encode
from integration.audit.crypto import PhiCipher, PhiKeyRing
from integration.audit.errors import AuditStoreError, PhiDecryptionError
from integration.audit.events import AuditEvent, PatientRef, StoredEvent
from integration.audit.signing import HeadSigner, HeadVerifier, TreeHead, public_key_from_raw
from integration.audit.store import AuditStore, MemoryStore, SearchQuery, SqlStore
from integration.audit.verify import VerifyReport, verify_log
from integration.inbox import TransactionHook

log = logging.getLogger(__name__)

_MAX_RETRIES = 50


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """RFC 6962 audit path of entry ``index`` in the tree of signed head ``head``."""

    index: int
    leaf_hash: bytes
    path: list[bytes]
    head: TreeHead

    def verify(self) -> bool:
        return merkle.verify_inclusion(
            index=self.index,
            size=self.head.size,
            leaf=self.leaf_hash,
            proof=self.path,
            root=self.head.root,
        )


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    """RFC 6962 proof that signed head ``old`` is a prefix of signed head ``new``."""

    old: TreeHead
    new: TreeHead
    path: list[bytes]

    def verify(self) -> bool:
        return merkle.verify_consistency(
            size1=self.old.size,
            size2=self.new.size,
            root1=self.old.root,
            root2=self.new.root,
            proof=self.path,
        )


@dataclass(frozen=True, slots=True)
class EntryCheck:
    """Verification status of one entry, for the review page."""

    index: int
    ok: bool
    message: str
    head_size: int | None = None


class AuditLog:
    """Tamper-evident, append-only audit log over an `AuditStore`."""

    def __init__(
        self,
        store: AuditStore,
        *,
        signer: HeadSigner,
        phi_keys: PhiKeyRing,
        trusted_public_keys: Iterable[Ed25519PublicKey] = (),
        head_interval: int = 256,
        head_max_age_s: float = 60.0,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.store = store
        self.signer = signer
        self.cipher = PhiCipher(phi_keys)
        self.verifier = HeadVerifier([signer.public, *trusted_public_keys])
        self._interval = head_interval
        self._max_age_ms = int(head_max_age_s * 1000)
        self._clock = clock
        self._lock = threading.Lock()
        self._frontier = merkle.Frontier()
        self._last_leaf = ZERO_HASH
        self._last_head_ms: int | None = None
        self._synced = False
        #: Appends that found their index taken (by another writer) and retried.
        self.conflicts = 0

    @classmethod
    def in_memory(
        cls,
        *,
        head_interval: int = 256,
        head_max_age_s: float = 60.0,
        clock: Callable[[], datetime] = _utcnow,
    ) -> AuditLog:
        """A log on a `MemoryStore` with fresh keys: the unit-test twin."""
        return cls(
            MemoryStore(),
            signer=HeadSigner.generate(),
            phi_keys=PhiKeyRing.generate(),
            head_interval=head_interval,
            head_max_age_s=head_max_age_s,
            clock=clock,
        )

    @classmethod
    def from_settings(cls, settings: object | None = None) -> AuditLog:
        """The log in the database of ``ECGBRIDGE_DATABASE_URL`` with the configured keys
        (an `AuditSettings`; read from the environment when None)."""
        from integration.audit.config import (
            AuditSettings,
            get_audit_settings,
            load_phi_keys,
            load_signer,
            trusted_keys,
        )

        s = settings if isinstance(settings, AuditSettings) else get_audit_settings()
        store = SqlStore.from_url(
            s.effective_database_url,
            sqlite_synchronous=s.audit_sqlite_synchronous,
            pg_synchronous_commit=s.audit_pg_synchronous_commit,
        )
        return cls(
            store,
            signer=load_signer(s),
            phi_keys=load_phi_keys(s),
            trusted_public_keys=[public_key_from_raw(k) for k in trusted_keys(s)],
            head_interval=s.audit_head_interval,
            head_max_age_s=s.audit_head_max_age_s,
        )

    def close(self) -> None:
        self.store.dispose()

    # -- writing -------------------------------------------------------------------------

    def _catch_up(self) -> None:
        """Read what other writers appended since our frontier."""
        if self._last_head_ms is None:
            heads = self.store.heads()
            self._last_head_ms = heads[-1].timestamp_ms if heads else 0
        for lh in self.store.leaf_hashes(self._frontier.size):
            self._frontier.append(lh)
            self._last_leaf = lh
        self._synced = True

    def _next(self, event: AuditEvent) -> tuple[EntryRow, merkle.Frontier, TreeHead | None]:
        """The entry for ``event`` at the next index, the frontier with it, and a signed
        head when one is due."""
        row = encode(self._frontier.size, self._last_leaf, event, self.cipher)
        frontier = self._frontier.copy()
        frontier.append(row.leaf_hash)
        now_ms = int(self._clock().timestamp() * 1000)
        head = None
        if frontier.size % self._interval == 0 or (
            now_ms - (self._last_head_ms or 0) >= self._max_age_ms
        ):
            head = self.signer.sign(frontier.size, frontier.root(), now_ms)
        return row, frontier, head

    def _advance(self, row: EntryRow, frontier: merkle.Frontier, head: TreeHead | None) -> None:
        self._frontier, self._last_leaf = frontier, row.leaf_hash
        if head is not None:
            self._last_head_ms = head.timestamp_ms

    def append(self, event: AuditEvent) -> int:
        """Append one event; returns its index. Raises `AuditStoreError` when the store
        cannot commit (the caller must not report the audited action as done).

        One insert per entry in the common case: the chain state is read from the store
        only on the first append and after another writer took the index."""
        with self._lock:
            if not self._synced:
                self._catch_up()
            for _ in range(_MAX_RETRIES):
                row, frontier, head = self._next(event)
                if self.store.insert(row, head):
                    self._advance(row, frontier, head)
                    return row.index
                # Taken: another writer appended first, or our own insert committed and
                # its reply was lost with the connection (the store resent it). Catch up;
                # our own leaf at that index means the event is in, exactly once.
                self._catch_up()
                if self.store.leaf_hashes(row.index, row.index + 1) == [row.leaf_hash]:
                    return row.index
                self.conflicts += 1
            raise AuditStoreError("audit append lost the race for an index too many times")

    def in_transaction(self, event_for: Callable[[str], AuditEvent]) -> TransactionHook:
        """A hook for `Inbox.accept` (same database): the entry ``event_for(item_id)`` is
        written inside the inbox's transaction, so the item and its audit entry commit
        together, with one commit (one WAL flush) instead of two, or not at all.

        The log's lock is held from the insert until the transaction ends (no other
        append of this process may chain onto an entry that could still roll back); the
        chain state advances only when it committed. Raises `AuditStoreError` (which rolls
        the item back) when the entry cannot be written."""
        store = self.store
        if not isinstance(store, SqlStore):
            raise TypeError("in-transaction appends need the SQL store")

        def hook(conn: Connection, item_id: str) -> Callable[[bool], None]:
            event = event_for(item_id)
            self._lock.acquire()
            try:
                if not self._synced:
                    self._catch_up()
                for _ in range(_MAX_RETRIES):
                    row, frontier, head = self._next(event)
                    if store.insert_in(conn, row, head):
                        break
                    self.conflicts += 1
                    self._catch_up()
                else:
                    raise AuditStoreError("audit append lost the race for an index too often")
            except BaseException:
                self._lock.release()
                raise

            def finish(committed: bool) -> None:
                try:
                    if committed:
                        self._advance(row, frontier, head)
                finally:
                    self._lock.release()

            return finish

        return hook

    def sign_head(self) -> TreeHead | None:
        """Sign a tree head over the whole log now (None when the log is empty)."""
        with self._lock:
            self._catch_up()
            if self._frontier.size == 0:
                return None
            now_ms = int(self._clock().timestamp() * 1000)
            head = self.signer.sign(self._frontier.size, self._frontier.root(), now_ms)
            if self.store.add_head(head):
                self._last_head_ms = now_ms
                return head
        return self.latest_head()

    def latest_head(self) -> TreeHead | None:
        heads = self.store.heads()
        return heads[-1] if heads else None

    # -- reading -------------------------------------------------------------------------

    def size(self) -> int:
        return self.store.size()

    def patient_key(self, identifier: str) -> str:
        return self.cipher.patient_key(identifier)

    def search(self, query: SearchQuery) -> list[StoredEvent]:
        """Entries matching ``query``, decoded from their bytes (never from the index
        columns). An entry whose bytes do not parse is left out and logged by index."""
        out: list[StoredEvent] = []
        for row in self.store.search(query):
            ev = self._decode(row)
            if ev is not None:
                out.append(ev)
        return out

    def entry(self, index: int) -> StoredEvent | None:
        rows = self.store.rows([index])
        return self._decode(rows[0]) if rows else None

    def patient(self, event: StoredEvent) -> PatientRef | None:
        """Decrypt an entry's patient. Raises `PhiDecryptionError` when it cannot."""
        return decrypt_patient(event, self.cipher)

    def _decode(self, row: EntryRow) -> StoredEvent | None:
        try:
            return decode(row.entry)
        except (ValueError, KeyError, TypeError):
            log.warning("audit entry %d does not parse", row.index)
            return None

    # -- proofs and verification --------------------------------------------------------

    def verify(self) -> VerifyReport:
        return verify_log(
            self.store.stream(),
            self.store.heads(),
            self.verifier,
            append_only_enforced=self.store.append_only_enforced(),
        )

    def _head_covering(self, size: int) -> TreeHead:
        for h in self.store.heads():
            if h.size >= size and self.verifier.check(h):
                return h
        head = self.sign_head()
        if head is None or head.size < size:
            raise ValueError(f"no entry {size - 1} in the log")
        return head

    def inclusion_proof(self, index: int, *, size: int | None = None) -> InclusionProof:
        """Audit path of entry ``index`` in the first signed head covering it (or the head
        of exactly ``size``). The leaf hash is recomputed from the entry's bytes."""
        head = self._head_exact(size) if size is not None else self._head_covering(index + 1)
        rows = self.store.rows([index])
        if not rows or index >= head.size:
            raise ValueError(f"entry {index} is not in the tree of size {head.size}")
        hashes = self.store.leaf_hashes(0, head.size)
        own = merkle.leaf_hash(rows[0].entry)
        hashes[index] = own
        return InclusionProof(index, own, merkle.inclusion_proof(index, hashes), head)

    def consistency_proof(self, size1: int, size2: int) -> ConsistencyProof:
        """Proof between the signed heads of sizes ``size1`` < ``size2``."""
        old, new = self._head_exact(size1), self._head_exact(size2)
        hashes = self.store.leaf_hashes(0, size2)
        return ConsistencyProof(old, new, merkle.consistency_proof(size1, hashes))

    def _head_exact(self, size: int) -> TreeHead:
        for h in self.store.heads():
            if h.size == size:
                return h
        raise ValueError(f"no signed tree head of size {size}")

    def check_entry(self, index: int) -> EntryCheck:
        """Is entry ``index`` intact: its bytes match its leaf hash, it chains to its
        neighbours, and its inclusion proof leads to a validly signed tree head?"""
        rows = {r.index: r for r in self.store.rows([index - 1, index, index + 1])}
        row = rows.get(index)
        if row is None:
            return EntryCheck(index, False, "entry not found")
        own = merkle.leaf_hash(row.entry)
        if own != row.leaf_hash or int.from_bytes(row.entry[:8], "big") != index:
            return EntryCheck(index, False, "entry content does not match its leaf hash")
        before, after = rows.get(index - 1), rows.get(index + 1)
        # the predecessor's *stored* hash: an altered predecessor is its own failure
        if (before is not None and row.entry[8:40] != before.leaf_hash) or (
            after is not None and after.entry[8:40] != own
        ):
            return EntryCheck(index, False, "entry does not chain to its neighbours")
        try:
            proof = self.inclusion_proof(index)
        except ValueError as exc:
            return EntryCheck(index, False, str(exc))
        if not proof.verify():
            return EntryCheck(
                index, False, "inclusion proof does not reach the signed root", proof.head.size
            )
        return EntryCheck(
            index, True, f"included in signed tree head of size {proof.head.size}", proof.head.size
        )


__all__ = [
    "AuditLog",
    "ConsistencyProof",
    "EntryCheck",
    "InclusionProof",
    "PhiDecryptionError",
]
