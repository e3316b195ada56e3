"""What a reload reads (the file and the command line's overrides, as `mta run` was given them)
and what it may change: the new config with every restart-only key kept at its running value,
the keys that changed, and the restart-only keys that would have (logged, never applied)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from mta.config import schema
from mta.config.schema import Config

# Dotted keys, or whole sections, that the running server cannot swap: its sockets, its
# processes, its spool and what was made once from them (the delivery agent and its log,
# the DNS resolver the agent shares, the throttle's backend, the MTA-STS cache).
RESTART_ONLY = (
    "listen", "listener", "proxy_protocol", "spool", "workers", "http", "privileges", "cpu_affinity",
    "throttle", "hostname", "dns", "log", "smtp.max_header_size",
    "delivery.agent", "delivery.enabled", "delivery.log_file", "delivery.mta_sts", "delivery.mta_sts_port",
    "delivery.mta_sts_ca_file", "delivery.mta_sts_timeout", "delivery.tls_report_interval",
    # the implicit-TLS listeners' contexts, made once, seal and open their tickets (mta.smtp.tls)
    "tls.session_tickets", "tls.ticket_rotation",
    # the listeners are made for one engine (an implicit-TLS listener's factory or context)
    "tls.engine",
)
# With no [tls] the listeners were made without STARTTLS (and with it, with): adding or
# removing the certificate changes the listeners; changing its files or settings does not.
TLS_PRESENCE = "tls.cert"


@dataclass(frozen=True)
class ConfigSource:
    """The configuration as `mta run` read it: the file (None: the built-in defaults), the
    flags that replace its keys (dotted key -> value), and the --http addresses, which are
    added to the file's http.listen rather than replacing it."""

    path: str | None = None
    overrides: dict = field(default_factory=dict)
    http_extra: tuple[str, ...] = ()

    def load(self) -> Config:
        """Read and validate; ConfigError lists every problem."""
        cfg = schema.load(self.path, self.overrides)
        if not self.http_extra:
            return cfg
        have = [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in cfg.http.listen]
        overrides = dict(self.overrides)
        overrides["http.listen"] = have + [a for a in dict.fromkeys(self.http_extra) if a not in have]
        return schema.load(self.path, overrides)


class Ignored(NamedTuple):
    key: str
    was: str
    now: str

    def __str__(self) -> str:
        return f"{self.key} (was {self.was}, now {self.now})"


class Plan(NamedTuple):
    config: Config  # what runs after the reload: the new config, restart-only keys as they were
    changed: list[str]  # dotted keys whose value the reload changes
    ignored: list[Ignored]  # restart-only keys the file changed: in force at the next restart


def restart_only(key: str) -> bool:
    return any(key == r or key.startswith(r + ".") for r in RESTART_ONLY)


def plan(old: Config, new: Config) -> Plan:
    """Compare the running config with a freshly read one (both valid)."""
    changed, ignored, keep = [], [], []
    tls_swap = bool(old.tls.cert) != bool(new.tls.cert)
    for key, f in _fields():
        was, now = value(old, key), value(new, key)
        if was == now:
            continue
        if tls_swap and key.startswith("tls."):
            keep.append(key)  # the whole [tls] table waits for the restart; its presence says why
            if key == TLS_PRESENCE:
                ignored.append(Ignored(key, _render(f, was), _render(f, now)))
        elif restart_only(key):
            keep.append(key)
            ignored.append(Ignored(key, _render(f, was), _render(f, now)))
        else:
            changed.append(key)
    cfg = new
    for key in keep:
        cfg = _set(cfg, key, value(old, key))
    return Plan(cfg, changed, ignored)


def summary(changed: list[str]) -> str:
    """The changed keys for the log line: a section's keys as the section, then each key."""
    out: list[str] = []
    for key in changed:
        top = key.split(".")[0]
        if top == "plugin" or key == "delivery.route_hook":
            top = "plugins"
        name = top if "." in key or top == "plugins" else key
        if name not in out:
            out.append(name)
    return ", ".join(out) if out else "nothing"


def _fields(cls: type = Config, prefix: str = ""):
    """(dotted key, its dataclass field), as the schema's sections nest them."""
    for f in dataclasses.fields(cls):
        if "section" in f.metadata:
            yield from _fields(f.metadata["section"], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f


def value(cfg: Any, key: str) -> Any:
    """The value of a dotted key."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _set(cfg: Any, key: str, value: Any) -> Any:
    head, _, rest = key.partition(".")
    if not rest:
        return dataclasses.replace(cfg, **{head: value})
    return dataclasses.replace(cfg, **{head: _set(getattr(cfg, head), rest, value)})


def _render(f: dataclasses.Field, value: Any) -> str:
    try:
        text = f.metadata["kind"].render(value)
    except Exception:  # noqa: BLE001 - a kind without a TOML form for this value: shown as Python
        text = repr(value)
    if not isinstance(text, str):
        text = json.dumps(text, default=repr)
    return text if len(text) <= 200 else text[:197] + "..."
