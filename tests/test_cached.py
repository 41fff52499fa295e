"""The decorator: keys from arguments, invalidation, methods, and the mistakes it refuses."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import inspect
from typing import Any

import anyio
import pytest
from _conditions import until
from _models import User, user

from asyncstampede import ComputeFailedError, Stampede

pytestmark = pytest.mark.anyio


async def test_a_template_key_caches_each_argument_once_and_invalidates_it(
    any_cache: Stampede,
) -> None:
    """key="user:{user_id}": one compute per id until invalidated with the same arguments."""
    computes: list[int] = []

    @any_cache.cached(ttl=60, key="user:{user_id}", model=User)
    async def load_user(user_id: int, *, source: str = "db") -> User:
        computes.append(user_id)
        return user(user_id)

    assert load_user.key(7) == "user:7"
    assert [await load_user(7), await load_user(7), await load_user(user_id=8)] == [
        user(7),
        user(7),
        user(8),
    ]
    assert computes == [7, 8]
    await load_user.invalidate(7)
    assert await load_user(7) == user(7)
    assert computes == [7, 8, 7]
    assert type(await load_user(7)) is User


async def test_concurrent_calls_share_one_compute(any_cache: Stampede) -> None:
    """Fifty concurrent calls with the same arguments: one compute."""
    computes = 0
    release = anyio.Event()

    @any_cache.cached(ttl=60)
    async def report(day: str, limit: int = 10) -> dict[str, Any]:
        nonlocal computes
        computes += 1
        await release.wait()
        return {"day": day, "limit": limit}

    got: list[dict[str, Any]] = []

    async def ask() -> None:
        got.append(await report("2026-12-01"))

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(ask)
        await until(lambda: any_cache.statistics().coalesced == 49)
        release.set()
    assert computes == 1
    assert got == [{"day": "2026-12-01", "limit": 10}] * 50


async def test_the_default_key_is_the_function_and_its_arguments_as_json(
    any_cache: Stampede,
) -> None:
    """Defaults applied, keywords sorted: f(1) and f(1, b=2) and f(a=1) are one key."""

    @any_cache.cached(ttl=60)
    async def f(a: int, b: int = 2) -> int:
        return a + b

    assert f.key(1) == f.key(1, b=2) == f.key(a=1)
    assert f.key(1) == f"{__name__}.{f.__qualname__}:" + '{"a":1,"b":2}'
    assert f.key(1) != f.key(2)
    with pytest.raises(TypeError, match=r"pass key="):
        f.key(object())  # type: ignore[arg-type]


async def test_a_key_callable_gets_the_call_s_arguments(any_cache: Stampede) -> None:
    """key=callable: called with the same arguments; a non-str result is refused."""

    @any_cache.cached(ttl=60, key=lambda u, **_: f"u:{u.id}")
    async def profile(u: User, *, detail: bool = False) -> str:
        return f"{u.name} {detail}"

    assert profile.key(user(3), detail=True) == "u:3"
    assert await profile(user(3)) == "user 3 False"
    assert await profile(user(3), detail=True) == "user 3 False"  # one key for both

    @any_cache.cached(ttl=60, key=lambda n: n)
    async def bad(n: int) -> int:
        return n

    with pytest.raises(TypeError, match="returned int, not a str"):
        await bad(1)


async def test_methods_bind_self(any_cache: Stampede) -> None:
    """A cached method: self is bound, reachable in the template, and left out of default keys."""

    class Users:
        def __init__(self, tenant: str) -> None:
            self.tenant = tenant
            self.computes = 0

        @any_cache.cached(ttl=60, key="{self.tenant}:user:{user_id}", model=User)
        async def get(self, user_id: int) -> User:
            self.computes += 1
            return user(user_id)

        @any_cache.cached(ttl=60)
        async def count(self, day: str) -> int:
            self.computes += 1
            return len(day)

    a, b = Users("a"), Users("b")
    assert await a.get(1) == await a.get(1) == await b.get(1) == user(1)
    assert (a.computes, b.computes) == (1, 1)
    assert a.get.key(1) == "a:user:1"
    await a.get.invalidate(1)
    await a.get(1)
    assert a.computes == 2
    # default key: no self in it, so instances share values
    assert a.count.key("mon") == b.count.key("mon")
    assert a.count.key("mon").endswith('count:{"day":"mon"}')
    assert await a.count("mon") == await b.count("mon") == 3
    assert inspect.signature(Users.get).parameters.keys() == {"self", "user_id"}


async def test_per_decorator_freshness_settings_apply_to_every_call(any_cache: Stampede) -> None:
    """negative_ttl on the decorator: a failure is remembered for its calls."""
    computes = 0

    @any_cache.cached(ttl=60, negative_ttl=30)
    async def flaky(n: int) -> int:
        nonlocal computes
        computes += 1
        raise RuntimeError("backend down")

    with pytest.raises(RuntimeError):
        await flaky(1)
    with pytest.raises(ComputeFailedError, match="backend down"):
        await flaky(1)
    assert computes == 1


async def test_the_wrapper_keeps_the_function_s_name_doc_and_signature() -> None:
    """functools.wraps-like: __name__, __doc__, __wrapped__ and the signature."""
    cache = Stampede()

    @cache.cached(ttl=datetime.timedelta(minutes=1))
    async def documented(a: int, b: str = "x") -> str:
        """Say a and b."""
        return f"{a}{b}"

    assert documented.__name__ == "documented"
    assert documented.__doc__ == "Say a and b."
    assert str(inspect.signature(documented)) == "(a: 'int', b: 'str' = 'x') -> 'str'"
    assert documented.__wrapped__.__name__ == "documented"


@pytest.mark.parametrize(
    ("decorate", "words"),
    [
        (lambda c: c.cached(ttl=60, key="user:{id}"), "has no parameter 'id'"),
        (lambda c: c.cached(ttl=60, key="user:{user_id"), "not a format string"),
        (lambda c: c.cached(ttl=60, key=42), "key must be a template str"),
        (lambda c: c.cached(ttl=0), "ttl must be a positive"),
        (lambda c: c.cached(ttl=60, bta=1), "not freshness settings"),
        (lambda c: c.cached(ttl=60, model=42), "not a type pydantic can validate"),
    ],
)
async def test_mistakes_are_refused_at_decoration_with_the_fix(decorate: Any, words: str) -> None:
    """A template naming no parameter, a bad ttl or setting or model: refused when decorating."""
    cache = Stampede()

    async def load(user_id: int) -> str:
        return "v"

    with pytest.raises((TypeError, ValueError), match=words):
        decorate(cache)(load)


async def test_a_plain_function_is_refused() -> None:
    """A sync function cannot be cached by the async decorator: the message says what to do."""
    cache = Stampede()

    def blocking(n: int) -> int:
        return n

    with pytest.raises(TypeError, match="async def"):
        cache.cached(ttl=60)(blocking)  # type: ignore[arg-type]


async def test_partials_need_a_key_and_callable_objects_work() -> None:
    """A partial's default key would drop its bound arguments: refused; an async object works."""
    cache = Stampede()

    async def load(region: str, n: int) -> str:
        return f"{region}{n}"

    with pytest.raises(TypeError, match="needs key="):
        cache.cached(ttl=60)(functools.partial(load, "eu"))

    class Loader:
        async def __call__(self, n: int) -> int:
            return n * 2

    doubled = cache.cached(ttl=60)(Loader())
    async with cache:
        assert await doubled(4) == 8
    assert doubled.key(4).endswith('Loader:{"n":4}')


@dataclasses.dataclass(frozen=True)
class Point:
    x: int


@dataclasses.dataclass(frozen=True)
class Other:
    x: int


async def test_default_keys_tell_dataclass_types_apart() -> None:
    """f(Point(1)), f(Other(1)) and f({"x": 1}) are three keys."""
    cache = Stampede()

    @cache.cached(ttl=60)
    async def f(p: object) -> str:
        return repr(p)

    keys = {f.key(Point(1)), f.key(Other(1)), f.key({"x": 1})}
    assert len(keys) == 3
