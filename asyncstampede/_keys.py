"""Key layout: a cache key's value and lock share one hash slot.

Every name is ``<namespace>:{<escaped key>}:<suffix>``. Redis Cluster hashes
only the text between the first ``{`` and the next ``}``; the two names share
the prefix up to and including that ``}``, so they always land in one slot and
the commit script may touch both. Braces and ``%`` inside the user's key
are percent-escaped, so the tag is never empty and never cut short, and two
distinct keys never map to one name.

A key longer than `LONGEST_TAG` bytes (once escaped) is named by its
SHA-256 instead, behind a ``{`` that no escaped key contains: every name
stays short (a hostile or careless caller cannot make each command carry
megabytes), the value and lock still share one slot, and a hashed name
never equals a plain one (two long keys share a name only if SHA-256
collides).
"""

from __future__ import annotations

import hashlib
from typing import Final, NamedTuple

__all__ = [
    "LONGEST_TAG",
    "KeyNames",
    "channel_name_of",
    "lock_name_of",
    "lock_of_channel",
    "make_names",
    "plain_key",
    "validate_namespace",
    "value_name_of",
]

LONGEST_TAG: Final = 512  # bytes of an escaped key used as it is; longer ones are hashed
_NAMES_CACHED = 4096  # keys whose Redis names a NamesCache keeps ready
_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})


class KeyNames(NamedTuple):
    """The Redis names behind one cache key."""

    value: bytes
    lock: bytes


def validate_namespace(namespace: object) -> str:
    """Return *namespace* if it can prefix keys, else raise.

    Raises:
        TypeError: *namespace* is not a ``str``.
        ValueError: it is empty or contains a brace (which would move the hash tag).

    """
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str, not {type(namespace).__name__}")
    namespace = str.__str__(namespace)  # a str subclass (an enum member): its text
    if not namespace or "{" in namespace or "}" in namespace:
        raise ValueError(f"namespace must be non-empty and brace-free, got {namespace!r}")
    return namespace


def plain_key(key: object) -> str:
    """Return *key* as an exact ``str``: equal strings are one key everywhere.

    A ``str`` subclass (a ``(str, Enum)`` member, as FastAPI passes enum
    path parameters) stands for its text, not for what its ``__str__``
    says (``Model.alexnet``), so it names the same entry as the plain string
    it equals, in every process.

    Raises:
        TypeError: *key* is not a ``str``.

    """
    if type(key) is str:
        return key
    if not isinstance(key, str):
        raise TypeError(f"cache keys must be str, not {type(key).__name__}")
    return str.__str__(key)


def make_names(namespace: str, key: object) -> KeyNames:
    """Build the value and lock names for *key*.

    Raises:
        TypeError: *key* is not a ``str``.
        ValueError: *key* is empty.

    """
    key = plain_key(key)
    if not key:
        raise ValueError("cache keys must not be empty")
    if "{" in key or "}" in key or "%" in key:
        key = key.translate(_ESCAPES)
    # surrogatepass: a lone surrogate is still a distinct, storable key.
    tag = key.encode("utf-8", "surrogatepass")
    if len(tag) > LONGEST_TAG:
        tag = b"{" + hashlib.sha256(tag).hexdigest().encode()
    base = namespace.encode("utf-8", "surrogatepass") + b":{" + tag + b"}:"
    return KeyNames(base + b"v", base + b"l")


class NamesCache(dict[str, KeyNames]):
    """The Redis names of recently used keys of one namespace (hot keys skip building them)."""

    __slots__ = ("namespace",)

    def __init__(self, namespace: str) -> None:
        super().__init__()
        self.namespace = namespace

    def __missing__(self, key: str) -> KeyNames:
        names = make_names(self.namespace, key)
        if len(self) >= _NAMES_CACHED:
            self.clear()  # crude but O(1); hot keys are back in one call
        self[key] = names
        return names


def value_name_of(lock: bytes) -> bytes:
    """Return the value name that goes with the lock name *lock*."""
    return lock[:-1] + b"v"


def lock_name_of(value: bytes) -> bytes:
    """Return the lock name of the key whose value name is *value*."""
    return value[:-1] + b"l"


def channel_name_of(lock: bytes, db: int) -> bytes:
    """Return the channel the scripts tell the waiters of *lock* in database *db* on.

    Its hash slot is the lock's; the database is in the name because
    pub/sub spans databases.
    """
    return lock[:-1] + b"w" + str(db).encode()


def lock_of_channel(channel: bytes, db: int) -> bytes | None:
    """Return the lock whose `channel_name_of` in *db* is *channel*, or None."""
    suffix = b"w" + str(db).encode()
    return channel[: -len(suffix)] + b"l" if channel.endswith(suffix) else None
