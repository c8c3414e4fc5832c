"""Whole-log verification in one streaming pass.

Checks, stopping at the first failure and naming the first entry that cannot be trusted:
1. every tree head's Ed25519 signature (trusted keys only);
2. entries are contiguous (no gap: a deletion) and each entry's embedded index equals its
   position (no reordering);
3. each entry's leaf hash recomputed from its bytes equals the stored one (a flipped byte);
4. each entry names its predecessor's leaf hash (a rewrite of content and stored hash);
5. the Merkle root after ``size`` entries equals every signed head's root (a rewrite of a
   whole suffix); then the first bad entry is the first one after the last good head;
6. the log is not shorter than its largest signed head (truncation).
Memory is O(log n); time is one SHA-256 per entry plus one per tree node.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from integration.audit.codec import HEADER, ZERO_HASH
from integration.audit.merkle import Frontier, leaf_hash
from integration.audit.signing import HeadVerifier, TreeHead


class Problem(StrEnum):
    BAD_SIGNATURE = "bad-signature"
    MISSING_ENTRY = "missing-entry"
    REORDERED = "reordered"
    CONTENT_ALTERED = "content-altered"
    CHAIN_BROKEN = "chain-broken"
    ROOT_MISMATCH = "root-mismatch"
    TRUNCATED = "truncated"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Outcome of `verify_log`. ``first_bad_index`` is None when the log is intact."""

    ok: bool
    size: int
    heads_checked: int
    signed_size: int
    root: bytes
    first_bad_index: int | None = None
    problem: Problem | None = None
    message: str = ""
    append_only_enforced: bool = True
    seconds: float = 0.0
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def unsigned_entries(self) -> int:
        """Entries after the last signed head: chained, but not yet under a signature."""
        return self.size - self.signed_size


def verify_log(
    stream: Iterable[tuple[int, bytes, bytes]],
    heads: list[TreeHead],
    verifier: HeadVerifier,
    *,
    append_only_enforced: bool = True,
) -> VerifyReport:
    t0 = time.perf_counter()
    heads = sorted(heads, key=lambda h: h.size)
    warnings: list[str] = []
    if not append_only_enforced:
        warnings.append("the append-only triggers are missing or disabled")

    def fail(index: int, size: int, root: bytes, problem: Problem, msg: str) -> VerifyReport:
        return VerifyReport(
            ok=False,
            size=size,
            heads_checked=len(heads),
            signed_size=good_signed,
            root=root,
            first_bad_index=index,
            problem=problem,
            message=msg,
            append_only_enforced=append_only_enforced,
            seconds=time.perf_counter() - t0,
            warnings=tuple(warnings),
        )

    good_signed = 0
    for h in heads:
        if not verifier.check(h):
            return fail(
                max(h.size - 1, 0),
                0,
                b"",
                Problem.BAD_SIGNATURE,
                f"tree head at size {h.size}: signature does not verify (key {h.key_id})",
            )

    frontier = Frontier()
    prev = ZERO_HASH
    expected = 0
    hi = 0  # next head to compare
    n_heads = len(heads)
    _leaf = leaf_hash
    for idx, entry, stored in stream:
        if idx != expected:
            return fail(
                expected,
                expected,
                frontier.root(),
                Problem.MISSING_ENTRY,
                f"entry {expected} is missing (next stored entry is {idx})",
            )
        if int.from_bytes(entry[:8], "big") != idx:
            return fail(
                idx,
                idx,
                frontier.root(),
                Problem.REORDERED,
                f"entry {idx} holds the content of entry {int.from_bytes(entry[:8], 'big')}",
            )
        lh = _leaf(entry)
        if lh != stored:
            return fail(
                idx,
                idx,
                frontier.root(),
                Problem.CONTENT_ALTERED,
                f"entry {idx} does not match its leaf hash",
            )
        if entry[8:HEADER] != prev:
            bad = idx - 1 if idx else 0
            return fail(
                bad,
                idx,
                frontier.root(),
                Problem.CHAIN_BROKEN,
                f"entry {idx} does not chain to entry {idx - 1}: entry {bad} was rewritten",
            )
        frontier.append(lh)
        prev = lh
        expected += 1
        while hi < n_heads and heads[hi].size == expected:
            if frontier.root() != heads[hi].root:
                return fail(
                    good_signed,
                    expected,
                    frontier.root(),
                    Problem.ROOT_MISMATCH,
                    f"entries {good_signed}..{expected - 1} do not match the signed "
                    f"tree head at size {expected}",
                )
            good_signed = expected
            hi += 1
    while hi < n_heads and heads[hi].size == 0:
        hi += 1
    if hi < n_heads:
        return fail(
            expected,
            expected,
            frontier.root(),
            Problem.TRUNCATED,
            f"the log has {expected} entries but a signed tree head says "
            f"{heads[-1].size}: entries from {expected} on are missing",
        )
    return VerifyReport(
        ok=True,
        size=expected,
        heads_checked=n_heads,
        signed_size=good_signed,
        root=frontier.root(),
        append_only_enforced=append_only_enforced,
        seconds=time.perf_counter() - t0,
        warnings=tuple(warnings),
    )
