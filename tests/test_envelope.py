"""The stored envelope: round trips, compression, and hostile bytes."""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncstampede import SerializationError, ValueTooLargeError
from asyncstampede._envelope import FLAG_LZ4, HEADER_SIZE, DecodeError, decode, encode

LIMIT = 1 << 24
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=30,
)


def _encode(value: Any, threshold: int = 64) -> bytes:
    return encode(
        value,
        created_ms=1,
        delta_ms=2,
        fresh_until_ms=3,
        compress_threshold=threshold,
        max_value_bytes=LIMIT,
    )


@given(json_values)
def test_json_values_round_trip(value: Any) -> None:
    """Anything orjson accepts comes back equal, with its metadata."""
    env = decode(_encode(value), max_value_bytes=LIMIT)
    assert env.value == value
    assert (env.created_ms, env.delta_ms, env.fresh_until_ms) == (1, 2, 3)


@given(st.binary())
def test_bytes_round_trip_raw(value: bytes) -> None:
    """bytes are stored raw and come back as bytes."""
    assert decode(_encode(value), max_value_bytes=LIMIT).value == value


def test_large_compressible_values_are_compressed() -> None:
    """Above the threshold, lz4 is used when it makes the payload smaller."""
    data = _encode("a" * 100_000, threshold=1024)
    assert data[3] & FLAG_LZ4
    assert len(data) < 2_000
    assert decode(data, max_value_bytes=LIMIT).value == "a" * 100_000


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_decode(data: bytes) -> None:
    """Random bytes are either rejected with DecodeError or decoded; nothing else."""
    with contextlib.suppress(DecodeError):
        decode(data, max_value_bytes=LIMIT)


@given(json_values, st.data())
def test_flipped_bytes_are_detected_or_harmless(value: Any, data: st.DataObject) -> None:
    """Corrupting one byte of a valid envelope never raises anything but DecodeError."""
    blob = bytearray(_encode(value, threshold=8))
    i = data.draw(st.integers(0, len(blob) - 1))
    blob[i] ^= data.draw(st.integers(1, 255))
    with contextlib.suppress(DecodeError):
        decode(bytes(blob), max_value_bytes=LIMIT)


def test_decompression_bomb_is_refused_before_allocating() -> None:
    """A header claiming a huge decompressed size is refused outright."""
    blob = bytearray(_encode("b" * 10_000, threshold=16))
    struct.pack_into(">I", blob, HEADER_SIZE - 4, 2**32 - 1)
    with pytest.raises(DecodeError, match="declared size"):
        decode(bytes(blob), max_value_bytes=LIMIT)


@pytest.mark.parametrize("value", [object(), {1, 2}, {"k": b"nested bytes"}, 2**70, {1: "int key"}])
def test_unserializable_values_raise_serialization_error(value: object) -> None:
    """Values orjson cannot encode raise SerializationError (a TypeError)."""
    with pytest.raises(SerializationError) as info:
        _encode(value)
    assert isinstance(info.value, TypeError)


def test_value_over_the_limit_raises() -> None:
    """An encoded value over max_value_bytes is refused."""
    with pytest.raises(ValueTooLargeError):
        encode(
            b"x" * 101,
            created_ms=0,
            delta_ms=0,
            fresh_until_ms=0,
            compress_threshold=1 << 30,
            max_value_bytes=100,
        )
