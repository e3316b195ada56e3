"""Delivery agent: SMTP and LMTP delivery in a child process of the worker (jobs in, one
RcptResult per recipient out), so accepting and delivering use two cores. Jobs are made by
the frame's one definition (rust/src/agent/frames.rs); a big message comes as its spool location."""

# The worker keeps every decision (routing, MX lookups, MTA-STS, retries, spool records,
# the delivery log); the agent only runs `SmtpDelivery`. Both ways a frame is a 4-byte
# length and a marshal'ed list of items, written at most once a millisecond (`_WINDOW`),
# so a busy queue costs one wake-up of the other process per batch, not per message (each
# write to a sleeping peer is a cross-CPU wake-up). If the agent dies, its jobs in flight
# come back as 451 4.3.0 (deferred and retried: nothing is lost; a message a peer had
# already taken may be delivered twice, as after a crash), and the next job starts a new
# agent. A job sent with its log context (`submit(..., log=...)`) whose recipients were
# all delivered is logged here, through the worker's delivery-log file (its fd is passed
# on: it was opened before privileges were dropped), and answered `LOGGED`: the worker's
# event loop, the busiest thread, then only deletes the message. A fresh message's job
# (`submit_spooled`) is made from its spool entry by the spool itself, in Rust, at the
# frame's flush: no Python object of the message on the worker. The agent dies with the
# worker (PR_SET_PDEATHSIG) and runs with the worker's (dropped) privileges.

from __future__ import annotations

import asyncio
import logging
import marshal
import os
import signal
import socket
import sys
import time
from dataclasses import fields
from typing import Callable, NamedTuple, Sequence

from mta._native import StoredMessage, encode_job
from mta.counters import write_snapshot
from mta.delivery import DELIVERED, OutMessage, OutRcpt, RcptResult, Target, results_for, status_of
from mta.delivery.deliverylog import DeliveryLog
from mta.delivery.smtp.client import SmtpDelivery, SmtpOptions

log = logging.getLogger("mta.delivery")

_FLUSH_AT = 1 << 20  # a batch this big is written at once, not at the end of the window
_WINDOW = 0.001  # items wait this long for company: each write wakes the other process
_MAX_FRAME = 1 << 31
_START_TIMEOUT = 30.0
_STOP_GRACE = 10.0
_OPT_FIELDS = tuple(f.name for f in fields(SmtpOptions))


class _Logged:
    """What `done` gets for a job whose recipients were all delivered and logged by the agent."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "LOGGED"


LOGGED = _Logged()


class _Unsent:
    """What `done` gets for a `submit_spooled` job whose message could not be made into a
    job from the spool (gone, held, attempted already, unreadable): nothing was sent."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSENT"


UNSENT = _Unsent()


class Deferred(NamedTuple):
    """What `done` gets for a `submit_spooled` job that failed as a whole (the agent died,
    or failed on it): the caller, who has the message, makes its 451 results."""

    enhanced: str
    text: str


class _Framed(asyncio.Protocol):
    """Length-prefixed marshal frames over a stream socket, batched per `_WINDOW`."""

    def __init__(self, on_items: Callable[[list], None], on_lost: Callable[[Exception | None], None],
                 encode: Callable[[list], tuple[bytes, list]] | None = None,
                 on_left: Callable[[list], None] | None = None):
        self.on_items, self.on_lost = on_items, on_lost
        # Jobs made at the flush, in one call, by `encode` (the spool's encode_jobs):
        # (payload, entries left out), the latter given to `on_left`.
        self.encode, self.on_left = encode, on_left
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._out: list = []
        self._spooled: list = []
        self._size = 0
        self._scheduled = False
        self._loop = asyncio.get_running_loop()  # once: each call is a getpid() syscall

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        # Whole frames are read where they arrived; only a frame's unfinished part is
        # kept in _buf (messages of 64 KiB and more are not copied in and out of it).
        buf = self._buf
        if buf:
            buf += data
            data = buf
        view = memoryview(data)
        items: list = []
        start = 0
        end = len(data)
        while end - start >= 4:
            n = int.from_bytes(view[start:start + 4], "big")
            if n > _MAX_FRAME:
                self.transport.abort()
                return
            if end - start - 4 < n:
                break
            items.extend(marshal.loads(view[start + 4:start + 4 + n]))
            start += 4 + n
        view.release()
        if data is buf:
            del buf[:start]
        elif start < end:
            buf += data[start:]
        if items:
            self.on_items(items)

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.on_lost(exc)

    def send(self, item: tuple | bytes, size: int = 0) -> None:
        self._out.append(item)
        self._size += size
        if self._size >= _FLUSH_AT:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_later(_WINDOW, self.flush)

    def send_spooled(self, entry: tuple) -> None:
        """A job that `encode` makes at the flush (see __init__). Never flushes here: the
        flush answers the entries left out, which must not run inside the caller's submit."""
        self._spooled.append(entry)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_later(_WINDOW, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        items, self._out, self._size = self._out, [], 0
        if items and self.transport is not None:
            payload = _payload(items)
            self.transport.writelines((len(payload).to_bytes(4, "big"), payload))  # no copy of the batch
        if self._spooled:
            jobs, self._spooled = self._spooled, []
            try:
                payload, left = self.encode(jobs)
            except Exception:  # a bug: nothing of these was sent; they go their general way
                log.exception("delivery agent: cannot make %d job(s) from the spool", len(jobs))
                payload, left = None, [j[0] for j in jobs]
            if payload is not None and self.transport is not None:
                self.transport.writelines((len(payload).to_bytes(4, "big"), payload))
            if left:
                self.on_left(left)


def _payload(items: list) -> bytes:
    """A frame's payload: the marshal list of `items`, where job items come encoded
    already (bytes, from _native.encode_job) and go in as they are."""
    if type(items[0]) is not bytes and not any(type(i) is bytes for i in items):
        return marshal.dumps(items)
    return b"".join([b"[", len(items).to_bytes(4, "little"),
                     *(i if type(i) is bytes else marshal.dumps(i, 2) for i in items)])


def _deferral(m: OutMessage | str, text: str) -> list[RcptResult] | Deferred:
    """A job that failed as a whole: 451 4.3.0 for each recipient, or, for a spooled job
    (`m` is its queue id), a `Deferred` the caller turns into those."""
    return Deferred("4.3.0", text) if isinstance(m, str) else results_for(m, 451, "4.3.0", text)


def _result_row(r: RcptResult) -> tuple:
    return tuple(r)  # marshal takes plain tuples only


# ---------------------------------------------------------------------------
# the worker's side
# ---------------------------------------------------------------------------


class AgentDelivery:
    """Stands in for `SmtpDelivery` in the queue manager: the same `deliver` and
    `close`, served by the agent process (started by `prestart`, at the server's
    start, or else at the first delivery)."""

    def __init__(self, cpus: frozenset[int] = frozenset(), log_fd: int | None = None,
                 encode: Callable[[list], tuple[bytes, list]] | None = None, throttle: str = "",
                 metrics: str = "") -> None:
        self._throttle = throttle  # the throttle's description (mta.delivery.shaping.backends), for the agent
        # "PATH|RUN": the agent writes its /metrics series there once a second (mta.app.metrics
        # reads it beside the workers' snapshots); "": no HTTP listener, nothing written.
        self._metrics = metrics
        self._cpus = cpus  # where the agent runs (mta.procs); empty: anywhere
        self._log_fd = log_fd  # the delivery log's open file (None: stderr), for LOGGED jobs
        self._encode = encode  # the spool's encode_jobs, for submit_spooled; None: not offered
        self._heads: dict[tuple, tuple] = {}  # (key, targets, id(opts)) -> (targets, opts, head)
        self._proto: _Framed | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Task | None = None
        # job -> (done, message) from submit, (done, queue id, logged) from submit_spooled
        self._pending: dict[int, tuple] = {}
        self._next = 1
        self._closed = False
        self._forms: dict[int, tuple] = {}  # id(options or targets) -> (it, its marshal form)
        self.agents_started = 0

    async def deliver(self, key: str, targets: Sequence[Target], opts: SmtpOptions,
                      msg: OutMessage) -> list[RcptResult]:
        if not msg.recipients:
            return []
        if self._closed:
            return results_for(msg, 451, "4.3.2", "delivery stopped (the server is shutting down)")
        proto = self._proto
        if proto is None:
            try:
                proto = await self._start()
            except Exception as e:  # noqa: BLE001 - a failed start defers, it does not bounce
                log.error("delivery agent did not start: %s", e)
                return results_for(msg, 451, "4.3.0", f"delivery agent did not start: {e}")
            if proto.transport is None:  # lost while we waited: _on_lost has run already
                return results_for(msg, 451, "4.3.0", "delivery agent died; will retry")
        fut = proto._loop.create_future()
        job = self._send(proto, key, targets, opts, msg, lambda res: fut.done() or fut.set_result(res))
        try:
            return await fut
        finally:
            self._pending.pop(job, None)

    def submit(self, key: str, targets: Sequence[Target], opts: SmtpOptions, msg: OutMessage,
               done: Callable[[list[RcptResult] | _Logged], object],
               log: tuple[float, tuple[int, ...]] | None = None) -> bool:
        """`deliver` with a callback, for the queue's callback lane: `done(results)` is
        called exactly once (451s if the agent dies). With `log` (the message's arrival
        and each recipient's attempt number), a job whose recipients are all delivered
        gets its delivery-log records written by the agent and `done(LOGGED)`. False,
        and nothing sent, when the agent is not running (the caller takes `deliver`,
        which starts it)."""
        proto = self._proto
        if proto is None or proto.transport is None or self._closed or not msg.recipients:
            return False
        self._send(proto, key, targets, opts, msg, done, log)
        return True

    def submit_spooled(self, key: str, targets: Sequence[Target], opts: SmtpOptions, queue_id: str,
                       done: Callable[[str, list[RcptResult] | _Unsent | Deferred], object],
                       logged: Callable[[list[str]], object]) -> bool:
        """`submit` for a fresh message in the spool (every recipient queued, none tried),
        logged by the agent when all are delivered: the job is made from the spool entry,
        in Rust, at the next flush (the spool's encode_jobs), so the event loop makes no
        Python object of the message. Each job is answered exactly once: delivered and
        logged, by `logged(queue_ids)` with the others of its answer frame that were (one
        call, so one DELETE group for them all); else by `done(queue_id, outcome)` with
        the results, `Deferred` (the job failed as a whole; the caller makes the 451s) or
        UNSENT (the entry was not fresh: nothing was sent). False, and nothing sent, when
        the agent is not running or this was made without the spool."""
        proto = self._proto
        if proto is None or proto.transport is None or self._closed or self._encode is None:
            return False
        job = self._next
        self._next += 1
        self._pending[job] = (done, queue_id, logged)
        proto.send_spooled((job, queue_id, self._head(key, targets, opts)))
        return True

    def _head(self, key: str, targets: Sequence[Target], opts: SmtpOptions) -> bytes:
        """The marshal form (version 2: no back-references, so it concatenates with the
        job's own pieces) of (key, targets, options), made once per destination."""
        # Targets by value: a smarthost's name answers from the DNS cache as a new tuple
        # each time, with the same addresses.
        hk = (key, targets if type(targets) is tuple else id(targets), id(opts))
        hit = self._heads.get(hk)
        if hit is None or hit[1] is not opts or (hit[0] is not targets and hit[0] != targets):
            if len(self._heads) > 1000:  # route hooks may make options or targets on the fly
                self._heads.clear()
            head = b"".join(marshal.dumps(x, 2) for x in (key, self._form(targets), self._form(opts)))
            hit = self._heads[hk] = (targets, opts, head)
        return hit[2]

    def _left(self, jobs: list[int]) -> None:
        """Spooled jobs encode_jobs left out: nothing of them was sent."""
        for job in jobs:
            entry = self._pending.pop(job, None)
            if entry is not None:
                self._answer(entry, UNSENT)

    def _answer(self, entry: tuple, res) -> None:
        try:
            if len(entry) == 3:  # a spooled job: (done, queue id, logged)
                entry[0](entry[1], res)
            else:
                entry[0](res)
        except Exception:  # one caller's bug must not lose the other results
            m = entry[1]
            log.exception("delivery agent: result callback for %s failed", m if isinstance(m, str) else m.queue_id)

    def _form(self, x):
        """The marshal form of an options or targets object, made once per object: the same
        few come with every job (the queue manager keeps them)."""
        hit = self._forms.get(id(x))
        if hit is None or hit[0] is not x:
            if len(self._forms) > 1000:  # route hooks may make options on the fly
                self._forms.clear()
            form = tuple(getattr(x, f) for f in _OPT_FIELDS) if isinstance(x, SmtpOptions) \
                else [tuple(t) for t in x]
            hit = self._forms[id(x)] = (x, form)
        return hit[1]

    def _send(self, proto: _Framed, key: str, targets: Sequence[Target], opts: SmtpOptions,
              msg: OutMessage, done: Callable, log: tuple | None = None) -> int:
        job = self._next
        self._next += 1
        self._pending[job] = (done, msg)
        data = msg.data
        # The job item is made by the frame's one definition (rust/src/agent/frames.rs).
        proto.send(encode_job(job, self._head(key, targets, opts), msg.queue_id, msg.sender, msg.recipients, data,
                              msg.body, msg.smtputf8, msg.ret, msg.envid, msg.arrival, log),
                   len(data) if type(data) is bytes else 0)
        return job

    def _on_items(self, items: list) -> None:
        pending = self._pending
        logged: dict = {}  # logged callback -> the queue ids it gets
        rows: dict = {}  # queue id -> its rows or log text, for the jobs answered with them (SmtpOptions.report)
        for item in items:
            entry = pending.pop(item[1], None)
            if entry is None:
                continue
            kind = item[0]
            if kind == "ok":  # delivered, and logged by the agent
                if len(entry) == 3:  # a spooled job: to its `logged`, with the frame's others
                    logged.setdefault(entry[2], []).append(entry[1])
                    if len(item) > 2:
                        rows[entry[1]] = item[2]
                    continue
                res = LOGGED
            elif kind == "res":
                res = [RcptResult(*row) for row in item[2]]
            else:  # ("err", job, text): the agent failed on this job; retry later
                m = entry[1]
                log.error("delivery agent: job for %s failed: %s", m if isinstance(m, str) else m.queue_id, item[2])
                res = _deferral(m, "internal delivery error")
            self._answer(entry, res)
        for fn, ids in logged.items():
            try:
                if rows:
                    fn(ids, rows)
                else:
                    fn(ids)
            except Exception:  # one caller's bug must not lose the other results
                log.exception("delivery agent: result callback for %d message(s) failed", len(ids))

    def _on_lost(self, exc: Exception | None) -> None:
        self._proto = None
        if self._pending and not self._closed:
            log.error("delivery agent connection lost (%s): %d deliveries deferred",
                      exc or "agent exited", len(self._pending))
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            self._answer(entry, _deferral(entry[1], "delivery agent died; will retry"))

    def prestart(self) -> None:
        """Start the agent now, at the server's start, not at the first delivery: the
        first messages then find it running and take the callback lane, instead of
        waiting on the coroutine path while an interpreter starts and imports (about a
        quarter of a second of CPU). A failure is logged; the first delivery tries again."""
        if self._proto is None and self._starting is None and not self._closed:
            self._starting_task().add_done_callback(self._prestarted)

    def _prestarted(self, task: asyncio.Task) -> None:
        if self._starting is task:
            self._starting = None
        if not task.cancelled() and (e := task.exception()) is not None:
            log.error("delivery agent did not start: %s (the first delivery tries again)", e)

    def _starting_task(self) -> asyncio.Task:
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self._spawn())
        return self._starting

    async def _start(self) -> _Framed:
        task = self._starting_task()
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._starting = None

    @staticmethod
    def environment() -> dict[str, str]:
        """The agent's environment: this one, with the mta package importable."""
        import mta

        root = os.path.dirname(os.path.dirname(os.path.abspath(mta.__file__)))
        return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}

    async def _spawn(self) -> _Framed:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()  # a lost connection with the process still there
            await self._proc.wait()
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = self.environment()
        if self._throttle:
            env["MTA_THROTTLE"] = self._throttle
        if self._metrics:
            env["MTA_METRICS"] = self._metrics
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        try:
            self._proc = await asyncio.wait_for(asyncio.create_subprocess_exec(
                sys.executable, "-m", "mta.delivery.agent", str(theirs.fileno()), str(os.getpid()), str(level),
                ",".join(map(str, sorted(self._cpus))), "" if self._log_fd is None else str(self._log_fd),
                stdin=asyncio.subprocess.DEVNULL, env=env,
                pass_fds=(theirs.fileno(),) if self._log_fd is None else (theirs.fileno(), self._log_fd)),
                _START_TIMEOUT)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            _, proto = await loop.create_unix_connection(
                lambda: _Framed(self._on_items, self._on_lost, self._encode, self._left), sock=ours)
        except BaseException:
            ours.close()
            raise
        self.agents_started += 1
        log.info("delivery agent started (pid %d)", self._proc.pid)
        self._proto = proto
        return proto

    async def close(self) -> None:
        """Ask the agent to QUIT its pooled connections and exit; kill it if it does not."""
        self._closed = True
        if self._starting is not None:  # started at the server's start and not up yet
            await asyncio.wait([self._starting], timeout=_START_TIMEOUT)
        proc, proto = self._proc, self._proto
        if proto is not None:
            proto.send(("close", 0))
            proto.flush()
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), _STOP_GRACE)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


# ---------------------------------------------------------------------------
# the agent's side
# ---------------------------------------------------------------------------


def read_job(item: tuple, made: dict) -> tuple:
    """(job, key, targets, options, OutMessage) of a job item (rust/src/agent/frames.rs,
    read by marshal). The same few options and target lists come with every job: made
    once (`made` keeps them), not per message (SmtpOptions validates itself when made)."""
    _, job, key, targets, o, m = item[:6]
    ck = (o, tuple(targets))
    hit = made.get(ck)
    if hit is None:
        if len(made) > 1000:  # route hooks may make options or targets on the fly
            made.clear()
        hit = made[ck] = (SmtpOptions(*o), [Target(*t) for t in targets])
    data = m[3]
    if type(data) is tuple:  # a big message: read from the spool a block at a time
        data = StoredMessage(*data)
    return job, key, hit[1], hit[0], OutMessage(m[0], m[1], tuple(OutRcpt(*r) for r in m[2]), data, *m[4:])


async def _serve(fd: int, log_fd: int | None = None) -> None:
    loop = asyncio.get_running_loop()
    throttle = None
    if desc := os.environ.get("MTA_THROTTLE"):
        from mta.delivery.shaping import backends

        throttle = backends.make(desc, owner=True)  # what a dead predecessor held comes back
    smtp = SmtpDelivery(throttle)
    dlog = DeliveryLog.on_fd(log_fd)
    done = loop.create_future()
    tasks: set[asyncio.Task] = set()
    proto: _Framed | None = None

    made: dict[tuple, tuple[SmtpOptions, list[Target]]] = {}

    def unpack(item: tuple) -> tuple:
        return read_job(item, made)

    def answer(job: int, msg: OutMessage, rows: list, ctx: tuple | None, report: bool | str = False) -> None:
        """The outcome to the worker: LOGGED when every recipient was delivered and the
        job came with its log context (the records are written here, first), with the rows
        when its options ask (`report`: plugins are told) or the records' text ("log": for
        webhooks), else the rows."""
        if ctx is not None and all(status_of(row[1]) == DELIVERED for row in rows):
            text = dlog.delivered(msg.queue_id, rows, ctx[1], ctx[0], time.time())
            proto.send(("ok", job, text if report == "log" else rows) if report else ("ok", job))
        else:
            proto.send(("res", job, rows))

    async def run(job: int, key: str, targets: list[Target], opts: SmtpOptions, msg: OutMessage,
                  ctx: tuple | None) -> None:
        try:
            res = await smtp.deliver(key, targets, opts, msg)
            answer(job, msg, [_result_row(r) for r in res], ctx, opts.report)
        except Exception as e:  # noqa: BLE001 - reported to the worker, which defers
            log.exception("delivery agent: job %d failed", job)
            proto.send(("err", job, f"{type(e).__name__}: {e}"))

    def on_items(items: list) -> None:
        for item in items:
            if item[0] == "job":
                try:
                    job, key, targets, opts, msg = unpack(item)
                except Exception as e:  # noqa: BLE001 - reported to the worker, which defers
                    log.exception("delivery agent: job %d is malformed", item[1])
                    proto.send(("err", item[1], f"{type(e).__name__}: {e}"))
                    continue
                ctx = item[6] if len(item) > 6 else None
                # Most jobs find a pooled connection: they run on callbacks, not as a task.
                if smtp.submit(key, targets, opts, msg,
                               lambda rows, job=job, msg=msg, ctx=ctx, r=opts.report: answer(job, msg, rows, ctx, r),
                               lambda text, job=job: proto.send(("err", job, text))):
                    continue
                t = loop.create_task(run(job, key, targets, opts, msg, ctx))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            elif item[0] == "close" and not done.done():
                done.set_result(None)

    def on_lost(_exc) -> None:
        if not done.done():
            done.set_result(None)

    snapshot = _snapshots(loop, smtp)
    sock = socket.socket(fileno=fd)
    # Made before the connection: its first read (jobs sent before the agent was up)
    # may come before create_unix_connection returns, and on_items answers through it.
    proto = _Framed(on_items, on_lost)
    await loop.create_unix_connection(lambda: proto, sock=sock)
    await done
    if snapshot is not None:
        snapshot()
    if tasks:
        await asyncio.wait(set(tasks), timeout=_STOP_GRACE)
    await smtp.settle(_STOP_GRACE)
    proto.flush()
    dlog.close()
    await smtp.close()
    if throttle is not None:
        # For operators and benchmarks: how often budgets made deliveries wait, and what the
        # throttle cost (Redis round trips, fallbacks).
        log.info("throttle stats: %s pacer_waits=%d slot_waits=%d",
                 " ".join(f"{k}={v}" for k, v in sorted(throttle.stats.items())), smtp.budgets.pacer.waits, smtp.budgets.slot_waits)
        await throttle.close()


def _snapshots(loop, smtp: SmtpDelivery) -> Callable[[], None] | None:
    """With MTA_METRICS ("PATH|RUN"): the pool and shaping series of this agent written to
    PATH once a second (mta.counters.write_snapshot); returns what stops it."""
    spec = os.environ.get("MTA_METRICS")
    if not spec:
        return None
    path, run = spec.rsplit("|", 1)
    timer: list[asyncio.TimerHandle] = []

    def tick() -> None:
        try:
            write_snapshot(path, int(run), smtp.metrics_series())
        except OSError as e:
            log.warning("delivery agent: metrics snapshot not written: %s", e)
        timer[:] = [loop.call_later(1.0, tick)]

    tick()
    return lambda: timer[0].cancel()


def main(argv: list[str]) -> int:
    fd, parent, level = int(argv[0]), int(argv[1]), argv[2]
    from mta import procs

    procs.die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when the agent stops
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from mta import log as fastlog

    fastlog.setup(level)
    procs.pin(procs.parse(argv[3] if len(argv) > 3 else ""), "delivery agent")
    import uvloop

    log_fd = argv[4] if len(argv) > 4 else ""
    uvloop.run(_serve(fd, int(log_fd) if log_fd else None))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
