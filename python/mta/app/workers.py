"""Process model: `workers` copies of the server share the listening ports, each owning spool
shard N; the main process supervises (forwards signals, re-reads the config on SIGHUP for the
workers it restarts). Its death takes the workers with it, so a SIGKILL leaves no orphan."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback

from mta import log as fastlog
from mta.config import reload
from mta.config.reload import ConfigSource
from mta.config.schema import Config
from mta.errors import ConfigError, MtaError
from mta.procs import die_with_parent

log = logging.getLogger("mta")

_RESTART_DELAY = 1.0
_EARLY_EXIT = 3.0  # a worker that fails this soon after start is a configuration problem


def _serve(cfg: Config, shard: int, reuse_port: bool, http_sockets=None, run_id: int | None = None,
           source: ConfigSource | None = None) -> None:
    import uvloop

    from mta.app.server import Server

    uvloop.run(Server(cfg, shard=shard, reuse_port=reuse_port, http_sockets=http_sockets, run_id=run_id,
                      source=source).run())


def run(cfg: Config, source: ConfigSource | None = None) -> int:
    """Serve until SIGTERM/SIGINT; the exit status for the process. `source`: where a
    reload (SIGHUP) reads the configuration again."""
    from mta.delivery.shaping import backends

    backends.fresh_table(cfg.spool.dir)  # budgets start empty: no slot or time from a previous run
    from mta.smtp import tickets

    # Made before any fork: every worker, a respawned one too, inherits the same TLS ticket
    # secret, so a ticket one worker gave opens on all (mta.smtp.tickets).
    tickets.process_secret()
    if cfg.tls.cert:
        from mta.smtp.tls import build_contexts

        build_contexts(cfg.tls)  # unusable files stop the start here (TlsError), not in N workers
    # The HTTP ports are bound here, once, without SO_REUSEPORT: the workers inherit these
    # sockets, and a second server on one of them stops here (OSError), never sharing it.
    http_sockets: list = []
    if cfg.http.listen:  # mta.app.http loads aiohttp (~85 ms): only with a listener
        from mta.app import http

        http_sockets = http.bind(cfg.http.listen)
    if cfg.workers == 1:
        _serve(cfg, 0, reuse_port=False, http_sockets=http_sockets, source=source)
        return 0
    _loadable(cfg)  # a plugin that cannot load, or a DKIM key that cannot be used, stops the start here
    return _Supervisor(cfg, http_sockets, source).run()


def _loadable(cfg: Config) -> None:
    """ConfigError unless the plugins load and the DKIM signing keys can be used."""
    from mta.policy import builtins, loader

    loader.load(cfg.plugin, cfg.delivery.route_hook)
    builtins.signer(cfg.dkim)


class _Supervisor:
    def __init__(self, cfg: Config, http_sockets: list, source: ConfigSource | None = None):
        self.cfg = cfg
        self.source = source  # read again on SIGHUP, and before a dead worker is replaced
        self.http_sockets = http_sockets  # inherited by every worker (mta.app.http)
        self.children: dict[int, tuple[int, float]] = {}  # pid -> (shard, started)
        self.stopping = False
        self.status = 0

    def spawn(self, shard: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                # A SIGTERM that arrives before the event loop has its handler
                # must not kill the worker uncleanly: keep it pending until
                # Server.run unblocks it (then it stops the server in order).
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker's loop handles it
                die_with_parent(parent)
                fastlog.setup(self.cfg.log.level)
                _serve(self.cfg, shard, reuse_port=True, http_sockets=self.http_sockets, run_id=parent,
                       source=self.source)
            except BaseException as e:  # noqa: BLE001 - the child must never return into the parent's code
                if not isinstance(e, SystemExit):
                    traceback.print_exc()
                    code = 1
                else:
                    code = e.code if isinstance(e.code, int) else 1
            finally:
                fastlog.flush()
                sys.stderr.flush()
                os._exit(code)
        self.children[pid] = (shard, time.monotonic())
        log.info("worker %d started (pid %d)", shard, pid)

    def _on_signal(self, signum, _frame) -> None:
        self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def reread(self, why: str) -> None:
        """The configuration a worker started from now on gets: the file again when it is
        valid (restart-only keys as they were), else the one in force. Each worker reads,
        checks and logs its own reload; this process only keeps up."""
        if self.source is None:
            return
        try:
            new = self.source.load()
            _loadable(new)
        except MtaError as e:
            errors = e.errors if isinstance(e, ConfigError) else [str(e)]
            log.error("reload: refused (%s): %s", why, "; ".join(errors))
            return
        except OSError as e:
            log.error("reload: refused (%s): %s", why, e)
            return
        self.cfg = reload.plan(self.cfg, new).config

    def _on_hup(self, _signum, _frame) -> None:
        self.reread("SIGHUP")
        for pid in list(self.children):  # each worker reloads its configuration
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hup)
        for shard in range(self.cfg.workers):
            self.spawn(shard)
        while self.children:
            try:
                pid, wstatus = os.wait()
            except ChildProcessError:
                break
            shard, started = self.children.pop(pid, (None, 0.0))
            if shard is None:
                continue
            code = os.waitstatus_to_exitcode(wstatus)
            if self.stopping:
                if code != 0:
                    self.status = 1
                continue
            log.error("worker %d (pid %d) exited with %d", shard, pid, code)
            if time.monotonic() - started < _EARLY_EXIT:
                # It could not even start (port taken, shard locked): stop all.
                self.status = 1
                self._on_signal(signal.SIGTERM, None)
                continue
            time.sleep(_RESTART_DELAY)
            if not self.stopping:
                # `mta reload` reached the workers, not this process: the replacement starts
                # with the file as it is now, as its siblings run after a reload.
                self.reread(f"restarting worker {shard}")
                self.spawn(shard)
        return self.status
