"""Batch reads: ``get_many_or_compute``, many keys in one read and one compute.

A batch is many resolutions of one key each, run by the same machinery as
``get_or_compute``; only the edges are grouped:

1. ``_flight``: a key already in flight in this process (a
   ``get_or_compute`` or another batch) is joined, never resolved twice.
   Every other key gets a flight of its own, which later callers join.
2. One ``MGET`` (`Backend.read_many`) reads every key of the batch that is
   not in flight, in the caller's own task. Each value found is judged by
   ``_resolve.serve``: the same freshness verdict, stale-while-revalidate
   and XFetch early refresh as a single read.
3. Each key left over goes to its own task, as a miss does in ``_resolve``:
   its lock is asked for (the tasks start in one loop turn, so their
   ``SET NX`` commands leave together on the auto-pipelined request
   connection: one round trip for all), then ``_resolve.decide`` leads,
   waits for another holder, or falls back, exactly as for one key.
4. The computes: a key's compute function is a slot in a `_Batch`. The
   keys whose locks the first attempt got (and those that fail open) are
   known once every key has had its answer; ``batch_fn`` is then called
   once with all of them, and each key's slot hands its value to its own
   lead, which commits it with the usual script (waking every waiter);
   a call's commits, or its releases when it fails, leave in one write
   (`Backend.gather`). Keys that come to compute later (a holder elsewhere
   that failed and let go, a takeover after a wait, a wait that timed
   out, a background refresh) go to further calls of ``batch_fn``, and
   the keys that become the call's own together share one: such a call
   waits while any waiting key's look at its lock is on its way (see
   `_Batch`).

Decoding happens in one place here (`_open`); encoding is the leads' own
(``_compute.encode_value``).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from time import monotonic
from types import TracebackType
from typing import Any, NoReturn, cast, final

import anyio
import anyio.lowlevel

from ._backends.base import Acquired, Held, Hit
from ._backends.interest import Interest
from ._backends.messages import Signal
from ._codec import Codec, loaded
from ._compute import cancelled_from_outside
from ._envelope import Envelope
from ._events import Coalesced, Miss
from ._exceptions import (
    BackendError,
    ClosedError,
    ComputeFailedError,
    ComputeTimeoutError,
    MissingFromBatchError,
)
from ._flight import Computation, Flight, check_reentry, computing, own_copy
from ._freshness import Policy
from ._keys import KeyNames, NamesCache, plain_key
from ._lead import compute_uncached, compute_unlocked
from ._read import LOOK, await_flight, read_interrupted
from ._resolve import _value_handler, decide, resolve, serve
from ._runtime import Again, Request, Runtime, value_of
from ._tags import fingerprint, tag_names
from ._wait import LAPSE_SLACK

__all__ = ["BatchFn", "checked_keys", "get_many", "refuse_batch_fn"]

BatchFn = Callable[[list[str]], Awaitable[Mapping[str, Any]]]


def checked_keys(keys: object) -> list[str]:
    """Return *keys* as a list of plain ``str`` keys, each once, in their first order.

    Raises:
        TypeError: *keys* is a single ``str`` or ``bytes``, is not iterable,
            or holds something other than a ``str``.
        ValueError: *keys* is empty, or holds an empty key.

    """
    if isinstance(keys, (str, bytes, bytearray, memoryview)):
        raise TypeError(
            f"keys must be a collection of str keys, not one {type(keys).__name__}: pass "
            "[key] (or use get_or_compute for one key)"
        )
    if not isinstance(keys, Iterable):
        raise TypeError(f"keys must be an iterable of str keys, not {type(keys).__name__}")
    plain: dict[str, None] = {}
    for i, key in enumerate(keys):
        if not isinstance(key, str):
            raise TypeError(
                f"keys[{i}] is of type {type(key).__name__}, not a str: cache keys are str "
                "(format them, e.g. f'user:{user_id}')"
            )
        if not key:
            raise ValueError(f"keys[{i}] is empty: cache keys must not be empty")
        plain[plain_key(key)] = None  # duplicates: one entry, one compute
    if not plain:
        raise ValueError(
            "keys is empty: there is nothing to read or compute; skip the call "
            "when there are no keys (for example `if ids:`)"
        )
    return list(plain)


def refuse_batch_fn(batch_fn: object) -> NoReturn:
    """Raise the `TypeError` for a batch function that cannot be one."""
    if inspect.iscoroutine(batch_fn):
        batch_fn.close()  # never awaited, and never will be: no warning about it
        raise TypeError(
            "batch_fn is a coroutine, not a function: pass the function itself "
            "(get_many_or_compute(keys, load_many, ttl)), which is called with the list "
            "of keys to compute"
        )
    raise TypeError(
        "batch_fn must be an async callable taking a list of keys and returning a "
        f"mapping of key to value, not {type(batch_fn).__name__}"
    )


def _open(rt: Runtime, payload: bytes, req: Request) -> Envelope | None:
    """Decode a stored envelope for *req* (the batch's one decoding place), else None.

    None: corrupt (counted), stamped before one of its tags was invalidated,
    or not loadable by its codec (see `Runtime.decode`).
    """
    return rt.decode(payload, req)


async def get_many(
    rt: Runtime,
    names_of: NamesCache,
    keys: list[str],
    batch_fn: BatchFn,
    ttl_ms: int,
    policy: Policy,
    codec: Codec[Any] | None = None,
    tags: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Resolve every key of *keys* (checked, distinct); return key -> value in their order.

    *codec*: each value's type (``model=``); *tags*: every key's (see ``_tags``).

    The caller has checked the instance is open (its task group exists).
    Raises the error of the first key (in *keys*' order) that failed, once
    every key has its outcome; the keys that did not fail are cached all
    the same.
    """
    names = {key: names_of[key] for key in keys}  # (every key checked before anything starts)
    asking: Flight | None = None
    if computing.get():
        for key in keys:
            asking = check_reentry(rt.flights, rt.store, key, names[key].lock, "asking for")
    batch = _Batch(rt, batch_fn, names, policy, codec)
    flights: dict[str, Flight] = {}
    mine: list[str] = []  # the keys this call resolves (the others joined a flight)
    for key in keys:
        flight = rt.flights.get(key)
        if flight is not None:
            rt.counters.coalesced += 1
            if rt.hooked:
                rt.hooks.emit(Coalesced(rt.namespace, key))
        else:
            flight = rt.flights[key] = Flight(rt.settings.share_values)
            flight.tags = tags
            mine.append(key)
        flights[key] = flight
    if mine:
        tagged = (names_of.namespace, tags)
        await _read_and_hand_off(rt, batch, mine, flights, names, ttl_ms, policy, codec, tagged)
    first_error: BaseException | None = None
    first_key = ""
    failed = 0
    values: dict[str, Any] = {}
    for key in keys:
        # Each flight runs in a task of the instance: awaiting them one by
        # one delays none of them.
        try:
            value = await await_flight(flights[key], asking, started=key in batch.mine)
            values[key] = value if codec is None else loaded(codec, value)
        except Exception as exc:
            failed += 1
            if first_error is None:
                first_error = exc
                first_key = key
    if first_error is not None:
        first_error.add_note(
            f"get_many_or_compute: key {first_key!r} failed ({failed} of {len(keys)} keys "
            + ("failed)" if failed == len(keys) else "failed; the values of the others are cached)")
        )
        raise first_error
    return values


async def _read_and_hand_off(
    rt: Runtime,
    batch: _Batch,
    mine: list[str],
    flights: dict[str, Flight],
    names: dict[str, KeyNames],
    ttl_ms: int,
    policy: Policy,
    codec: Codec[Any] | None,
    tagged: tuple[str, tuple[str, ...]],
) -> None:
    """Read *mine* with one ``MGET``; settle what may be served; start a task per miss.

    *tagged*: the namespace and the keys' tags, whose generations the
    ``MGET`` reads too (their fingerprint stamps the values, see ``_tags``).
    """
    batch.mine.update(mine)
    budget = rt.settings.redis_budget
    failure: BackendError | None = None
    namespace, tags = tagged
    generations = tag_names(namespace, tags) if tags else []
    stamp = 0
    started = monotonic()  # the call's budget for Redis starts with its read
    try:
        found = await rt.backend.read_many([names[key] for key in mine], generations)
        # (On a Redis Cluster, the keys of a primary that failed are its
        # error: they fail as their own get_or_compute would, the rest go on.)
        payloads = found[: len(mine)]
        current = found[len(mine) :]
        broken = next((g for g in current if isinstance(g, BackendError)), None)
        if broken is not None:  # every key's value is judged by the tags: all fail
            payloads, failure = [None] * len(mine), broken
        elif tags:
            if any(g is None for g in current):  # never made, or evicted: validates nothing
                current = list(await rt.backend.generations(generations, renew=False))
                payloads = [None] * len(mine)
            stamp = fingerprint(tags, cast("list[bytes]", current))
    except BackendError as exc:
        payloads, failure = [None] * len(mine), exc
    except BaseException as exc:
        left = budget - (monotonic() - started)
        for key in mine:
            read_interrupted(
                rt,
                key,
                names[key],
                flights[key],
                batch.fn_for(key),
                ttl_ms,
                policy,
                exc,
                left,
                codec,
                stamp,
            )
        raise
    if rt.hooked:
        rt.timed("MGET", started, failure)
    then = (
        "computing them without the cache"
        if rt.settings.fail_open
        else "raising (fail_open is off)"
    )
    if failure is not None:  # one read failed: one failure, counted and logged once
        rt.failed(failure, f"reading {len(mine)} keys (MGET); {then}")
    else:
        # A Redis Cluster primary that failed: its keys' one failure, logged once.
        for error in {id(p): p for p in payloads if isinstance(p, BackendError)}.values():
            assert isinstance(error, BackendError)
            count = sum(1 for p in payloads if p is error)
            rt.failed(error, f"reading {count} of {len(mine)} keys (MGET); {then}")
    left = budget - (monotonic() - started)
    misses: list[tuple[Request, BackendError | Again]] = []
    for key, payload in zip(mine, payloads, strict=True):
        req = Request(
            key, names[key], flights[key], batch.fn_for(key), ttl_ms, policy, left, codec, stamp
        )
        req.looks = batch  # how its wait for another holder fares (see _Batch)
        if failure is not None:
            misses.append((req, failure))
            continue
        if isinstance(payload, BackendError):
            misses.append((req, payload))
            continue
        if payload is None:
            misses.append((req, LOOK))
            continue
        envelope = _open(rt, payload, req)
        if envelope is not None and serve(rt, req, envelope, payload):
            try:
                value = value_of(envelope)
            except ComputeFailedError as exc:  # a cached failure, still fresh
                rt.finish(key, req.flight, error=exc)
            else:
                rt.finish(key, req.flight, value=value)
            continue
        misses.append((req, Again(read=False, seen=payload)))  # not to be served as it is
    if not misses:
        return
    # Looked up now, not when the call began: the read may have outlasted it.
    tg = rt.tg
    if tg is None:
        for req, _ in misses:
            rt.finish(req.key, req.flight, error=ClosedError("the Stampede closed during the call"))
        return
    batch.expect(len(misses))
    for req, first in misses:
        tg.start_soon(resolve, rt, req, first, functools.partial(_drive_one, batch=batch))


async def _drive_one(
    rt: Runtime, req: Request, token: bytes, first: BackendError | Again, batch: _Batch
) -> Any:
    """`_resolve._drive` for one key of a batch: it tells *batch* whether it will compute."""
    listener = rt.backend.listener
    # Registered before Redis is asked about the lock (see _resolve._drive).
    interest = listener.register(req.names.lock)
    interest.on_value = _value_handler(rt, req)
    told = False
    try:
        state: Hit | Acquired | Held | BackendError | Again = first
        seen = first.seen if isinstance(first, Again) else None
        for _ in range(3):
            if not isinstance(state, Again):
                break
            found = await rt.acquire(req, token, read=state.read, seen=state.seen)
            if not isinstance(found, Hit):
                state = found
                continue
            envelope = _open(rt, found.payload, req)
            if envelope is not None and serve(rt, req, envelope, found.payload):
                return value_of(envelope)
            seen = found.payload
            state = Again(read=False, seen=seen)
        rt.counters.misses += 1
        if rt.hooked:
            rt.hooks.emit(Miss(rt.namespace, req.key))
        batch.told(req, computes=_will_compute(rt, req, state))
        told = True
        if state is first and isinstance(state, BackendError):
            # The batch's read failed (logged once for every key): no stale
            # value was read, no lock asked for; as `_resolve._on_backend_error`.
            if not rt.settings.fail_open:
                raise own_copy(state, state.__traceback__)  # (each key's caller its own)
            return await compute_uncached(rt, req)
        if isinstance(state, Again):
            return await compute_unlocked(rt, req)  # (see _resolve._drive)
        asked = state is not first
        return await decide(rt, req, token, state, interest, seen, asked_lock=asked)
    finally:
        if not told:
            batch.told(req, computes=False)
        batch.forget(req.key)  # (a look cut short, or a lock of ours that never computed)
        listener.unregister(req.names.lock, interest)


def _will_compute(
    rt: Runtime, req: Request, state: Hit | Acquired | Held | BackendError | Again
) -> bool:
    """Whether `decide` goes straight to the compute with *state* (see `_resolve.decide`)."""
    if isinstance(state, (Acquired, Again)):
        return True
    if isinstance(state, BackendError):  # fails open, unless a stale value is served
        return rt.settings.fail_open and req.usable_stale() is None
    return False  # held: it waits (a hit never gets here)


@final
class _Group:
    """One call of ``batch_fn``: the keys it computes, and its outcome."""

    __slots__ = ("_done", "_tb", "claimed", "error", "keys", "members", "result", "started")

    def __init__(self) -> None:
        self.members: dict[str, Computation] = {}  # key -> its compute, as others see it
        self.keys: list[str] = []
        self.claimed: set[str] = set()  # keys whose value was handed to their compute
        self.started = False  # batch_fn called: no more keys join
        self.result: Mapping[str, Any] | None = None
        self.error: BaseException | None = None
        self._tb: TracebackType | None = None
        self._done = anyio.Event()

    def add(self, key: str, computation: Computation) -> None:
        self.members[key] = computation
        self.keys.append(key)

    def settle(self, result: Mapping[str, Any] | None, error: BaseException | None) -> None:
        self.result, self.error = result, error
        if error is not None:
            self._tb = error.__traceback__
        self._done.set()

    async def value_of(self, key: str) -> Any:
        """Wait for the call; return *key*'s value, or raise (each key its own copy)."""
        await self._done.wait()
        if self.error is not None:
            raise own_copy(self.error, self._tb)
        assert self.result is not None
        try:
            return self.result[key]
        except KeyError:
            raise MissingFromBatchError(
                f"batch_fn returned no value for {key!r}: return a value for every key it "
                f"is given (None is a value), or raise; it returned {len(self.result)} of "
                f"{len(self.keys)}"
            ) from None


@final
class _Batch:
    """The computes of one ``get_many_or_compute`` call: one ``batch_fn`` call per group of keys.

    Each key's compute function is `fn_for` (what its `Request` calls). The
    first group is the keys whose first look at the lock sent them to the
    compute; it calls ``batch_fn`` once every key of the call has had that
    look (`told`). A key that comes to compute otherwise (after waiting for
    another holder) starts or joins a later group, which takes the keys
    that come in the same loop turn, then waits while any key waiting for
    another holder has a look at its lock on its way (`_runtime.Looks`):
    that key may be about to become the call's too, as when the holder
    lets all its locks go at once (its ``batch_fn`` failed). A lock that
    became the key's own counts as a look until the key joins its group.
    And when a waiting key takes over a lock that ran out, the others
    whose locks ran out too look at once (`lapsed`), rather than each at
    its own jittered timer, a few milliseconds apart: the holder died
    holding them all. No timer is involved: the group goes as soon as no
    look is on its way.
    """

    __slots__ = (
        "_codec",
        "_expected",
        "_first",
        "_fn",
        "_idle",
        "_later",
        "_looking",
        "_names",
        "_order",
        "_policy",
        "_rt",
        "_waiting",
        "mine",
    )

    def __init__(
        self,
        rt: Runtime,
        batch_fn: BatchFn,
        names: dict[str, KeyNames],
        policy: Policy,
        codec: Codec[Any] | None = None,
    ) -> None:
        self._rt = rt
        self._codec = codec  # each value is stored in its form (model=)
        self._fn = batch_fn
        self._names = names
        self._order = {key: i for i, key in enumerate(names)}  # (names is in the call's order)
        self._policy = policy
        self.mine: set[str] = set()  # the keys whose flights the call started
        self._expected = 0  # keys yet to tell whether they compute
        self._first = _Group()
        self._later: _Group | None = None  # a later group still taking keys
        # Keys waiting for another holder: each one's interest, and when
        # its holder's lock runs out as last seen.
        self._waiting: dict[str, tuple[Interest, float]] = {}
        # Keys whose look at their lock is on its way, or made the lock ours
        # and has not joined a group yet; `_idle` is set while there is none.
        self._looking: set[str] = set()
        self._idle = anyio.Event()
        self._idle.set()

    def expect(self, misses: int) -> None:
        """*misses* keys will each tell (`told`) whether they compute."""
        self._expected = misses

    def told(self, req: Request, *, computes: bool) -> None:
        """One key's first look at its lock is done; the last one starts the first group."""
        first = self._first
        if computes:
            first.add(
                req.key, Computation(self._rt.store, req.names.lock, id(self._rt), req.flight)
            )
        self._expected -= 1
        if self._expected == 0 and first.keys:
            self._start(first, wait_a_turn=False)

    # -- how the keys waiting for other holders fare (`_runtime.Looks`) ------------

    def waits(self, key: str, interest: Interest, until: float) -> None:
        """*key* waits on *interest* for a lock its holder has until *until*."""
        self._waiting[key] = (interest, until)

    def began(self, key: str) -> None:
        """*key* looks at its lock: a later group holds its keys until the look is back."""
        if not self._looking:
            self._idle = anyio.Event()
        self._looking.add(key)

    def ended(self, key: str) -> None:
        """*key*'s look is over: the lock is not ours, or the key joined a group."""
        if key in self._looking:
            self._looking.discard(key)
            if not self._looking:
                self._idle.set()

    def lapsed(self, key: str) -> None:
        """*key* took over a lock that ran out: the others whose locks ran out look now.

        Their own timers, each with a jitter of its own (up to 2% of the
        lock's TTL), would send them apart, each to a ``batch_fn`` call of
        its own; looking now, while this key's group is held for their
        looks, they join it. (A lock that has not run out after all is
        found held: one look more for that key.)
        """
        now = anyio.current_time()
        for other, (interest, until) in self._waiting.items():
            if other != key and other not in self._looking and until - LAPSE_SLACK <= now:
                self.began(other)
                interest.push(Signal.RECHECK)

    def left(self, key: str, *, ours: bool) -> None:
        """*key* waits no more; *ours*: the lock is ours (its look ends in its group)."""
        self._waiting.pop(key, None)
        if not ours:
            self.ended(key)

    def forget(self, key: str) -> None:
        """*key*'s resolution is over: nothing of it holds a group any more."""
        self._waiting.pop(key, None)
        self.ended(key)

    def fn_for(self, key: str) -> Callable[[], Awaitable[Any]]:
        """Return *key*'s compute function: its value out of a ``batch_fn`` call."""
        if self._codec is None:
            return lambda: self._slot(key)
        codec = self._codec

        async def dumped() -> Any:
            value = await self._slot(key)
            return None if value is None else codec.dump(value)

        return dumped

    async def _slot(self, key: str) -> Any:
        first = self._first
        if key in first.members and key not in first.claimed:
            # Taken once: a later compute of the key (a background refresh)
            # must not be handed this call's value again.
            first.claimed.add(key)
            self.ended(key)
            return await first.value_of(key)
        group = self._later
        if group is None or group.started or key in group.members:
            group = self._later = _Group()
            self._start(group, wait_a_turn=True)
        chain = computing.get()  # (run_compute put this key's compute last)
        group.add(key, chain[-1] if chain else self._computation(key))
        self.ended(key)  # (a look that made the lock ours ends here, in its group)
        return await group.value_of(key)

    def _computation(self, key: str) -> Computation:
        return Computation(self._rt.store, self._names[key].lock, id(self._rt), Flight())

    def _start(self, group: _Group, *, wait_a_turn: bool) -> None:
        tg = self._rt.tg
        if tg is None:
            group.settle(None, ClosedError("the Stampede closed during the call"))
            return
        tg.start_soon(self._run, group, wait_a_turn)

    async def _run(self, group: _Group, wait_a_turn: bool) -> None:
        """Call ``batch_fn`` once for *group*'s keys (a later group: once no look holds it)."""
        if wait_a_turn:
            await anyio.lowlevel.checkpoint()  # keys coming in this loop turn join
            # Keys whose looks are on their way may be about to become ours
            # too (a holder that failed lets all its locks go at once, locks
            # that ran out together): they join this call rather than each
            # start one of its own.
            while self._looking:
                await self._idle.wait()
        group.started = True
        try:
            await self._compute(group)
        finally:
            # Every key's lead now commits its value, or lets its lock go:
            # in one write rather than the first at once and the others after
            # every lead has run, so that a process waiting for these keys
            # finds them all done at once (and gathers the ones it then
            # computes into one call of its own).
            self._rt.backend.gather()

    async def _compute(self, group: _Group) -> None:
        """Call ``batch_fn`` with *group*'s keys, under the hard timeout; settle the group."""
        computations = tuple(group.members.values())
        order = self._order
        keys = sorted(group.keys, key=order.__getitem__)  # in the call's order, whatever ran first
        hard = self._policy.hard_timeout
        # The keys' computes, as a call from inside batch_fn sees them: asking
        # for one of them would wait for itself (ReentrantCallError).
        chain = computing.set((*computing.get(), *computations))
        try:
            with anyio.CancelScope(
                deadline=math.inf if hard is None else anyio.current_time() + hard
            ) as scope:
                result = await _call(self._fn, keys)
        except anyio.get_cancelled_exc_class() as exc:
            if cancelled_from_outside():
                group.settle(None, ClosedError("the Stampede closed during the call"))
                raise
            failure = ComputeFailedError(
                f"batch_fn raised {type(exc).__name__} for {len(keys)} keys although nothing "
                "cancelled the call (did it await a task or future that something else "
                "cancelled?)"
            )
            failure.__cause__ = exc
            group.settle(None, failure)
            return
        except Exception as exc:
            group.settle(None, exc)
            return
        except BaseException as exc:
            group.settle(None, exc)
            raise
        finally:
            for computation in computations:
                computation.active = False
            computing.reset(chain)
        if scope.cancelled_caught:
            group.settle(None, ComputeTimeoutError(f"batch_fn took over hard_timeout={hard}s"))
        elif not isinstance(result, Mapping):
            group.settle(
                None,
                TypeError(
                    f"batch_fn returned a value of type {type(result).__name__}, not a "
                    "mapping: return a dict of key to value for the keys it is given"
                ),
            )
        else:
            group.settle(result, None)


async def _call(batch_fn: BatchFn, keys: list[str]) -> Any:
    """Call *batch_fn* with *keys* and await what it returns, which must be awaitable."""
    result = batch_fn(keys)
    if not inspect.isawaitable(result):
        if inspect.isgenerator(result):
            result.close()
        raise TypeError(
            f"batch_fn returned a value of type {type(result).__name__}, not an awaitable: "
            "pass an async function taking the list of keys (for blocking code, an async "
            "function that awaits anyio.to_thread.run_sync)"
        )
    return await result
