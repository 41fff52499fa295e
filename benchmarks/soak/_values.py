"""The soak's keys and values, the check of every value a caller gets, and latency histograms.

A value says which key it is for and which compute made it (when it
started and ended, in which process), and is signed with the run's secret
(HMAC-SHA256), so a value that was mangled, made up, or is another key's is
caught: no compute of this run can have produced it. A value is also wrong
if it is stale: its compute ended more than the key's TTL (plus a slack)
before the caller asked, so it had expired before the request was issued
(asyncstampede's defaults serve no stale values).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from typing import Any, Final

import orjson

# Each key's TTL is the base TTL times one of these, by its index.
TTL_FACTORS: Final = (0.5, 1.0, 2.0)
# Every fourth key has a large value that lz4 compresses (asyncstampede
# compresses from 4096 bytes on); the others are small.
LARGE: Final = 10_000
SMALL: Final = 200
FIELDS: Final = ("k", "c0", "c1", "pid", "n", "pad")


def key_name(index: int) -> str:
    """The cache key of key *index*."""
    return f"k{index}"


def ttl_of(index: int, base: float) -> float:
    """Key *index*'s TTL, in seconds."""
    return base * TTL_FACTORS[index % len(TTL_FACTORS)]


def index_of(key: str) -> int:
    """The index of a key made by `key_name`."""
    return int(key[1:])


def _pad(key: str, seq: int) -> str:
    index = index_of(key)
    if index % 4 == 3:
        return (f"{key}:{seq}:" * (LARGE // 4))[:LARGE]  # compressible
    # Hex of a hash chain: as good as incompressible.
    out: list[str] = []
    block = hashlib.sha256(f"{key}:{seq}".encode()).hexdigest()
    while len(out) * len(block) < SMALL:
        out.append(block)
        block = hashlib.sha256(block.encode()).hexdigest()
    return "".join(out)[:SMALL]


def _signature(secret: bytes, value: dict[str, Any]) -> str:
    body = orjson.dumps({f: value[f] for f in FIELDS}, option=orjson.OPT_SORT_KEYS)
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def make_value(
    secret: bytes, key: str, started: float, ended: float, pid: int, seq: int
) -> dict[str, Any]:
    """The value a compute of *key* returns: who made it, when, padded, signed."""
    value: dict[str, Any] = {
        "k": key,
        "c0": started,
        "c1": ended,
        "pid": pid,
        "n": seq,
        "pad": _pad(key, seq),
    }
    value["sig"] = _signature(secret, value)
    return value


def wrongness(
    secret: bytes,
    key: str,
    ttl: float,
    value: object,
    issued: float,
    answered: float,
    slack: float,
) -> str | None:
    """None if *value* is right for a request of *key* issued and answered then, else why not.

    ``corrupt``: not a value of this run (its shape or signature is off);
    ``wrong-key``: another key's; ``future``: its compute started after the
    request was answered; ``stale``: its compute ended more than *ttl* +
    *slack* seconds before the request was issued (*slack* covers the time
    from a compute's end to its commit, from which the TTL runs).
    Times are wall-clock seconds.
    """
    if not isinstance(value, dict) or set(value) != {*FIELDS, "sig"}:
        return "corrupt"
    try:
        signed = hmac.compare_digest(str(value["sig"]), _signature(secret, value))
    except (TypeError, orjson.JSONEncodeError):
        return "corrupt"
    if not signed:
        return "corrupt"
    if value["k"] != key:
        return "wrong-key"
    if value["c0"] > answered:
        return "future"
    if issued - value["c1"] > ttl + slack:
        return "stale"
    return None


# Latency histogram: bucket 0 below 10 µs, then buckets 10% wide up to the
# last, which holds everything from about 33 s on. Constant memory, so the
# soak's own bookkeeping does not show up as RSS growth.
_BASE, _STEP, BUCKETS = 1e-5, 1.1, 160


def bucket(seconds: float) -> int:
    """The histogram bucket of a latency of *seconds*."""
    if seconds < _BASE:
        return 0
    return min(BUCKETS - 1, 1 + int(math.log(seconds / _BASE) / math.log(_STEP)))


def bucket_top(index: int) -> float:
    """The upper bound of bucket *index*, in seconds (what a percentile reports)."""
    return _BASE * _STEP**index


def hist_percentile(counts: list[int], q: float) -> float:
    """The *q* quantile (0 to 1) of a histogram, as its bucket's upper bound; NaN if empty."""
    total = sum(counts)
    if not total:
        return float("nan")
    rank = min(total, max(1, math.ceil(q * total)))
    seen = 0
    for index, n in enumerate(counts):
        seen += n
        if seen >= rank:
            return bucket_top(index)
    return bucket_top(len(counts) - 1)  # pragma: no cover - rank <= total


def hist_max(counts: list[int]) -> float:
    """The upper bound of the highest non-empty bucket; NaN if empty."""
    for index in range(len(counts) - 1, -1, -1):
        if counts[index]:
            return bucket_top(index)
    return float("nan")
