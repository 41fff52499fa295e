"""Tags: invalidating every value that carries one, in O(1).

Each tag has a generation in Redis (``<namespace>:{#<tag>}:g``, a random
token, no TTL). A value is stamped with a fingerprint of the generations of
its tags, read in the same round trip as the value (``MGET``); a value whose
fingerprint is not the current one is not served, like a corrupt one: it is
computed anew, under the lock, once for the fleet. Invalidating a tag writes
it a new generation: one ``SET``, whatever the number of values, never a
``SCAN`` (as a generation in the key names would, without needing every
process to learn the new generation first).

Generations are random, never counters: a generation key that is evicted
and made again can never bring back a value stamped before. A missing one
validates nothing; the call that finds it missing makes it (``SET NX``).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from typing import Final

from ._keys import make_names

__all__ = ["NO_TAGS", "fingerprint", "new_generation", "tag_names", "tags_of"]

NO_TAGS: Final[tuple[str, ...]] = ()


def tags_of(tags: object, where: str) -> tuple[str, ...]:
    """Return *tags* as a sorted tuple of distinct, non-empty strs.

    Raises:
        TypeError: *tags* is a single str (pass a list), or holds a non-str.
        ValueError: a tag is empty.

    """
    if isinstance(tags, (str, bytes)):
        raise TypeError(f"{where}: tags takes a list of tags, not one str: pass [{tags!r}]")
    if not isinstance(tags, Iterable):
        raise TypeError(f"{where}: tags must be a list of str, not {type(tags).__name__}")
    found: set[str] = set()
    for tag in tags:
        if not isinstance(tag, str):
            raise TypeError(f"{where}: tags must be str, not {type(tag).__name__}")
        if not tag:
            raise ValueError(f"{where}: tags must not be empty")
        found.add(str.__str__(tag))
    return tuple(sorted(found))


def tag_names(namespace: str, tags: Sequence[str]) -> list[bytes]:
    """Return the Redis names of *tags*' generations (one slot per tag, as a key's)."""
    return [make_names(namespace, f"#{tag}").value[:-1] + b"g" for tag in tags]


def fingerprint(tags: Sequence[str], generations: Sequence[bytes]) -> int:
    """Return the nonzero 64-bit stamp of *tags* at *generations* (0 means: no tags)."""
    digest = hashlib.blake2b(digest_size=8)
    for tag, generation in zip(tags, generations, strict=True):
        digest.update(tag.encode("utf-8", "surrogatepass") + b"\0" + generation + b"\0")
    return int.from_bytes(digest.digest(), "big") or 1


def new_generation() -> bytes:
    """Return a generation no tag has had (16 random bytes, as hex)."""
    return secrets.token_hex(16).encode()
