"""Known-answer tests for RFC 6962 hashing and proofs.

Vectors: transparency-dev/merkle (Go), ``rfc6962/rfc6962_test.go`` and
``proof/verify_test.go`` (the 8-leaf reference tree of Certificate Transparency).
"""

from __future__ import annotations

import hashlib

import pytest

from integration.audit import merkle

LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]


def _h(*hexes: str) -> list[bytes]:
    return [bytes.fromhex(x) for x in hexes]


# (leaf index, tree size, proof)
INCLUSION = [
    (0, 1, []),
    (
        0,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        5,
        8,
        _h(
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (2, 3, _h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (
        1,
        5,
        _h(
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
]

# (size1, size2, proof)
CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (
        2,
        5,
        _h(
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (
        6,
        7,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
]

HASHES = [merkle.leaf_hash(x) for x in LEAVES]


def test_hasher_known_answers() -> None:
    assert merkle.EMPTY_ROOT.hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert merkle.leaf_hash(b"").hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert merkle.leaf_hash(b"L123456").hex() == (
        "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    )
    assert merkle.node_hash(b"N123", b"N456").hex() == (
        "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"
    )


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_of_reference_tree(size: int) -> None:
    assert merkle.root_of(HASHES[:size]) == ROOTS[size - 1]
    frontier = merkle.Frontier()
    for h in HASHES[:size]:
        frontier.append(h)
    assert frontier.root() == ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_known_answers(index: int, size: int, proof: list[bytes]) -> None:
    assert merkle.inclusion_proof(index, HASHES[:size]) == proof
    root = ROOTS[size - 1]
    assert merkle.verify_inclusion(
        index=index, size=size, leaf=HASHES[index], proof=proof, root=root
    )
    bad = [
        dict(index=index + 1, size=size, leaf=HASHES[index], proof=proof, root=root),
        dict(index=index, size=size * 2, leaf=HASHES[index], proof=proof, root=root),
        dict(index=index, size=size, leaf=b"WrongLeaf", proof=proof, root=root),
        dict(index=index, size=size, leaf=HASHES[index], proof=proof, root=merkle.EMPTY_ROOT),
        dict(index=index, size=size, leaf=HASHES[index], proof=[*proof, b""], root=root),
        dict(index=index, size=size, leaf=HASHES[index], proof=[root, *proof], root=root),
    ]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        bad.append(dict(index=index, size=size, leaf=HASHES[index], proof=flipped, root=root))
    for kwargs in bad:
        assert not merkle.verify_inclusion(**kwargs), kwargs  # type: ignore[arg-type]


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY)
def test_consistency_known_answers(size1: int, size2: int, proof: list[bytes]) -> None:
    assert merkle.consistency_proof(size1, HASHES[:size2]) == proof
    r1, r2 = ROOTS[size1 - 1], ROOTS[size2 - 1]
    assert merkle.verify_consistency(size1=size1, size2=size2, root1=r1, root2=r2, proof=proof)
    if not proof:
        return
    bad = [
        dict(size1=size1 - 1, size2=size2, root1=r1, root2=r2, proof=proof),
        dict(size1=size1 + 1, size2=size2, root1=r1, root2=r2, proof=proof),
        dict(size1=size1, size2=size2 * 2, root1=r1, root2=r2, proof=proof),
        dict(size1=size1, size2=size2, root1=r2, root2=r1, proof=proof),
        dict(size1=size1, size2=size2, root1=r1, root2=r2, proof=[]),
        dict(size1=size1, size2=size2, root1=r1, root2=r2, proof=[*proof, r2]),
        dict(size1=size1, size2=size2, root1=r1, root2=r2, proof=proof[:-1]),
    ]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 16]) + flipped[i][1:]
        bad.append(dict(size1=size1, size2=size2, root1=r1, root2=r2, proof=flipped))
    for kwargs in bad:
        assert not merkle.verify_consistency(**kwargs), kwargs  # type: ignore[arg-type]


def test_edge_cases_of_consistency() -> None:
    any1, any2 = hashlib.sha256(b"1").digest(), hashlib.sha256(b"2").digest()
    assert merkle.verify_consistency(size1=0, size2=1, root1=any1, root2=any2, proof=[])
    assert not merkle.verify_consistency(size1=1, size2=1, root1=any1, root2=any2, proof=[])
    assert not merkle.verify_consistency(size1=2, size2=1, root1=any1, root2=any2, proof=[])


def test_proofs_round_trip_for_all_small_trees() -> None:
    hashes = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(70)]
    for n in range(1, 70):
        root = merkle.root_of(hashes[:n])
        for i in range(n):
            p = merkle.inclusion_proof(i, hashes[:n])
            assert merkle.verify_inclusion(index=i, size=n, leaf=hashes[i], proof=p, root=root)
        for m in range(1, n + 1):
            p = merkle.consistency_proof(m, hashes[:n])
            r1 = merkle.root_of(hashes[:m])
            assert merkle.verify_consistency(size1=m, size2=n, root1=r1, root2=root, proof=p)
