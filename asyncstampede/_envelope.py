r"""The envelope: what asyncstampede stores in Redis for one value.

Layout (big-endian), then the payload::

    magic      2 bytes  b"\xa5\x5a"
    version    1 byte   2 (1: as 2, without the ttl field)
    flags      1 byte   bit 0: payload is raw bytes (else orjson)
                        bit 1: payload is lz4 block-compressed
                        bit 2: a cached failure (payload: the error's text)
    created    8 bytes  unix time of the write, milliseconds
    delta      4 bytes  duration of the compute that made it, milliseconds
    fresh      8 bytes  unix time until which the value is fresh, milliseconds
                        (moved on by a fail-safe re-stamp, see `restamp`)
    ttl        8 bytes  freshness it was stored with, milliseconds: created + ttl
                        anchors the stale windows, which no re-stamp moves
    tags       8 bytes  version 3 only (a value with tags): the fingerprint of
                        its tags' generations when it was computed (``_tags``)
    size       4 bytes  length of the payload once decompressed

The decompressed size is declared up front and checked against a limit
before any memory is allocated, so a hostile value cannot exhaust memory.
Values are never pickled: a cache that unpickles is remote code execution
for anyone who can write to Redis.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import struct
from typing import Any, NamedTuple

import lz4.block
import orjson

from ._codec import cannot_store
from ._exceptions import SerializationError, ValueTooLargeError

__all__ = ["DecodeError", "Envelope", "decode", "encode", "encode_failure", "restamp"]

MAGIC = b"\xa5\x5a"
VERSION = 2
_HEADER = struct.Struct(">2sBBQIQQI")
_HEADER_V1 = struct.Struct(">2sBBQIQI")
_HEADER_V3 = struct.Struct(">2sBBQIQQQI")  # version 2 and the tags' fingerprint
TAGGED = 3
HEADER_SIZE = _HEADER.size
_FRESH_AT = 16  # offset of the fresh field, in both versions
FLAG_RAW = 0x01
FLAG_LZ4 = 0x02
FLAG_FAILURE = 0x04
_KNOWN_FLAGS = FLAG_RAW | FLAG_LZ4 | FLAG_FAILURE
_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1
# Dataclasses and datetimes would come back as a dict or a str: refused (see
# _codec), never stored as something other than what the caller's types say.
_FAITHFUL = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


class DecodeError(Exception):
    """Stored bytes are not a valid envelope (internal: counted, never raised to users)."""


class Envelope(NamedTuple):
    """A decoded value and the metadata stored with it."""

    value: Any
    created_ms: int
    delta_ms: int
    fresh_until_ms: int
    failed: bool = False
    ttl_ms: int = 0
    tags: int = 0  # the fingerprint of its tags' generations (0: it has none)

    @property
    def origin_fresh_until_ms(self) -> int:
        """When the value stopped being fresh as computed: the stale windows' anchor."""
        return self.created_ms + self.ttl_ms


def encode(
    value: object,
    *,
    created_ms: int,
    delta_ms: int,
    fresh_until_ms: int,
    compress_threshold: int,
    max_value_bytes: int,
    tags: int = 0,
) -> bytes:
    """Serialize *value* into an envelope, fresh for ``fresh_until_ms - created_ms``.

    *tags* is the fingerprint of its tags' generations (``_tags``); a value
    with tags is written as version 3, any other as version 2.

    ``bytes`` (and ``bytearray``/``memoryview``) are stored raw; everything
    else goes through orjson, except what would not come back as itself
    (a dataclass, a ``datetime``, a pydantic model: a codec's work). The
    payload is lz4-compressed when it is at least *compress_threshold*
    bytes long and compression makes it smaller.

    Raises:
        SerializationError: orjson cannot serialize *value*, or cannot do so
            faithfully: a float NaN or infinity (JSON has neither; orjson
            would write ``null``).
        ValueTooLargeError: the serialized payload exceeds *max_value_bytes*.

    """
    flags = 0
    if isinstance(value, (bytes, bytearray, memoryview)):
        payload = bytes(value)
        flags |= FLAG_RAW
    else:
        try:
            payload = orjson.dumps(value, option=_FAITHFUL)
        except (orjson.JSONEncodeError, TypeError) as exc:
            raise SerializationError(cannot_store(value, exc)) from exc
        # orjson writes NaN and infinities as null: found only where a null is.
        if b"null" in payload and (where := _non_finite(value)) is not None:
            raise SerializationError(
                f"cannot store {where}: JSON has no NaN or infinity (it would come back as "
                "None); store None or a string instead, or encode the value to bytes yourself"
            )
    size = len(payload)
    if size > max_value_bytes or size > _U32_MAX:
        raise ValueTooLargeError(
            f"encoded value is {size} bytes, over max_value_bytes={max_value_bytes}"
        )
    if size >= compress_threshold:
        packed = lz4.block.compress(payload, store_size=False)
        if len(packed) < size:
            payload = packed
            flags |= FLAG_LZ4
    stamps = (
        _clamp(created_ms, _U64_MAX),
        _clamp(delta_ms, _U32_MAX),
        _clamp(fresh_until_ms, _U64_MAX),
        _clamp(fresh_until_ms - created_ms, _U64_MAX),
    )
    if tags:
        return _HEADER_V3.pack(MAGIC, TAGGED, flags, *stamps, tags, size) + payload
    return _HEADER.pack(MAGIC, VERSION, flags, *stamps, size) + payload


def restamp(data: bytes, *, fresh_until_ms: int) -> bytes:
    """Return the envelope *data* with a new fresh-until time, everything else as stored.

    The fail-safe's re-stamp: it works on the stored bytes, not on a decoded
    value a caller may have changed since. A version 1 envelope comes back
    as version 2.

    Raises:
        DecodeError: *data* is not an envelope.

    """
    if data[:2] != MAGIC or len(data) < _HEADER_V1.size:
        raise DecodeError("not an envelope")
    fresh = _clamp(fresh_until_ms, _U64_MAX).to_bytes(8, "big")
    if data[2] in (VERSION, TAGGED):
        return data[:_FRESH_AT] + fresh + data[_FRESH_AT + 8 :]
    if data[2] == 1:
        magic, _, flags, created, delta, old_fresh, size = _HEADER_V1.unpack_from(data)
        ttl = _clamp(old_fresh - created, _U64_MAX)
        header = _HEADER.pack(magic, VERSION, flags, created, delta, 0, ttl, size)
        return header[:_FRESH_AT] + fresh + header[_FRESH_AT + 8 :] + data[_HEADER_V1.size :]
    raise DecodeError(f"unsupported envelope version {data[2]}")


def decode(data: bytes, *, max_value_bytes: int) -> Envelope:
    """Parse an envelope written by `encode`.

    Raises:
        DecodeError: the bytes are not an envelope this version understands, the
            declared size is over *max_value_bytes*, or the payload is corrupt.

    """
    version = data[2] if len(data) > 2 else 0
    least = {VERSION: HEADER_SIZE, TAGGED: _HEADER_V3.size}.get(version, _HEADER_V1.size)
    if len(data) < least:
        raise DecodeError(f"{len(data)} bytes is shorter than the header")
    tags = 0
    if version == VERSION:
        magic, version, flags, created, delta, fresh, ttl, size = _HEADER.unpack_from(data)
        start = HEADER_SIZE
    elif version == TAGGED:
        magic, version, flags, created, delta, fresh, ttl, tags, size = _HEADER_V3.unpack_from(data)
        start = _HEADER_V3.size
    else:
        magic, version, flags, created, delta, fresh, size = _HEADER_V1.unpack_from(data)
        ttl, start = _clamp(fresh - created, _U64_MAX), _HEADER_V1.size
    if magic != MAGIC:
        raise DecodeError("bad magic: not written by asyncstampede")
    if version not in (1, VERSION, TAGGED):
        raise DecodeError(f"unsupported envelope version {version}")
    if flags & ~_KNOWN_FLAGS:
        raise DecodeError(f"unknown flags {flags:#x}")
    if size > max_value_bytes:
        raise DecodeError(f"declared size {size} is over max_value_bytes={max_value_bytes}")
    body = memoryview(data)[start:]
    if flags & FLAG_LZ4:
        try:
            payload = lz4.block.decompress(body, uncompressed_size=size)
        except lz4.block.LZ4BlockError as exc:
            raise DecodeError(f"corrupt lz4 payload: {exc}") from exc
    else:
        payload = body
    if len(payload) != size:
        raise DecodeError(f"payload is {len(payload)} bytes, header says {size}")
    if flags & FLAG_RAW:
        value: Any = bytes(payload)
    else:
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"corrupt JSON payload: {exc}") from exc
    return Envelope(value, created, delta, fresh, bool(flags & FLAG_FAILURE), ttl, tags)


def encode_failure(message: str, *, created_ms: int, fresh_until_ms: int, tags: int = 0) -> bytes:
    """Encode a cached failure: *message* describes the error (negative caching).

    *tags* as for `encode`.
    """
    payload = message.encode("utf-8", "replace")[:4096]
    stamps = (
        _clamp(created_ms, _U64_MAX),
        0,
        _clamp(fresh_until_ms, _U64_MAX),
        _clamp(fresh_until_ms - created_ms, _U64_MAX),
    )
    flags = FLAG_RAW | FLAG_FAILURE
    if tags:
        return _HEADER_V3.pack(MAGIC, TAGGED, flags, *stamps, tags, len(payload)) + payload
    return _HEADER.pack(MAGIC, VERSION, flags, *stamps, len(payload)) + payload


def _non_finite(value: object) -> str | None:
    """Name where *value* holds a float NaN or infinity (``value["a"][0]``), else None."""
    todo: list[tuple[object, str]] = [(value, "value")]
    while todo:
        item, path = todo.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return f"{path} = {item!r}"
        elif isinstance(item, dict):
            todo.extend((v, f"{path}[{k!r}]") for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            todo.extend((v, f"{path}[{i}]") for i, v in enumerate(item))
        elif isinstance(item, enum.Enum):
            todo.append((item.value, f"{path}.value"))
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            todo.extend(
                (getattr(item, f.name), f"{path}.{f.name}") for f in dataclasses.fields(item)
            )
    return None


def _clamp(n: int, top: int) -> int:
    return min(max(int(n), 0), top)
