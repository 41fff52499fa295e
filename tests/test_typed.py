"""Typed values: model= round-trips dataclasses and pydantic models; without it, nothing lies."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import functools
import logging
import math
import re
import sys
import typing
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
from _models import JOINED, Account, User, account, user
from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter
from pydantic.alias_generators import to_camel

from asyncstampede import Codec, SerializationError, Stampede
from asyncstampede._keys import make_names

pytestmark = pytest.mark.anyio

HERE = Path(__file__).parent


async def never(*args: object) -> Any:
    raise AssertionError("a stored value must not be computed again")


async def test_a_dataclass_and_a_pydantic_model_round_trip_between_two_processes(
    redis_url: str, namespace: str
) -> None:
    """Another process stores a User and an Account; this one gets them back as their types."""
    await anyio.run_process([sys.executable, str(HERE / "_models.py"), redis_url, namespace])
    async with Stampede.from_url(redis_url, namespace=namespace) as cache:
        got = await cache.get_or_compute("user:7", never, 60, model=User)
        acct = await cache.get_or_compute("account:7", never, 60, model=Account)
        plain = await cache.get_or_compute("user:7", never, 60)  # no model: its JSON form
    assert type(got) is User
    assert got == user(7)
    assert got.joined == JOINED  # a datetime again, with its zone and microseconds
    assert got.tags == ("a", "b")  # a tuple again (the dataclass says so)
    assert type(acct) is Account
    assert acct == account(7)
    assert type(acct.owner) is User
    assert plain == {"id": 7, "name": "user 7", "joined": "2024-05-17T09:30:15.250000Z",
                     "tags": ["a", "b"]}  # fmt: skip


async def test_every_caller_gets_its_own_typed_value(any_cache: Stampede) -> None:
    """Twenty callers coalesced on one compute: twenty equal Users, none shared."""
    computes = 0
    release = anyio.Event()

    async def load(n: int) -> User:
        nonlocal computes
        computes += 1
        await release.wait()
        return dataclasses.replace(user(n), tags=("x",))

    got: list[User] = []

    async def ask() -> None:
        got.append(await any_cache.get_or_compute("u", load, 60, 3, model=User))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(ask)
        await _until_coalesced(any_cache, 19)
        release.set()
    assert computes == 1
    assert all(type(u) is User and u == got[0] for u in got)
    assert len({id(u) for u in got}) == 20
    # and a hit afterwards: typed too
    assert await any_cache.get_or_compute("u", never, 60, model=User) == got[0]


async def _until_coalesced(cache: Stampede, n: int) -> None:
    from _conditions import until

    await until(lambda: cache.statistics().coalesced >= n)


async def test_a_list_of_models_a_type_adapter_and_a_codec_of_ones_own(any_cache: Stampede) -> None:
    """model=list[User], a pydantic TypeAdapter, and an object with dump() and load()."""

    async def users() -> list[User]:
        return [user(1), user(2)]

    assert await any_cache.get_or_compute("l", users, 60, model=list[User]) == [user(1), user(2)]
    adapter = TypeAdapter(dict[str, User])

    async def by_name() -> dict[str, User]:
        return {"a": user(1)}

    assert await any_cache.get_or_compute("d", by_name, 60, model=adapter) == {"a": user(1)}

    class Celsius:
        def __init__(self, degrees: float) -> None:
            self.degrees = degrees

    class CelsiusCodec:
        def dump(self, value: Celsius, /) -> object:
            return f"{value.degrees}C".encode()

        def load(self, stored: Any, /) -> Celsius:
            return Celsius(float(bytes(stored).removesuffix(b"C")))

    codec: Codec[Celsius] = CelsiusCodec()

    async def temperature() -> Celsius:
        return Celsius(21.5)

    first = await any_cache.get_or_compute("t", temperature, 60, model=codec)
    again = await any_cache.get_or_compute("t", never, 60, model=codec)
    assert (type(first), first.degrees, again.degrees) == (Celsius, 21.5, 21.5)
    assert await any_cache.get_or_compute("t", never, 60) == b"21.5C"  # stored as its bytes


async def test_a_stored_value_that_no_longer_fits_the_model_is_computed_once_anew(
    cache: Stampede, sync_redis: redis.Redis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """After a deploy changed the type, the old value is a counted miss, recomputed and stored."""

    async def old_shape() -> dict[str, Any]:
        return {"id": 1, "name": "before the field 'joined' existed"}

    await cache.get_or_compute("user:1", old_shape, 60)
    computes = 0

    async def load() -> User:
        nonlocal computes
        computes += 1
        return user(1)

    with caplog.at_level(logging.WARNING, "asyncstampede"):
        got = [await cache.get_or_compute("user:1", load, 60, model=User) for _ in range(3)]
    assert got == [user(1)] * 3
    assert computes == 1
    assert cache.statistics().decode_errors == 1
    (misfit,) = [r for r in caplog.records if "does not fit" in r.getMessage()]
    assert "'user:1'" in misfit.getMessage()  # (the key it is about)
    assert "joined" in misfit.getMessage()
    assert len(misfit.__dict__["key_hash"]) == 12
    stored = sync_redis.get(make_names(namespace, "user:1").value)
    assert isinstance(stored, bytes)
    assert b"2024-05-17T09:30:15.25" in stored


@dataclasses.dataclass
class Point:
    x: float
    when: datetime.datetime


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (Point(1.0, JOINED), "pass model=Point to get the Point back"),
        (account(1), "pass model=Account to get the Account back"),
        ({"at": JOINED}, "store value.isoformat()"),
        ([Point(1.0, JOINED)], "pass model=<the type the compute returns>"),
        ({"x": math.nan}, "JSON has no NaN"),
    ],
)
async def test_a_value_that_would_not_come_back_as_itself_is_refused_with_the_fix(
    any_cache: Stampede, value: object, words: str
) -> None:
    """A dataclass, a model, a datetime or a NaN without model=: refused; nothing stored."""

    async def compute() -> Any:
        return value

    with pytest.raises(SerializationError, match=re.escape(words)):
        await any_cache.get_or_compute("k", compute, 60)

    async def fine() -> str:
        return "stored later"

    assert await any_cache.get_or_compute("k", fine, 60) == "stored later"


async def test_a_compute_returning_another_type_than_the_model_is_refused(
    any_cache: Stampede,
) -> None:
    """model=User but the compute returns a dict: SerializationError naming both."""

    async def wrong() -> Any:
        return {"id": 1}

    with pytest.raises(SerializationError, match="as model=User"):
        await any_cache.get_or_compute("k", wrong, 60, model=User)


async def test_none_passes_through_a_model(any_cache: Stampede) -> None:
    """A compute that finds nothing returns None; with a model, None comes back."""

    async def missing() -> Any:
        return None

    assert await any_cache.get_or_compute("k", missing, 60, model=User) is None


async def test_positional_arguments_pass_through_and_keywords_are_refused(
    any_cache: Stampede,
) -> None:
    """get_or_compute(key, fn, ttl, *args) calls fn(*args); a stray keyword says what to do."""
    seen: list[tuple[int, str]] = []

    async def load(n: int, label: str) -> str:
        seen.append((n, label))
        return f"{label}{n}"

    assert await any_cache.get_or_compute("k", load, 60, 4, "n") == "n4"
    assert seen == [(4, "n")]
    with pytest.raises(TypeError, match=r"functools.partial"):
        await any_cache.get_or_compute("k2", load, 60, n=4)  # type: ignore[call-overload]
    bound = functools.partial(load, label="p")
    assert await any_cache.get_or_compute("k3", bound, 60, 5) == "p5"


async def test_ttl_may_be_a_timedelta(
    cache: Stampede, sync_redis: redis.Redis, namespace: str
) -> None:
    """ttl=timedelta(minutes=2): stored with a 120 s freshness."""

    async def value() -> str:
        return "v"

    await cache.get_or_compute("k", value, datetime.timedelta(minutes=2))
    stored = sync_redis.get(make_names(namespace, "k").value)
    assert isinstance(stored, bytes)
    fresh_for = int.from_bytes(stored[16:24], "big") - int.from_bytes(stored[4:12], "big")
    assert fresh_for == 120_000


async def test_a_model_that_is_not_a_type_is_refused() -> None:
    """model=42: TypeError naming what to pass."""
    async with Stampede() as cache:

        async def value() -> str:
            return "v"

        with pytest.raises(TypeError, match="not a type pydantic can validate"):
            await cache.get_or_compute("k", value, 60, model=42)  # type: ignore[call-overload, call-arg]


class Creds(BaseModel):
    """A model whose JSON form masks a field."""

    user: str
    token: SecretStr


class Blob(BaseModel):
    """A model with bytes: its JSON form needs base64 for bytes that are not UTF-8."""

    data: bytes


class Blob64(BaseModel):
    """The same, told to put its bytes in base64."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")
    data: bytes


async def test_a_model_whose_json_form_loses_data_is_refused(any_cache: Stampede) -> None:
    """A SecretStr would come back masked: refused (compute and set), nothing stored."""
    creds = Creds(user="u", token=SecretStr("s3cr3t"))

    async def load() -> Creds:
        return creds

    with pytest.raises(SerializationError, match="does not come back equal"):
        await any_cache.get_or_compute("c", load, 60, model=Creds)
    with pytest.raises(SerializationError, match="does not come back equal"):
        await any_cache.set("c", creds, 60, model=Creds)
    assert await any_cache.get("c", model=Creds) is None


async def test_bytes_that_json_cannot_hold_say_how_to(any_cache: Stampede) -> None:
    """Binary bytes in a model: the fix is named; with base64 configured they round-trip."""
    png = b"\x89PNG\r\n\x1a\n\xff"

    async def raw() -> Blob:
        return Blob(data=png)

    with pytest.raises(SerializationError, match="ser_json_bytes='base64'"):
        await any_cache.get_or_compute("b", raw, 60, model=Blob)

    async def encoded() -> Blob64:
        return Blob64(data=png)

    got = await any_cache.get_or_compute("b64", encoded, 60, model=Blob64)
    assert got.data == png
    assert (await any_cache.get("b64", model=Blob64)) == Blob64(data=png)


async def test_set_refuses_a_value_the_model_cannot_read_back(any_cache: Stampede) -> None:
    """set(..., model=User) with another shape, or another class: refused, naming the type."""
    with pytest.raises(SerializationError, match="store a User"):
        await any_cache.set("u", {"id": 1}, 60, model=User)
    with pytest.raises(SerializationError, match="value of type Account as model=User"):
        await any_cache.set("u", account(1), 60, model=User)
    with pytest.raises(SerializationError, match="value of type User as model=Account"):
        await any_cache.set("u", user(1), 60, model=Account)
    assert await any_cache.get("u", model=User) is None


class Camel(BaseModel):
    """FastAPI's camelCase style: validated by alias only (no populate_by_name)."""

    model_config = ConfigDict(alias_generator=to_camel)
    user_name: str
    joined_at: datetime.datetime


class CamelOptional(BaseModel):
    """camelCase with a defaulted field: by field names it would read back without it."""

    model_config = ConfigDict(alias_generator=to_camel)
    id: int
    display_name: str | None = None


class Aliased(BaseModel):
    """One field with an alias of its own."""

    user_name: str = Field(alias="userName")


class Renamed(BaseModel):
    """An alias for dumps only: its JSON form by name is the one that reads back."""

    count: int = Field(serialization_alias="Count")


class Unreadable(BaseModel):
    """Read from one name, written under another: no JSON form of it reads back."""

    count: int = Field(validation_alias="in", serialization_alias="out")


async def test_models_with_aliases_round_trip(any_cache: Stampede) -> None:
    """Aliased fields are stored the way the model reads them back, by alias or by name."""
    camel = Camel.model_validate({"userName": "ada", "joinedAt": JOINED})
    values = {
        "camel": camel,
        "aliased": Aliased(userName="bo"),
        "renamed": Renamed(count=3),
        "optional-set": CamelOptional.model_validate({"id": 1, "displayName": "Ada"}),
        "optional-unset": CamelOptional(id=2),
    }
    for key, value in values.items():
        model = type(value)

        async def load(value: BaseModel = value) -> BaseModel:
            return value

        assert await any_cache.get_or_compute(key, load, 60, model=model) == value
        assert await any_cache.get_or_compute(key, never, 60, model=model) == value
        await any_cache.set(key, value, 60, model=model)
        assert await any_cache.get(key, model=model) == value

    async def unreadable() -> Unreadable:
        return Unreadable(**{"in": 1})

    refused = r"by aliases or by field names.*populate_by_name"
    with pytest.raises(SerializationError, match=refused):
        await any_cache.get_or_compute("unreadable", unreadable, 60, model=Unreadable)


class RowDict(typing.TypedDict):
    """A typing.TypedDict: pydantic wants typing_extensions' before Python 3.12."""

    id: int


async def test_a_typing_typeddict_works_or_is_refused_with_the_fix() -> None:
    """On 3.12+ it round-trips; before, a TypeError names typing_extensions."""

    async def row() -> RowDict:
        return {"id": 1}

    async with Stampede() as cache:
        if sys.version_info >= (3, 12):
            assert await cache.get_or_compute("r", row, 60, model=RowDict) == {"id": 1}
        else:
            with pytest.raises(TypeError, match="typing_extensions"):
                await cache.get_or_compute("r", row, 60, model=RowDict)


class Color(enum.StrEnum):
    RED = "red"


async def test_a_tuple_and_a_str_enum_come_back_as_json_keeps_them_or_as_their_model(
    any_cache: Stampede,
) -> None:
    """Without a model, as documented: a list and a str; with one, the tuple and the member."""

    async def pair() -> tuple[int, int]:
        return (1, 2)

    async def red() -> Color:
        return Color.RED

    got: object = await any_cache.get_or_compute("t", pair, 60)  # (typed a tuple: the gap)
    assert got == [1, 2]
    assert await any_cache.get_or_compute("t2", pair, 60, model=tuple[int, int]) == (1, 2)
    plain = await any_cache.get_or_compute("c", red, 60)
    assert type(plain) is str
    assert plain == "red"
    assert await any_cache.get_or_compute("c2", red, 60, model=Color) is Color.RED
