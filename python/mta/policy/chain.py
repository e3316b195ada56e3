"""The hook chain: the built-in policies, then every plugin in config order, per stage, each
call under its plugin's timeout. Invariant: a hook that raises, overruns or answers garbage
becomes a 451 4.3.0 (inbound) or a deferral (routing), logged with plugin, hook and traceback."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
import types
from typing import Any, Awaitable, Iterable

from mta.config.routes import TransportSpec, parse_transport
from mta.errors import ConfigError
from mta.plugin import HOOKS, Accept, Continue, Defer, Disconnect, Reject, Route, Verdict

log = logging.getLogger("mta.plugin")

FAILED = Defer(451, "4.3.0", "Temporary policy failure, try again later")
REFUSALS = (Reject, Defer, Disconnect)
_ACCEPTED = object()  # an Accept(): the rest of the stage is skipped
_monotonic = time.monotonic
_CORO = types.CoroutineType


class Entry:
    """One plugin as loaded (or a built-in policy): its name, hooks and timeout."""

    __slots__ = ("name", "module", "timeout", "hooks", "obj", "options", "builtin", "failures", "calls", "setup",
                 "stop")

    def __init__(self, name: str, hooks: dict[str, Any], *, module: str = "", timeout: float = 5.0,
                 obj: Any = None, options: dict | None = None, builtin: bool = False,
                 setup: Any = None, stop: Any = None):
        self.name = name
        self.module = module or name
        self.timeout = timeout
        self.hooks = hooks
        self.obj = obj
        self.options = options or {}
        self.builtin = builtin
        self.failures: dict[str, int] = {}  # hook -> calls that raised, overran or answered garbage
        # hook -> [calls, seconds] (/metrics): plugins only, so the built-in policies' calls
        # (on every RCPT) cost no more than they did.
        self.calls: dict[str, list] = {} if builtin else {h: [0, 0.0] for h in hooks}
        self.setup = setup  # () -> None | awaitable: setup(options) or Plugin.start()
        self.stop = stop

    def timed(self, stage: str, start: float) -> float:
        """Count a call of `stage` that began at `start` (monotonic); its duration."""
        took = _monotonic() - start
        c = self.calls.get(stage)
        if c is not None:
            c[0] += 1
            c[1] += took
        return took

    def kinds(self) -> dict[str, str]:
        """hook -> "sync" | "async", for `mta plugins list`."""
        return {h: "async" if _is_async(fn) else "sync" for h, fn in self.hooks.items()}


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


class Chain:
    """Per stage, the calls to make: tuples of (entry, hook, stage, time limit). A stage no entry
    defines is an empty tuple, so callers test `if chain.on_mail:` and pay nothing."""

    def __init__(self, entries: Iterable[Entry] = ()):
        self.entries = list(entries)
        # (entry, hook, stage, its time limit, its [calls, seconds] or None); the built-ins
        # are neither timed nor counted
        for stage in HOOKS:
            setattr(self, stage, tuple((e, e.hooks[stage], stage, math.inf if e.builtin else e.timeout,
                                        e.calls.get(stage)) for e in self.entries if stage in e.hooks))
        self._tasks: set[asyncio.Task] = set()
        self._started: list[Entry] = []  # entries whose setup/start ran (stop() stops these)

    on_connect: tuple
    on_helo: tuple
    on_auth: tuple
    on_mail: tuple
    on_rcpt: tuple
    on_data: tuple
    on_message: tuple
    route: tuple
    egress: tuple
    shaping: tuple
    on_delivered: tuple
    on_deferred: tuple
    on_bounced: tuple

    @property
    def plugins(self) -> list[Entry]:
        return [e for e in self.entries if not e.builtin]

    def failure_counts(self) -> dict[tuple[str, str], int]:
        """(plugin, hook) -> failed calls so far (for metrics)."""
        return {(e.name, h): n for e in self.entries for h, n in e.failures.items()}

    def hook_stats(self) -> list[tuple[str, str, int, float, int]]:
        """(plugin, hook, calls, seconds, failures) of every hook some entry has."""
        return [(e.name, h, c[0], c[1], e.failures.get(h, 0)) for e in self.entries for h, c in e.calls.items()]

    # --- inbound stages: a verdict ----------------------------------------------------------

    def run(self, calls: tuple, args: tuple) -> Verdict | None | asyncio.Task:
        """The stage's answer: None (go on), a refusal (Reject, Defer, Disconnect), or a task
        ending with one of those when a hook had to wait. Never raises."""
        for item in calls:
            entry, fn, stage, limit, stat = item
            start = _monotonic()
            try:
                r = fn(*args)
                if r is None:
                    if stat is not None:
                        took = _monotonic() - start
                        stat[0] += 1
                        stat[1] += took
                        if took > limit:
                            return self._overran(entry, stage)
                    continue
                if type(r) is _CORO:
                    try:
                        pending = r.send(None)
                    except StopIteration as done:  # an async hook that never waited
                        r = done.value
                    else:  # timed by _finish
                        return self._spawn(self._finish(calls, calls.index(item), r, pending, args, start))
            except Exception as e:  # noqa: BLE001 - a plugin's failure is this command's 451
                entry.timed(stage, start)
                return self.failed(entry, stage, e)
            if stat is not None and entry.timed(stage, start) > limit:
                return self._overran(entry, stage)
            v = self._judge(entry, stage, r)
            if v is None:
                continue
            return None if v is _ACCEPTED else v
        return None

    async def _finish(self, calls: tuple, i: int, coro, pending, args: tuple, start: float):
        entry, _fn, stage, _limit, _stat = calls[i]
        try:
            async with asyncio.timeout(entry.timeout - (_monotonic() - start)):
                r = await _Resume(coro, pending)
        except TimeoutError:
            return self._overran(entry, stage)
        except Exception as e:  # noqa: BLE001
            return self.failed(entry, stage, e)
        finally:
            entry.timed(stage, start)
        v = self._judge(entry, stage, r)
        if v is _ACCEPTED:
            return None
        if v is not None:
            return v
        rest = self.run(calls[i + 1:], args)
        return (await rest) if isinstance(rest, asyncio.Future) else rest

    def _judge(self, entry: Entry, stage: str, r: Any) -> Any:
        """None (go on), _ACCEPTED, or the verdict to answer with."""
        if r is None or type(r) is Continue:
            return None
        if type(r) is Accept:
            return _ACCEPTED
        if isinstance(r, REFUSALS):
            return r
        return self.failed(entry, stage, TypeError(f"returned {r!r}, which is not a verdict "
                                                    "(None, Continue, Accept, Reject, Defer or Disconnect)"))

    def failed(self, entry: Entry, stage: str, e: BaseException) -> Verdict:
        entry.failures[stage] = entry.failures.get(stage, 0) + 1
        log.error("plugin %s: hook %s failed: %s: %s", entry.name, stage, type(e).__name__, e, exc_info=e)
        return FAILED

    def _overran(self, entry: Entry, stage: str) -> Verdict:
        entry.failures[stage] = entry.failures.get(stage, 0) + 1
        log.error("plugin %s: hook %s timed out (timeout %gs)", entry.name, stage, entry.timeout)
        return FAILED

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- routing: a transport spec -----------------------------------------------------------

    def route_now(self, address: str, msg: Any) -> TransportSpec | None | Awaitable[TransportSpec | None]:
        """The first route a plugin gives for `address` (None: nobody did; the tables
        decide), without a coroutine when every hook answered at once. Raises RouteError."""
        return self._route_from(0, address, msg)

    def _route_from(self, first: int, address: str, msg: Any):
        calls = self.route
        for i in range(first, len(calls)):
            entry, fn, stage, _limit, _stat = calls[i]
            start = _monotonic()
            try:
                r = fn(address, msg)
                if type(r) is _CORO:
                    try:
                        pending = r.send(None)
                    except StopIteration as done:
                        r = done.value
                    else:  # timed by _route_later
                        return self._route_later(calls, i, r, pending, address, msg, start)
            except Exception as e:  # noqa: BLE001
                entry.timed(stage, start)
                self.failed(entry, stage, e)
                raise RouteError(f"plugin {entry.name}: route failed: {type(e).__name__}: {e}") from e
            if entry.timed(stage, start) > entry.timeout:
                self._overran(entry, stage)
                raise RouteError(f"plugin {entry.name}: route timed out")
            if r is not None:
                return self._spec(entry, r)
        return None

    async def _route_later(self, calls, i, coro, pending, address, msg, start):
        entry, _fn, stage, _limit, _stat = calls[i]
        try:
            async with asyncio.timeout(entry.timeout - (_monotonic() - start)):
                r = await _Resume(coro, pending)
        except TimeoutError:
            self._overran(entry, stage)
            raise RouteError(f"plugin {entry.name}: route timed out") from None
        except Exception as e:  # noqa: BLE001
            self.failed(entry, stage, e)
            raise RouteError(f"plugin {entry.name}: route failed: {type(e).__name__}: {e}") from e
        finally:
            entry.timed(stage, start)
        if r is not None:
            return self._spec(entry, r)
        nxt = self._route_from(i + 1, address, msg)
        return (await nxt) if not (nxt is None or isinstance(nxt, TransportSpec)) else nxt

    def _spec(self, entry: Entry, r: Any) -> TransportSpec:
        spec = to_spec(r)
        if spec is None:
            self.failed(entry, "route", TypeError(f"returned {r!r}: not None, a transport string or a Route"))
            raise RouteError(f"plugin {entry.name}: route returned {r!r}")
        return spec

    # --- outbound events ---------------------------------------------------------------------

    def notify(self, calls: tuple, event: Any) -> None:
        """Tell the observers (on_delivered, on_bounced): their answers are ignored, their
        failures logged and counted; async ones finish in the background."""
        for entry, fn, stage, _limit, _stat in calls:
            start = _monotonic()
            try:
                r = fn(event)
                if type(r) is _CORO:
                    try:
                        pending = r.send(None)
                    except StopIteration:
                        entry.timed(stage, start)
                        continue
                    self._spawn(self._observe(entry, stage, r, pending, start))
                    continue
            except Exception as e:  # noqa: BLE001
                self.failed(entry, stage, e)
            entry.timed(stage, start)

    async def _observe(self, entry: Entry, stage: str, coro, pending, start: float) -> None:
        try:
            async with asyncio.timeout(entry.timeout):
                await _Resume(coro, pending)
        except TimeoutError:
            self._overran(entry, stage)
        except Exception as e:  # noqa: BLE001
            self.failed(entry, stage, e)
        finally:
            entry.timed(stage, start)

    async def first(self, calls: tuple, args: tuple, convert) -> Any:
        """The first answer of `calls` that is not None (or Continue), made by `convert`,
        which raises TypeError or ValueError for an answer it cannot use: that hook is
        logged and counted as failed, as one that raises or overruns, and the next asked."""
        for entry, fn, stage, _limit, _stat in calls:
            start = _monotonic()
            try:
                async with asyncio.timeout(entry.timeout):
                    r = fn(*args)
                    if type(r) is _CORO:
                        r = await r
                if r is None or type(r) is Continue:
                    continue
                return convert(r)
            except TimeoutError:
                self._overran(entry, stage)
            except Exception as e:  # noqa: BLE001
                self.failed(entry, stage, e)
            finally:
                entry.timed(stage, start)
        return None

    async def deferred(self, event: Any) -> TransportSpec | None:
        """on_deferred for one recipient: the first Route a hook gives (its next attempt goes
        there), else None. A failing hook is logged and counted; the deferral stands."""
        for entry, fn, stage, _limit, _stat in self.on_deferred:
            start = _monotonic()
            try:
                async with asyncio.timeout(entry.timeout):
                    r = fn(event)
                    if type(r) is _CORO:
                        r = await r
            except TimeoutError:
                self._overran(entry, stage)
                continue
            except Exception as e:  # noqa: BLE001
                self.failed(entry, stage, e)
                continue
            finally:
                entry.timed(stage, start)
            if r is None or type(r) is Continue:
                continue
            spec = to_spec(r)
            if spec is None:
                self.failed(entry, stage, TypeError(f"returned {r!r}: not None or a Route"))
                continue
            return spec
        return None

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """setup(options) / Plugin.start() of each plugin, in order. Raises ConfigError,
        after stopping the plugins already started."""
        for e in self.entries:
            if any(s is e for s in self._started):
                continue  # taken over from the chain it replaces (adopt), already running
            if e.setup is not None:
                try:
                    r = e.setup()
                    if asyncio.iscoroutine(r):
                        await r
                except Exception as exc:
                    await self.stop()
                    raise ConfigError([f"plugin {e.name} ({e.module}): setup failed: "
                                       f"{type(exc).__name__}: {exc}"]) from exc
            self._started.append(e)

    def adopt(self, other: Chain) -> None:
        """This chain replaces `other` (a configuration reload): the running entries they share
        are this chain's to stop from now on (start() skips them), and so is a module-level
        plugin both load, since it is one module whatever its options: `other.stop()` stops
        only what this chain does not use."""
        mine = {id(e) for e in self.entries}
        modules = {id(e.obj) for e in self.entries if isinstance(e.obj, types.ModuleType)}
        kept = []
        for e in other._started:
            if id(e) in mine:
                if not any(s is e for s in self._started):
                    self._started.append(e)
            elif not (isinstance(e.obj, types.ModuleType) and id(e.obj) in modules):
                kept.append(e)
        other._started = kept

    async def stop(self) -> None:
        """stop() of each plugin started, last first; failures are logged. Background hooks
        are given a moment, then cancelled."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
            for t in list(self._tasks):
                t.cancel()
        started, self._started = self._started, []
        for e in reversed(started):
            if e.stop is None:
                continue
            try:
                r = e.stop()
                if asyncio.iscoroutine(r):
                    await asyncio.wait_for(r, e.timeout)
            except Exception as exc:  # noqa: BLE001 - stopping goes on
                log.error("plugin %s: stop failed: %r", e.name, exc, exc_info=exc)


class RouteError(Exception):
    """A route hook raised, overran or answered garbage: the recipient is deferred."""


def to_spec(r: Any) -> TransportSpec | None:
    """A route hook's answer as a transport spec (None when it is not one)."""
    if isinstance(r, TransportSpec):
        return r
    if isinstance(r, Route):
        return parse_transport(r.text())
    if isinstance(r, str):
        return parse_transport(r)
    return None


class _Resume:
    """Await a coroutine whose first step was already taken (it yielded `pending`): the rest
    of `yield from`, so an async hook that never waits needs no task at all."""

    __slots__ = ("coro", "pending")

    def __init__(self, coro, pending):
        self.coro = coro
        self.pending = pending

    def __await__(self):
        coro, nxt = self.coro, self.pending
        while True:
            try:
                sent = yield nxt
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as e:  # cancellation (a timeout): into the hook
                try:
                    nxt = coro.throw(e)
                except StopIteration as done:
                    return done.value
                continue
            try:
                nxt = coro.send(sent)
            except StopIteration as done:
                return done.value
