"""RFC 6962 (section 2.1) Merkle hash trees, with RFC 9162 (section 2.1.3/2.1.4) proof checks.

leaf = SHA-256(0x00 || entry), node = SHA-256(0x01 || left || right); the root of an empty
tree is SHA-256(""). Pure functions over leaf hashes, no I/O. `Frontier` is the streaming
(compact range) form: it keeps one hash per set bit of the size, so a verifier can walk a
log of any length in O(log n) memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


def leaf_hash(entry: bytes) -> bytes:
    """RFC 6962 MTH of a single entry: SHA-256(0x00 || entry)."""
    return _sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node: SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


def root_of(hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over leaf hashes. Level by level; a lone last node moves up unchanged,
    which builds the same tree as RFC 6962's split at the largest power of two."""
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(index: int, hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 6962 2.1.1, for leaf ``index`` of the tree over ``hashes``."""
    if not 0 <= index < len(hashes):
        raise ValueError(f"leaf index {index} outside a tree of size {len(hashes)}")
    proof: list[bytes] = []
    lo, hi, m = 0, len(hashes), index
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            proof.append(root_of(hashes[lo + k : hi]))
            hi = lo + k
        else:
            proof.append(root_of(hashes[lo : lo + k]))
            lo, m = lo + k, m - k
    proof.reverse()
    return proof


def consistency_proof(size1: int, hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 6962 2.1.2: the tree of the first ``size1`` leaves is a prefix
    of the tree over all ``hashes``."""
    n = len(hashes)
    if not 0 <= size1 <= n:
        raise ValueError(f"size {size1} is not within a tree of size {n}")
    if size1 in (0, n):
        return []
    proof: list[bytes] = []
    lo, hi, m, complete = 0, n, size1, True
    while True:
        if m == hi - lo:
            if not complete:
                proof.append(root_of(hashes[lo:hi]))
            break
        k = _split(hi - lo)
        if m <= k:
            proof.append(root_of(hashes[lo + k : hi]))
            hi = lo + k
        else:
            proof.append(root_of(hashes[lo : lo + k]))
            lo, m, complete = lo + k, m - k, False
    proof.reverse()
    return proof


def _well_formed(*hashes: bytes) -> bool:
    return all(len(h) == HASH_SIZE for h in hashes)


def verify_inclusion(
    *, index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 2.1.3.2: does ``proof`` show leaf hash ``leaf`` at ``index`` under ``root``?"""
    if not 0 <= index < size or not _well_formed(leaf, root, *proof):
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    *, size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 2.1.4.2: is the tree (size1, root1) a prefix of the tree (size2, root2)?"""
    if size1 < 0 or size1 > size2 or not _well_formed(*proof):
        return False
    if size1 == size2:
        return not proof and root1 == root2
    if size1 == 0:
        return not proof
    if not proof or not _well_formed(root1, root2):
        return False
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # a power of two: the old root is itself a node
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == root1 and sr == root2 and sn == 0


class Frontier:
    """The right edge of a growing tree: the roots of its perfect subtrees, largest first.

    ``append`` costs one leaf plus amortised one node hash; ``root()`` folds the frontier
    from the right, as RFC 6962's recursive definition does."""

    __slots__ = ("_stack", "size")

    def __init__(self) -> None:
        self._stack: list[bytes] = []
        self.size = 0

    def copy(self) -> Frontier:
        other = Frontier()
        other._stack = list(self._stack)
        other.size = self.size
        return other

    def append(self, leaf: bytes) -> None:
        stack = self._stack
        stack.append(leaf)
        n = self.size
        while n & 1:
            right = stack.pop()
            stack[-1] = node_hash(stack[-1], right)
            n >>= 1
        self.size += 1

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        r = self._stack[-1]
        for h in reversed(self._stack[:-1]):
            r = node_hash(h, r)
        return r
