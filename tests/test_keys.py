"""Key layout: one hash slot per cache key, no collisions."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from asyncstampede._keys import LONGEST_TAG, make_names, value_name_of


@given(st.one_of(st.text(min_size=1), st.text(min_size=LONGEST_TAG // 3, max_size=2 * LONGEST_TAG)))
def test_value_and_lock_share_a_slot(key: str) -> None:
    """Whatever the key holds (braces included), its two names hash alike."""
    names = make_names("ns", key)
    assert key_slot(names.value) == key_slot(names.lock)
    assert value_name_of(names.lock) == names.value  # what the listener reads on a change


@given(st.text(min_size=1), st.text(min_size=1))
def test_distinct_keys_get_distinct_names(a: str, b: str) -> None:
    """Escaping is injective: two keys never share a Redis name."""
    if a != b:
        assert make_names("ns", a).value != make_names("ns", b).value


@pytest.mark.parametrize("key", [b"bytes", 42, None, ("t",)])
def test_non_str_keys_raise_type_error(key: object) -> None:
    """Only str keys are accepted."""
    with pytest.raises(TypeError, match="must be str"):
        make_names("ns", key)


def test_empty_key_raises_value_error() -> None:
    """An empty key would give an empty hash tag (whole-name hashing)."""
    with pytest.raises(ValueError, match="empty"):
        make_names("ns", "")


def test_long_keys_get_short_names_that_are_still_theirs() -> None:
    """A key past LONGEST_TAG bytes is named by its SHA-256: short, one slot, never a plain name."""
    long_key = "k" * (LONGEST_TAG + 1)
    names = make_names("ns", long_key)
    assert len(names.value) < 100
    assert key_slot(names.value) == key_slot(names.lock)
    assert names.value != make_names("ns", "k" * (LONGEST_TAG + 2)).value
    assert len(make_names("ns", "k" * LONGEST_TAG).value) > LONGEST_TAG  # the longest kept
    # The plain key that spells a hashed name's tag still gets its own name.
    digest = hashlib.sha256(long_key.encode()).hexdigest()
    assert make_names("ns", "{" + digest).value != names.value
    assert make_names("ns", digest).value != names.value
