"""What a type checker sees (``mypy --strict`` in ``nox -s lint``; never run).

Each ``assert_type`` is checked by mypy; each ``type: ignore[...]`` marks a
call mypy must refuse (strict mode reports an ignore that is not needed,
so a refusal that stops happening fails the lint).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
from collections.abc import Awaitable, Callable
from typing import TypedDict, assert_type

from pydantic import BaseModel, TypeAdapter

from asyncstampede import Stampede


@dataclasses.dataclass
class User:
    id: int
    joined: datetime.datetime


class Account(BaseModel):
    id: int


class Row(TypedDict):
    id: int
    name: str


cache = Stampede()


async def load_user(user_id: int) -> User:
    return User(user_id, datetime.datetime.now(datetime.UTC))


async def load_row(row_id: int, *, name: str = "") -> Row:
    return {"id": row_id, "name": name}


async def count() -> int:
    return 1


async def get_or_compute() -> None:
    # Without a model, what comes back is what the compute returns, when
    # that survives JSON: plain types, TypedDicts, bytes.
    assert_type(await cache.get_or_compute("n", count, 60), int)
    assert_type(await cache.get_or_compute("r", load_row, 60, 1), Row)
    # The compute's arguments pass through, checked against it.
    await cache.get_or_compute("r", load_row, 60, "one")  # type: ignore[arg-type]
    bound = functools.partial(load_row, name="x")
    assert_type(await cache.get_or_compute("r", bound, 60, 1), Row)
    # A dataclass would come back as a dict: refused without a model...
    await cache.get_or_compute("u", load_user, 60, 1)  # type: ignore[type-var]
    # ... and with one, the declared type.
    assert_type(await cache.get_or_compute("u", load_user, 60, 1, model=User), User)
    assert_type(await cache.get_or_compute("u", load_user, 60, 1, model=TypeAdapter(User)), User)

    async def accounts() -> list[Account]:
        return [Account(id=1)]

    assert_type(await cache.get_or_compute("a", accounts, 60, model=list[Account]), list[Account])
    # A model that is not what the compute returns is refused.
    await cache.get_or_compute("u", load_user, 60, 1, model=Account)  # type: ignore[arg-type]
    # Freshness settings are typed; anything else is refused.
    await cache.get_or_compute("n", count, datetime.timedelta(seconds=5), beta=0.5)
    await cache.get_or_compute("n", count, 60, bta=0.5)  # type: ignore[call-overload]


@cache.cached(ttl=60, key="user:{user_id}", model=User)
async def cached_user(user_id: int) -> User:
    return User(user_id, datetime.datetime.now(datetime.UTC))


@cache.cached(ttl=60)
async def cached_row(row_id: int, *, name: str = "") -> Row:
    return {"id": row_id, "name": name}


class Repository:
    @cache.cached(ttl=60, key="repo-user:{user_id}", model=User)
    async def user(self, user_id: int) -> User:
        return User(user_id, datetime.datetime.now(datetime.UTC))


async def decorated() -> None:
    # The decorator keeps the signature: arguments are checked, results typed.
    as_function: Callable[[int], Awaitable[User]] = cached_user
    assert_type(await as_function(1), User)
    assert_type(await cached_user(1), User)
    assert_type(await cached_row(1, name="x"), Row)
    await cached_user("1")  # type: ignore[arg-type]
    await cached_row(1, nme="x")  # type: ignore[call-arg]
    await cached_user.invalidate(1)
    assert_type(cached_user.key(1), str)
    # On a method, self is bound.
    repo = Repository()
    assert_type(await repo.user(3), User)
    await repo.user.invalidate(3)
    await repo.user("3")  # type: ignore[arg-type]


# A dataclass-returning function without a model cannot be decorated.
@cache.cached(ttl=60)  # type: ignore[type-var]
async def uncached_user(user_id: int) -> User:
    return User(user_id, datetime.datetime.now(datetime.UTC))


async def reads_and_writes() -> None:
    """get and set: the model types both ways; without one, only what JSON holds."""
    user = User(1, datetime.datetime.now(datetime.UTC))
    await cache.set("u", user, 60, model=User)
    await cache.set("n", {"a": [1, 2]}, 60)
    assert_type(await cache.get("u", model=User), User | None)
    await cache.set("u", user, 60)  # type: ignore[call-overload]
