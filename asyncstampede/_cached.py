"""`Cached`: an async function whose calls go through ``get_or_compute`` (``Stampede.cached``).

The key of a call comes from its arguments: a template (``"user:{user_id}"``,
formatted with the call's arguments bound to the function's signature,
defaults included), a callable given the same arguments, or, by default,
the function's qualified name and its arguments as JSON. The wrapper keeps
the function's signature for type checkers (``ParamSpec``); on a class it
binds like a method.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import string
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    ParamSpec,
    Self,
    TypeVar,
    final,
    overload,
)

import orjson

from ._codec import Codec, codec_for
from ._freshness import Freshness, refuse_unknown, ttl_ms
from ._tags import tags_of

if TYPE_CHECKING:
    from ._stampede import Stampede

__all__ = ["Cached", "KeySpec"]

P = ParamSpec("P")
P2 = ParamSpec("P2")
R = TypeVar("R")
O = TypeVar("O")  # noqa: E741

# How a call's key is made: a template, a callable of the call's arguments, or None.
KeySpec = str | Callable[..., str] | None


@final
class Cached(Generic[P, R]):
    """An async function cached by a `Stampede` (made by ``Stampede.cached``).

    Calling it returns ``await cache.get_or_compute(key, fn, ttl, ...)``
    with the call's arguments; `invalidate` takes the same arguments and
    deletes that call's value; `key` tells which key a call uses. The
    function itself is ``__wrapped__``.
    """

    __slots__ = (
        "__dict__",
        "_cache",
        "_fn",
        "_key",
        "_model",
        "_names",
        "_overrides",
        "_signature",
        "_tags",
        "_this",
        "_ttl",
    )

    # Copied from the function (functools.update_wrapper).
    __name__: str
    __qualname__: str
    __wrapped__: Callable[P, Awaitable[R]]

    def __init__(
        self,
        cache: Stampede,
        fn: Callable[P, Awaitable[R]],
        ttl: float | timedelta,
        key: KeySpec,
        model: type[Any] | Codec[Any] | None,
        overrides: Freshness,
        this: object = None,
        tags: tuple[str, ...] = (),
        signature: inspect.Signature | None = None,
    ) -> None:
        self._cache = cache
        self._fn: Callable[..., Awaitable[Any]] = fn
        self._ttl = ttl
        self._key = key
        self._model = model
        self._overrides = overrides
        # (Worked out once: a method's bound copies, made at each access, reuse it.)
        self._signature = inspect.signature(fn) if signature is None else signature
        self._this = this  # the instance a method is bound to (None: not bound)
        self._tags = tags  # templates, as the key's
        named = getattr(fn, "__qualname__", None) or type(fn).__qualname__  # (a callable object)
        self._names = f"{getattr(fn, '__module__', None) or type(fn).__module__}.{named}"
        functools.update_wrapper(self, fn)  # (__wrapped__, __name__, __doc__...)

    @classmethod
    def make(
        cls,
        cache: Stampede,
        fn: Callable[P, Awaitable[R]],
        ttl: float | timedelta,
        key: KeySpec,
        model: object,
        overrides: Freshness,
        tags: Iterable[str] = (),
    ) -> Cached[P, R]:
        """Check the decoration's arguments and wrap *fn* (see ``Stampede.cached``).

        Raises:
            TypeError: *fn* is not an async function, *key* is neither a str
                nor a callable (nor None), a template names no parameter of
                *fn*, or a keyword is not a freshness setting.
            ValueError: *ttl* is not a positive duration.

        """
        if not inspect.iscoroutinefunction(fn) and not inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 (an object whose __call__ is async)
        ):
            raise TypeError(
                f"cached() wraps an async function, not {fn!r}: define it with 'async def' "
                "(for blocking code, call it through anyio.to_thread.run_sync inside one)"
            )
        ttl_ms(ttl)  # refused now, not at the first call
        refuse_unknown(overrides, "cached")
        codec_for(model)  # (a model pydantic cannot validate is refused now)
        if key is not None and not isinstance(key, str) and not callable(key):
            raise TypeError(
                f"key must be a template str ('user:{{user_id}}'), a callable given the "
                f"function's arguments, or None, not {type(key).__name__}"
            )
        if key is None and isinstance(fn, functools.partial):
            raise TypeError(
                "cached() over a functools.partial needs key=: its default key would leave "
                "out the arguments the partial binds (two partials would share values)"
            )
        templates = tags_of(tags, "cached()")
        signature = inspect.signature(fn)
        if isinstance(key, str):
            _check_template(key, signature, fn, "key template")
        for template in templates:
            _check_template(template, signature, fn, "tags template")
        return cls(cache, fn, ttl, key, model, overrides, None, templates)  # type: ignore[arg-type]

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Return the cached value of this call, computing it at most once."""
        if self._this is not None:
            args = (self._this, *args)  # type: ignore[assignment]
        key = self._key_of(args, kwargs)
        tags = self._tags_of(args, kwargs)
        fn = functools.partial(self._fn, *args, **kwargs)
        if self._model is None:
            value: Any = await self._cache.get_or_compute(
                key, fn, self._ttl, tags=tags, **self._overrides
            )
            return value  # type: ignore[no-any-return]
        return await self._cache.get_or_compute(
            key, fn, self._ttl, model=self._model, tags=tags, **self._overrides
        )

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Delete the value a call with these arguments gets (see ``Stampede.invalidate``)."""
        if self._this is not None:
            args = (self._this, *args)  # type: ignore[assignment]
        await self._cache.invalidate(self._key_of(args, kwargs))

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Return the cache key a call with these arguments uses."""
        if self._this is not None:
            args = (self._this, *args)  # type: ignore[assignment]
        return self._key_of(args, kwargs)

    def tags(self, *args: P.args, **kwargs: P.kwargs) -> tuple[str, ...]:
        """Return the tags a call with these arguments carries (its templates, formatted)."""
        if self._this is not None:
            args = (self._this, *args)  # type: ignore[assignment]
        return self._tags_of(args, kwargs)

    @overload
    def __get__(self, this: None, owner: type | None = None) -> Self: ...

    @overload
    def __get__(
        self: Cached[Concatenate[O, P2], R], this: O, owner: type | None = None
    ) -> Cached[P2, R]: ...

    def __get__(self, this: object, owner: type | None = None) -> Any:
        if this is None or self._this is not None:
            return self
        return Cached(
            self._cache,
            self._fn,
            self._ttl,
            self._key,
            self._model,
            self._overrides,
            this,
            self._tags,
            self._signature,
        )

    def __repr__(self) -> str:
        return f"<cached {self._names}>"

    def _tags_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, ...]:
        if not self._tags:
            return ()
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return tuple(template.format_map(bound.arguments) for template in self._tags)

    def _key_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        spec = self._key
        if callable(spec):
            made = spec(*args, **kwargs)
            if not isinstance(made, str):
                raise TypeError(
                    f"the key callable of {self._names} returned {type(made).__name__}, not a str"
                )
            return made
        bound = self._signature.bind(*args, **kwargs)  # (TypeError, as calling fn would)
        bound.apply_defaults()
        if isinstance(spec, str):
            return spec.format_map(bound.arguments)
        arguments = dict(bound.arguments)
        if self._this is not None:
            arguments.pop(next(iter(self._signature.parameters)))  # self (or cls)
        try:
            text = orjson.dumps(
                arguments,
                default=_typed,
                option=orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS,
            ).decode()
        except TypeError as exc:
            raise TypeError(
                f"cannot make a key for {self._names} from its arguments ({exc}): pass "
                "key='name:{arg}' (a template of its parameters) or key=a callable to "
                "cached()"
            ) from exc
        return f"{self._names}:{text}"


def _typed(value: object) -> object:
    """Give a dataclass argument of a default key its type's name beside its fields.

    (Two dataclasses with the same fields, or one and a dict, must not share a key.)
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind = type(value)
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {"__type__": f"{kind.__module__}.{kind.__qualname__}", **fields}
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def _check_template(
    template: str, signature: inspect.Signature, fn: object, what: str = "key template"
) -> None:
    """Refuse a template (*what*) naming what *fn* has no parameter for."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise TypeError(f"{what} {template!r} is not a format string: {exc}") from exc
    for name in fields:
        root = name.split(".", 1)[0].split("[", 1)[0]
        if root not in signature.parameters:
            raise TypeError(
                f"{what} {template!r} names {{{name}}}, but {fn!r} has no parameter "
                f"{root!r} (its parameters: {list(signature.parameters)}); name one of them, "
                "or pass key= a callable"
            )
