"""The standard workloads of `mta bench compare` (each with a short name for --workloads)
and the expansion of a sweep (--sweep sessions=1,10,50) or offered rates (--rate) into
one workload per point, in the order the trials run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class Workload:
    name: str
    kind: str = "accept-only"  # or "end-to-end": accepted, relayed into the sink, drained
    messages: int = 20000
    size: int = 1024
    sessions: int = 50
    per_connection: int = 1
    warmup: int = 0
    starttls: bool = False  # STARTTLS on both sides: the generator, and the sink offers it
    tls_resume: bool = False  # the generator resumes TLS sessions (a sending MTA's session cache)
    sweep: dict | None = field(default=None, repr=False)  # {"param", "value"} of a sweep point
    rate: float | None = None  # open loop: messages offered per second


KINDS = ("accept-only", "end-to-end")

STANDARD = {
    "accept-1k": Workload("accept-1k", "accept-only", messages=10000),
    "e2e-1k": Workload("e2e-1k", "end-to-end", messages=10000),
    "e2e-1k-keep": Workload("e2e-1k-keep", "end-to-end", messages=20000, per_connection=100),
    "e2e-64k": Workload("e2e-64k", "end-to-end", messages=2000, size=64 * 1024),
    "e2e-1m": Workload("e2e-1m", "end-to-end", messages=200, size=1024 * 1024),
    "e2e-1k-tls": Workload("e2e-1k-tls", "end-to-end", messages=5000, starttls=True),
    "e2e-1k-keep-tls": Workload("e2e-1k-keep-tls", "end-to-end", messages=20000, per_connection=100, starttls=True),
}

SWEEPABLE = ("sessions", "size", "per_connection")


def standard(names: list[str] | None) -> list[Workload]:
    """Copies of the named standard workloads (all when None); ValueError naming the known."""
    names = names or list(STANDARD)
    bad = [n for n in names if n not in STANDARD]
    if bad:
        raise ValueError(f"no workload named {', '.join(bad)} (known: {', '.join(STANDARD)})")
    return [dataclasses.replace(STANDARD[n]) for n in names]


def parse_sweep(spec: str) -> tuple[str, list[int]]:
    """"sessions=1,10,50" -> ("sessions", [1, 10, 50]); sizes take k/m suffixes (64k)."""
    param, sep, values = spec.partition("=")
    param = param.strip().replace("-", "_")
    if not sep or param not in SWEEPABLE:
        raise ValueError(f"--sweep {spec!r}: expected PARAM=V1,V2,... with PARAM one of {', '.join(SWEEPABLE)}")
    out = []
    for v in values.split(","):
        v = v.strip().lower()
        mult = {"k": 1024, "m": 1024 * 1024}.get(v[-1:], 1)
        try:
            n = int(v[:-1] if mult > 1 else v) * mult
        except ValueError:
            raise ValueError(f"--sweep {spec!r}: {v!r} is not a whole number") from None
        if n < 1:
            raise ValueError(f"--sweep {spec!r}: values must be at least 1")
        out.append(n)
    if not out:
        raise ValueError(f"--sweep {spec!r}: no values")
    return param, out


def parse_rates(spec: str) -> list[float]:
    try:
        rates = [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--rate {spec!r}: expected offered rates in messages/s, e.g. 500,1000,2000") from None
    if not rates or any(r <= 0 for r in rates):
        raise ValueError(f"--rate {spec!r}: rates must be positive")
    return rates


def parse_ms(spec: str) -> float:
    """"50ms", "0.05s" or "50" -> milliseconds."""
    s = spec.strip().lower()
    try:
        if s.endswith("ms"):
            return float(s[:-2])
        if s.endswith("s"):
            return float(s[:-1]) * 1000
        return float(s)
    except ValueError:
        raise ValueError(f"{spec!r}: expected a duration like 50ms or 0.05s") from None


def expand(workloads: list[Workload], sweep: tuple[str, list[int]] | None,
           rates: list[float] | None) -> list[Workload]:
    """One workload per (workload, sweep point, offered rate), sweep and rates crossed."""
    out = []
    for wl in workloads:
        points = [wl] if sweep is None else [
            dataclasses.replace(wl, **{sweep[0]: v}, sweep={"param": sweep[0], "value": v}) for v in sweep[1]]
        for p in points:
            out.extend([p] if not rates else [dataclasses.replace(p, rate=r) for r in rates])
    return out
