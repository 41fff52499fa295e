"""Codecs: how a value of the caller's type becomes what the envelope stores, and back.

Without one, values are stored as they are: ``bytes`` raw, anything else as
JSON (orjson), and what comes back is that JSON (a ``dict``, a ``list``...).
A value that would not come back as itself (a dataclass, a pydantic model,
a ``datetime``) is refused with the fix in the message, rather than stored
as a ``dict`` or a string while the caller's types say otherwise.

With ``model=`` the call names the type it wants back: a `Codec` turns the
computed value into its stored form and every read back into that type.
Any type pydantic's ``TypeAdapter`` knows (a ``BaseModel``, a dataclass, a
``TypedDict``, ``list[User]``...) works with the ``pydantic`` extra; any
object with ``dump`` and ``load`` (the `Codec` protocol) works without it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar, final, runtime_checkable

from ._exceptions import SerializationError

if TYPE_CHECKING:
    from pydantic import TypeAdapter

__all__ = ["Codec", "Stored", "Validator", "cannot_store", "codec_for", "loaded"]

T = TypeVar("T")

# What a call without a model may return, for type checkers: what JSON holds
# (a mapping's values are checked when the value is stored), or bytes.
Stored: TypeAlias = (
    "bool | int | float | str | bytes | Sequence[Stored] | Mapping[str, object] | None"
)


@runtime_checkable
class Codec(Protocol[T]):
    """Turns values of one type into what the cache stores, and back.

    The stored form is ``bytes`` (stored as they are) or a value orjson
    serializes faithfully (``dict``, ``list``, ``str``, numbers, ``bool``,
    ``None``); ``load`` gets back what ``dump`` gave (bytes, or the JSON
    as parsed). Every caller of one key must use the same codec (or one
    that reads what it writes). ``None`` is never given to either: a
    compute that returns ``None`` stores ``None`` (see ``negative_ttl``).
    """

    def dump(self, value: T, /) -> object:
        """Return *value*'s stored form.

        Raises:
            SerializationError: *value* cannot be stored (say why, and what to do).

        """
        ...

    def load(self, stored: Any, /) -> T:
        """Return the value whose stored form is *stored*.

        Raises:
            ValueError: *stored* does not fit the type (a value stored before
                the type changed, say): the cache treats it as a miss and
                computes anew.

        """
        ...


T_co = TypeVar("T_co", covariant=True)


class Validator(Protocol[T_co]):
    """What ``model=`` takes besides a type and a `Codec`: a pydantic ``TypeAdapter``."""

    def validate_python(self, stored: Any, /) -> T_co:
        """Return the value whose JSON form is *stored* (``ValueError``: it does not fit)."""
        ...


@final
class _Adapted:
    """A `Codec` over a pydantic ``TypeAdapter``: JSON form out, validated type back."""

    __slots__ = ("_adapter", "_by_alias", "_kind", "_name")

    def __init__(self, adapter: TypeAdapter[Any], name: str, kind: type | None = None) -> None:
        self._adapter = adapter
        self._name = name
        # The class a value must be an instance of (a pydantic model's, a
        # dataclass's), where one is named: another class's value would be
        # turned into it, or fail as if it lost data.
        self._kind = kind
        # Fields under their aliases in the JSON form, as FastAPI writes them
        # and as a model validates by default; by name for a model that reads
        # them back only so (an alias for dumps alone). Found per model on
        # its first store whose read-back needs the other way.
        self._by_alias = True

    def dump(self, value: object, /) -> object:
        """Return *value*'s JSON form, if *value* comes back from it as itself.

        The JSON form names fields as the model reads them back: by alias
        (as FastAPI's camelCase models read them), or by name for a model
        that reads names only.

        Raises:
            SerializationError: *value* is not of the model, cannot be put in
                JSON (``bytes`` that are not UTF-8), or does not come back
                equal (a ``SecretStr`` is dumped masked, an excluded field is
                left out; aliases the model does not read back): what would
                be stored is not what was computed.

        """
        from pydantic_core import PydanticSerializationError

        kind = self._kind
        if kind is not None and not isinstance(value, kind):
            raise SerializationError(
                f"cannot store a value of type {type(value).__name__} as model={self._name}: "
                f"store a {self._name}, or name the model the value is of"
            )
        try:
            stored = self._dump(value, self._by_alias)
        except (PydanticSerializationError, ValueError) as exc:  # (UnicodeDecodeError too)
            hint = (
                "; for bytes, give the model ser_json_bytes='base64' and "
                "val_json_bytes='base64' in its config (pydantic's ConfigDict)"
                if isinstance(exc, UnicodeDecodeError)
                else f"; store a value of type {self._name}, or name the model the value is of"
            )
            raise SerializationError(
                f"cannot store a value of type {type(value).__name__} as model={self._name}: "
                f"{exc}{hint}"
            ) from exc
        # Read back once per store (never per hit): what is stored must be
        # what was computed, where the type can tell (it defines ==).
        if type(value).__eq__ is object.__eq__:
            return stored
        problem = self._read_back(value, stored)
        if problem is None:
            return stored
        # The other way (names for aliases, or back): a model that reads its
        # fields back only so. Kept for the model's next stores if it works.
        try:
            other = self._dump(value, not self._by_alias)
        except (PydanticSerializationError, ValueError):
            other = None
        if other is not None and self._read_back(value, other) is None:
            self._by_alias = not self._by_alias
            return other
        raise SerializationError(
            f"a value of type {type(value).__name__} stored as model={self._name} does not come "
            f"back equal from its JSON form, by aliases or by field names ({problem}): a field "
            "is masked (SecretStr), excluded from dumps, changed by its serializer, or read "
            "back under another name than it is written (if its fields have aliases, let the "
            "model validate by name as well: ConfigDict(populate_by_name=True)); so what would "
            "be stored is not what was computed. Give it a JSON form that holds everything, "
            "or pass an asyncstampede.Codec of your own"
        )

    def _dump(self, value: object, by_alias: bool) -> Any:
        return self._adapter.dump_python(value, mode="json", warnings="error", by_alias=by_alias)

    def _read_back(self, value: object, stored: Any) -> str | None:
        """Return why *stored* does not read back as *value* (None: it does)."""
        from pydantic import ValidationError

        try:
            back = self._adapter.validate_python(stored)
        except ValidationError as exc:
            return " ".join(str(exc).split())  # (one line: pydantic's has several)
        return None if back == value else "it reads back as another value"

    def load(self, stored: Any, /) -> object:
        # (pydantic's ValidationError is a ValueError: a misfit is a miss.)
        return self._adapter.validate_python(stored)

    def __repr__(self) -> str:
        return f"<codec for {self._name}>"


def codec_for(model: object) -> Codec[Any] | None:
    """Return the codec *model* stands for (None: none, values as stored).

    Raises:
        ImportError: *model* is a type and pydantic is not installed.
        TypeError: *model* is neither a type pydantic knows nor a `Codec`.

    """
    if model is None:
        return None
    if not isinstance(model, type) and isinstance(model, Codec):
        return model
    if hasattr(model, "validate_python") and hasattr(model, "dump_python"):  # a TypeAdapter
        return _Adapted(model, repr(getattr(model, "_type", model)))  # type: ignore[arg-type]
    return _adapted(model)


@functools.lru_cache(maxsize=512)
def _adapted(model: Any) -> Codec[Any]:
    name = getattr(model, "__name__", None) or repr(model)
    try:
        from pydantic import PydanticSchemaGenerationError, PydanticUserError, TypeAdapter
    except ImportError as exc:
        raise ImportError(
            f"model={name} needs pydantic: pip install 'asyncstampede[pydantic]' (or pass "
            "an object with dump() and load(), an asyncstampede.Codec)"
        ) from exc
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(model)
    except (PydanticSchemaGenerationError, PydanticUserError, TypeError) as exc:
        # (PydanticUserError: e.g. typing.TypedDict before Python 3.12, which
        # pydantic asks to be typing_extensions.TypedDict.)
        if "typing_extensions" in str(exc):
            raise TypeError(
                f"model={name!s} is a typing.TypedDict, which pydantic validates only from "
                "Python 3.12 on: define it with typing_extensions.TypedDict instead "
                f"(from typing_extensions import TypedDict) ({exc})"
            ) from exc
        raise TypeError(
            f"model={name!s} is not a type pydantic can validate ({exc}); pass a class "
            "(a pydantic BaseModel, a dataclass, a TypedDict), a type such as list[User], "
            "or an asyncstampede.Codec"
        ) from exc
    is_class = isinstance(model, type) and (
        dataclasses.is_dataclass(model) or hasattr(model, "model_fields")
    )
    return _Adapted(adapter, name, model if is_class else None)


def cannot_store(value: object, error: Exception) -> str:
    """Say why *value* cannot be stored without a model (orjson raised *error*), and the fix."""
    kind = type(value).__name__
    hint = _hint(value)
    if hint is None:
        hint = (
            "pass model=<the type the compute returns> so it comes back as that type (pip "
            "install 'asyncstampede[pydantic]'), or return only JSON types (str, int, float, "
            "bool, None, list, dict with str keys) or bytes"
        )
        if "datetime" in str(error):
            hint += "; a datetime would come back as a str: store value.isoformat()"
        if "recursion limit" in str(error).lower():
            hint = (
                "it nests deeper than JSON encoding allows (254 levels): store a flatter "
                "form of it, or bytes of an encoding of your own"
            )
    return f"cannot store a value of type {kind}: {error}; {hint}"


def _hint(value: object) -> str | None:
    kind = type(value).__name__
    if hasattr(type(value), "model_dump"):
        return (
            f"a pydantic {kind} would come back as a dict: pass model={kind} to get the {kind} "
            "back (pip install 'asyncstampede[pydantic]'), or return value.model_dump(mode="
            "'json') to store its JSON form"
        )
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (
            f"a dataclass {kind} would come back as a dict: pass model={kind} to get the {kind} "
            "back (pip install 'asyncstampede[pydantic]'), or return dataclasses.asdict(value) "
            "to store its JSON form"
        )
    return None


def loaded(codec: Codec[Any], value: Any) -> Any:
    """Return a resolved *value* as *codec*'s type (it was checked, or just stored by it).

    Raises:
        SerializationError: the codec cannot read what it wrote.

    """
    if value is None:
        return None
    try:
        return codec.load(value)
    except (ValueError, TypeError) as exc:  # the codec does not read what it writes
        raise SerializationError(
            f"{codec!r} cannot read the value resolved for this call ({exc}): callers "
            "of one key name different models (every caller of a key should name the "
            "same one; the resolution is the first caller's), or a codec's load() does "
            "not accept what its dump() returns"
        ) from exc
