r"""The envelope: what asyncstampede stores in Redis for one value.

Layout (big-endian), then the payload::

    magic      2 bytes  b"\xa5\x5a"
    version    1 byte   1
    flags      1 byte   bit 0: payload is raw bytes (else orjson)
                        bit 1: payload is lz4 block-compressed
                        bit 2: a cached failure (payload: the error's text)
    created    8 bytes  unix time of the write, milliseconds
    delta      4 bytes  duration of the compute that made it, milliseconds
    fresh      8 bytes  unix time until which the value is fresh, milliseconds
    size       4 bytes  length of the payload once decompressed

The decompressed size is declared up front and checked against a limit
before any memory is allocated, so a hostile value cannot exhaust memory.
Values are never pickled: a cache that unpickles is remote code execution
for anyone who can write to Redis.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import lz4.block
import orjson

from ._exceptions import SerializationError, ValueTooLargeError

__all__ = ["DecodeError", "Envelope", "decode", "encode", "encode_failure"]

MAGIC = b"\xa5\x5a"
VERSION = 1
_HEADER = struct.Struct(">2sBBQIQI")
HEADER_SIZE = _HEADER.size
FLAG_RAW = 0x01
FLAG_LZ4 = 0x02
FLAG_FAILURE = 0x04
_KNOWN_FLAGS = FLAG_RAW | FLAG_LZ4 | FLAG_FAILURE
_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1


class DecodeError(Exception):
    """Stored bytes are not a valid envelope (internal: counted, never raised to users)."""


class Envelope(NamedTuple):
    """A decoded value and the metadata stored with it."""

    value: Any
    created_ms: int
    delta_ms: int
    fresh_until_ms: int
    failed: bool = False


def encode(
    value: object,
    *,
    created_ms: int,
    delta_ms: int,
    fresh_until_ms: int,
    compress_threshold: int,
    max_value_bytes: int,
) -> bytes:
    """Serialize *value* into an envelope.

    ``bytes`` (and ``bytearray``/``memoryview``) are stored raw; everything
    else goes through orjson. The payload is lz4-compressed when it is at least
    *compress_threshold* bytes long and compression makes it smaller.

    Raises:
        SerializationError: orjson cannot serialize *value*.
        ValueTooLargeError: the serialized payload exceeds *max_value_bytes*.

    """
    flags = 0
    if isinstance(value, (bytes, bytearray, memoryview)):
        payload = bytes(value)
        flags |= FLAG_RAW
    else:
        try:
            payload = orjson.dumps(value)
        except (orjson.JSONEncodeError, TypeError) as exc:
            raise SerializationError(
                f"cannot serialize a value of type {type(value).__name__}: {exc}"
            ) from exc
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
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        flags,
        _clamp(created_ms, _U64_MAX),
        _clamp(delta_ms, _U32_MAX),
        _clamp(fresh_until_ms, _U64_MAX),
        size,
    )
    return header + payload


def decode(data: bytes, *, max_value_bytes: int) -> Envelope:
    """Parse an envelope written by `encode`.

    Raises:
        DecodeError: the bytes are not an envelope this version understands, the
            declared size is over *max_value_bytes*, or the payload is corrupt.

    """
    if len(data) < HEADER_SIZE:
        raise DecodeError(f"{len(data)} bytes is shorter than the header")
    magic, version, flags, created, delta, fresh, size = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DecodeError("bad magic: not written by asyncstampede")
    if version != VERSION:
        raise DecodeError(f"unsupported envelope version {version}")
    if flags & ~_KNOWN_FLAGS:
        raise DecodeError(f"unknown flags {flags:#x}")
    if size > max_value_bytes:
        raise DecodeError(f"declared size {size} is over max_value_bytes={max_value_bytes}")
    body = memoryview(data)[HEADER_SIZE:]
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
    return Envelope(value, created, delta, fresh, bool(flags & FLAG_FAILURE))


def encode_failure(message: str, *, created_ms: int, fresh_until_ms: int) -> bytes:
    """Encode a cached failure: *message* describes the error (negative caching)."""
    payload = message.encode("utf-8", "replace")[:4096]
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        FLAG_RAW | FLAG_FAILURE,
        _clamp(created_ms, _U64_MAX),
        0,
        _clamp(fresh_until_ms, _U64_MAX),
        len(payload),
    )
    return header + payload


def _clamp(n: int, top: int) -> int:
    return min(max(int(n), 0), top)
