"""In-process flights: one resolution per key per process, awaited by every local caller.

A `Flight` is what local callers of one key await; the computes running in
a task (and the tasks they start) are in the `computing` context variable,
so a call that would wait for itself is refused (`check_reentry`) instead
of hanging. Failures reach each caller as its own copy (`own_copy`).
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from types import TracebackType
from typing import Any, final

import anyio
import orjson

from ._exceptions import ReentrantCallError

__all__ = ["Computation", "Flight", "blocked_on", "check_reentry", "computing", "own_copy"]


@final
class Computation:
    """One running compute, as the tasks inside it (and those it starts) see it."""

    __slots__ = ("active", "flight", "lock", "owner", "store")

    def __init__(self, store: object, lock: bytes, owner: int, flight: Flight) -> None:
        self.store = store  # what stores the key (see Runtime.store)
        self.lock = lock  # the key's lock name
        self.owner = owner  # id() of the Stampede running it
        self.flight = flight  # the resolution it computes for
        self.active = True  # False once it returned: tasks it started may outlive it


# The computes the current task runs inside (or was started from): a call
# for one of their keys would wait for itself. Copied into every task
# started from a compute, so a cycle inside one call chain (a -> b -> a) is
# seen too; one across callers is seen through Flight.waiting_on.
computing: ContextVar[tuple[Computation, ...]] = ContextVar("asyncstampede_computing", default=())


@final
class Flight:
    """One in-process resolution of one key, awaited by every local caller.

    The caller that started it gets the value itself; every caller that
    joined gets its own copy (decoded again from a snapshot taken when the
    flight settled, before anyone could change the value), unless the
    instance shares values. A failure reaches each joiner as its own copy
    of the exception, with the compute's traceback and nothing else.
    The event is made only when a second caller joins: most hits have none.
    """

    __slots__ = (
        "_event",
        "_json",
        "_tb",
        "_template",
        "detached",
        "done",
        "error",
        "joiners",
        "share",
        "tags",
        "value",
        "waiting_on",
    )

    def __init__(self, share: bool = False) -> None:
        self._event: anyio.Event | None = None
        self._json: bytes | None = None
        self._tb: TracebackType | None = None
        self._template: BaseException | None = None
        self.detached = False  # by invalidate: what it computes must not be stored
        self.done = False
        self.share = share
        self.tags: tuple[str, ...] = ()  # its call's tags: an invalidated one detaches it
        self.joiners = 0
        self.value: Any = None
        self.error: BaseException | None = None
        # Flights its compute is blocked on (see check_reentry).
        self.waiting_on: list[Flight] | None = None

    def settle(self, value: Any, error: BaseException | None) -> None:
        self.value, self.error, self.done = value, error, True
        # Snapshots are taken now: the first caller to run again may change
        # the value, or the exception (a note, its args, its context).
        if error is not None:
            self._tb = error.__traceback__
            if self.joiners:
                self._template = own_copy(error, self._tb)
        elif self.joiners and not self.share and type(value) in (dict, list):
            self._json = orjson.dumps(value)
        if self._event is not None:
            self._event.set()

    async def outcome(self, *, started: bool = False) -> Any:
        """Wait for the outcome; *started*: the caller that started the flight."""
        if not started:
            self.joiners += 1
        if not self.done:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()
        if self.error is not None:
            if started or self._template is None:
                raise self.error
            raise own_copy(self._template, self._tb)
        if self._json is not None and not started:
            return orjson.loads(self._json)
        return self.value


def check_reentry(
    flights: dict[str, Flight], store: object, key: str, lock: bytes, doing: str
) -> Flight | None:
    """Refuse a call that would wait for itself; return the flight of the compute asking.

    *store* identifies what stores the key (computes of one key over one
    store wait for each other, whichever instance runs them); *flights* is
    the asking instance's table.

    Raises:
        ReentrantCallError: the current task computes *key* (or a compute
            it was started from does), or the resolution of *key* in this
            process is itself waiting, through the computes of other keys,
            for one of those computes (a cycle between callers).

    """
    active = [c for c in computing.get() if c.active]
    if not active:
        return None
    for c in active:
        if c.lock == lock and c.store == store:
            raise ReentrantCallError(
                f"{doing} {key!r} from inside the compute of {key!r} (directly, through a "
                "task it started, or through the compute of another key it asked for) "
                "would wait for itself; pass the value down instead of asking the cache"
            )
    flight = flights.get(key)
    if flight is not None and _waits_for(flight, {id(c.flight) for c in active}):
        raise ReentrantCallError(
            f"{doing} {key!r} from inside a compute would wait for itself: the compute "
            f"of {key!r} is waiting (directly or through other keys) for the key being "
            "computed here; break the cycle between the two computes"
        )
    return active[-1].flight


# Attributes that built-in exception types keep in C and set in __init__
# (OSError, ImportError, AttributeError, NameError, SystemExit, StopIteration,
# UnicodeError, SyntaxError): copied by name, as __new__ alone leaves them empty.
_BUILTIN_FIELDS = (
    "errno",
    "strerror",
    "filename",
    "filename2",
    "name",
    "path",
    "obj",
    "code",
    "value",
    "encoding",
    "object",
    "start",
    "end",
    "reason",
    "msg",
    "lineno",
    "offset",
    "text",
    "end_lineno",
    "end_offset",
)


async def blocked_on(asking: Flight, flight: Flight, *, started: bool) -> Any:
    """Await *flight* from inside the compute of *asking*, recording the edge for cycle checks."""
    waiting = asking.waiting_on
    if waiting is None:
        waiting = asking.waiting_on = []
    waiting.append(flight)
    try:
        return await flight.outcome(started=started)
    finally:
        waiting.remove(flight)


def _waits_for(flight: Flight, targets: set[int]) -> bool:
    """Tell whether *flight*'s compute waits, through other flights, for one of *targets* (ids)."""
    todo, seen = [flight], set()
    while todo:
        f = todo.pop()
        if id(f) in targets:
            return True
        if id(f) in seen or not f.waiting_on:
            continue
        seen.add(id(f))
        todo.extend(f.waiting_on)
    return False


def own_copy(error: BaseException, tb: TracebackType | None) -> BaseException:
    """Return a copy of *error* for one more caller, with the traceback it had when raised.

    Raising one object to many callers would grow its traceback by every
    caller's frames (and let one caller's handler see another's). The copy
    is made without calling ``__init__`` again (which may have reworded its
    arguments): same class, ``args``, attributes (slots too), cause, context
    and notes; a shallow copy (an attribute's own objects are shared).
    An exception that does not copy faithfully (its text differs, as some
    with state kept in C can) is raised itself, its traceback reset to the
    original.
    """
    cls = type(error)
    try:
        twin = cls.__new__(cls, *error.args)
        twin.__dict__.update(error.__dict__)
        for klass in cls.__mro__:
            slots = klass.__dict__.get("__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                if name not in ("__dict__", "__weakref__") and hasattr(error, name):
                    setattr(twin, name, getattr(error, name))
        for name in _BUILTIN_FIELDS:  # set by built-in __init__s, which were not called
            with contextlib.suppress(AttributeError, TypeError):  # not its field; read-only
                field = getattr(error, name)
                if field is not None:  # (an OSError's filename2 set to None shows as "-> None")
                    setattr(twin, name, field)
        faithful = type(twin) is cls and twin.args == error.args and str(twin) == str(error)
    except Exception:
        faithful = False
    if not faithful:
        return error.with_traceback(tb)
    twin.__cause__ = error.__cause__
    twin.__context__ = error.__context__
    twin.__suppress_context__ = error.__suppress_context__
    notes = getattr(error, "__notes__", None)
    if isinstance(notes, list):
        twin.__notes__ = list(notes)
    return twin.with_traceback(tb)
