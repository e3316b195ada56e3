"""The worker's side of traffic shaping: per message its egress source, destination site and
the site's shape, made into the SMTP options the client enforces; per outcome the reply rules.
Invariant: a site never holds more than its share of the queue's active window."""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import random
import time
from typing import Callable

from mta.config.shaping import Shape, parse_rate
from mta.delivery import RcptResult
from mta.delivery.classify import classify
from mta.delivery.shaping.signals import SUSPENDED, Throttled, flag_key, suspended_until

log = logging.getLogger("mta.delivery")

DEFAULT_SOURCE = "default"
# A message over its site's share waits in the queue about as long as the site takes to
# drain its excess over the share (from its recent pace), within these bounds (seconds).
_OVER_SHARE_WAIT = (0.2, 30.0)
# A site is slow when ending what it has in flight takes it longer than this (seconds) at
# its recent pace: only a slow site is held to its share (a fast one gives the window back
# before others would notice, and holding it back would only delay its own mail).
_SLOW = 1.0
# The window counts as full from this fraction on: a site over its share is held back only
# then, so that one site alone uses the whole window and others always find room.
_PRESSED = 0.9
_FLAGS_EVERY = 0.05  # seconds between reads of the throttle's suspensions (a scan of a small table)


def site_name(hosts, site_globs) -> str:
    """A destination's site: the first `[[shaping.rule]] site` glob that one of its MX
    hosts matches (every domain hosted there shares it), else its MX host names, sorted
    (domains with the same MX set share one budget, as KumoMTA's site_name)."""
    names = sorted({h.lower().rstrip(".") for h in hosts})
    for glob in site_globs:
        if any(fnmatch.fnmatchcase(h, glob) for h in names):
            return glob
    return ",".join(names)


class Shaper:
    def __init__(self, shaping, egress, throttle, max_active: int, share: float = 0.5,
                 clock: Callable[[], float] = time.time, hooks=None) -> None:
        self.shaping = shaping
        self.hooks = hooks  # the plugin chain: its `shaping(site, source, msg)` hooks
        self.egress = egress
        self.throttle = throttle
        self.cap = max(1, int(max_active * share))  # in-flight messages per site, when the window is full
        self.pressed = max(1, int(max_active * _PRESSED))
        self.total = 0  # attempts in flight, every site
        self.completed: dict[str, int] = {}  # site -> attempts ended (its pace, for waits)
        self._pace: dict[str, tuple[float, int, float | None]] = {}  # site -> (when, completed then, per second)
        self.site_globs = tuple(r.site for r in shaping.rules if r.site)
        # Nothing per message: no pool to choose from, no rule by domain or site.
        self.fixed = not egress.pools and not shaping.rules
        # The suspensions (site or "@domain" -> until), read from the throttle at most every
        # _FLAGS_EVERY seconds: a per-message look-up would cost more than the rest of admit().
        self._suspended: dict[str, float] = {}
        self._flags_at = 0.0
        self.inflight: dict[str, int] = {}  # site -> attempts in flight (this worker)
        self.clock = clock
        self.stats = {"over_share": 0, "suspended": 0, "rule_suspend": 0, "rule_slow": 0, "rule_bounce": 0}

    def reconfigure(self, shaping, egress, max_active: int, share: float = 0.5, hooks=None) -> None:
        """A reloaded configuration: new rules, sources, pools and window; the counts of
        attempts in flight, the sites' paces and the suspensions go on (one shaper per worker)."""
        self.shaping, self.egress, self.hooks = shaping, egress, hooks
        self.cap = max(1, int(max_active * share))
        self.pressed = max(1, int(max_active * _PRESSED))
        self.site_globs = tuple(r.site for r in shaping.rules if r.site)
        self.fixed = not egress.pools and not shaping.rules

    # -- before an attempt --

    def spooled_ok(self, pool: str | None) -> bool:
        """A job made from the spool entry alone (no sender at hand) gets the right
        source: the pool does not go by the sender."""
        return pool is not None or not self.egress.sender_pools

    def source(self, sender: str, pool: str | None):
        """The egress source of one message: its pool's next (weighted round robin), or
        the default source (None)."""
        p = self.egress.pool_for(sender, {"pool": pool} if pool else None)
        return None if p is None else p.next()

    def site(self, hosts) -> str:
        return site_name(hosts, self.site_globs)

    def admit(self, site: str, domain: str = "", rcpt: str = "") -> Throttled | None:
        """Room for one more attempt to `site` (counted until `done(site)`), or why not:
        the site (or the recipients' domain, by an administrator; `rcpt`: an address to
        take it from) is suspended, or the site holds its share of the window."""
        now = self.clock()
        if now >= self._flags_at:
            self._read_flags(now)
        if self._suspended:
            until = self._suspended.get(site, 0.0)
            if until > now:
                self.stats["suspended"] += 1
                return Throttled(until, f"{SUSPENDED} until {until:.0f}: {site}")
            if rcpt and not domain:
                domain = rcpt.rpartition("@")[2].lower()
            if domain and (until := self._suspended.get("@" + domain, 0.0)) > now:
                self.stats["suspended"] += 1
                return Throttled(until, f"{SUSPENDED} until {until:.0f}: @{domain}")
        n = self.inflight.get(site, 0)
        if n >= self.cap and self.total >= self.pressed and (rate := self._rate(site, now)) is not None \
                and n > rate * _SLOW:
            self.stats["over_share"] += 1
            lo, hi = _OVER_SHARE_WAIT
            wait = min(hi, max(lo, (n - self.cap + 1) / rate)) if rate > 0 else hi / 6
            return Throttled(now + wait * random.uniform(1.0, 1.25),
                             f"shaping: site {site} holds its share of the active window ({self.cap})")
        self.inflight[site] = n + 1
        self.total += 1
        return None

    def _rate(self, site: str, now: float) -> float | None:
        """The site's recent pace (attempts ended per second), measured over half a second
        at least between calls; None until measured."""
        done = self.completed.get(site, 0)
        when, then, rate = self._pace.get(site, (0.0, 0, None))
        if now - when >= 0.5:
            if when:
                rate = (done - then) / (now - when)
            if len(self._pace) > 1000:
                self._pace.clear()
            self._pace[site] = (now, done, rate)
        return rate

    def flags_changed(self) -> None:
        """Suspensions were set or cleared (an administrator's): read them at the next admit."""
        self._flags_at = 0.0

    def _read_flags(self, now: float) -> None:
        self._flags_at = now + _FLAGS_EVERY
        if self.throttle is not None:
            self._suspended = {k[8:]: t for k, t in self.throttle.flags().items() if k.startswith("suspend|")}

    def done(self, site: str) -> None:
        n = self.inflight.get(site, 0)
        if n == 0:
            return
        self.total -= 1
        self.completed[site] = self.completed.get(site, 0) + 1
        if n > 1:
            self.inflight[site] = n - 1
        else:
            del self.inflight[site]
            if len(self.completed) > 1000:  # sites come and go: paces are kept for the busy ones
                self.completed = {s: c for s, c in self.completed.items() if s in self.inflight}

    async def adjusted(self, shape: Shape, site: str, source: str, view) -> Shape:
        """`shape` as the plugins' `shaping(site, source, msg)` hooks change it for one
        message (the first that answers, with a dict of shape keys)."""
        over = await self.hooks.first(self.hooks.shaping, (site, source, view), shape_overrides)
        return shape._replace(**over) if over else shape

    # -- after an attempt --

    def outcome(self, site: str, results):
        """The results as the queue records them: a suspension the agent met becomes
        `Throttled`; reply rules run on the failures (suspend or slow the site, or turn
        a deferral into a bounce)."""
        if type(results) is not list or not results:
            return results
        until = suspended_until(results)
        if until:
            return Throttled(until, results[0].text)
        if not self.shaping.on_reply:
            return results
        out = None
        for i, r in enumerate(results):
            if 200 <= r.code < 300:
                continue
            rule = self.shaping.reply_rule(site, r.reply(), classify(r.code, r.enhanced, r.text))
            if rule is None:
                continue
            if rule.action == "bounce":
                if r.code < 500:
                    out = out or list(results)
                    enh = "5" + r.enhanced[1:] if r.enhanced else "5.0.0"
                    out[i] = r._replace(code=550, enhanced=enh, text=f"{r.text} (bounced by a shaping rule)")
                    self.stats["rule_bounce"] += 1
            else:
                self._flag(rule.action, site, rule.duration, r)
        return results if out is None else out

    def _flag(self, action: str, site: str, duration: float, r: RcptResult) -> None:
        key = flag_key(action, site)
        until = self.clock() + duration
        if self.throttle is None or self.throttle.until(key) >= until - 1.0:
            return  # set already (by this reply's neighbours, or another worker)
        self.stats["rule_" + action] += 1
        if action == "suspend":
            self._suspended[site] = until  # this worker holds the site back at once
        log.warning("shaping: %s %s for %.0f s after %r from %s", action, site, duration, r.reply(),
                    r.remote_host or "?")
        task = asyncio.get_running_loop().create_task(self.throttle.set_until(key, until))
        task.add_done_callback(_log_failure)


def _log_failure(t: asyncio.Task) -> None:
    if not t.cancelled() and t.exception() is not None:
        log.error("shaping: could not set a flag: %r", t.exception())


_INT_KEYS = ("connection_limit", "max_deliveries_per_connection")
_RATE_KEYS = ("max_connection_rate", "max_message_rate")


def shape_overrides(answer) -> dict:
    """A `shaping` hook's answer (a dict of shape keys, rates as "N/s" texts or None for
    unlimited) as Shape fields; TypeError/ValueError naming what is wrong."""
    if not isinstance(answer, dict):
        raise TypeError(f"returned {answer!r}: not None or a dict of shaping keys")
    out = {}
    for k, v in answer.items():
        if k in _INT_KEYS:
            if type(v) is not int or v < 1:
                raise ValueError(f"{k} = {v!r}: expected a positive integer")
            out[k] = v
        elif k in _RATE_KEYS:
            out[k] = None if v is None or v == "" else parse_rate(v)
        else:
            raise ValueError(f"unknown shaping key {k!r} (expected {', '.join(_INT_KEYS + _RATE_KEYS)})")
    return out
