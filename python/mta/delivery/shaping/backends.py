"""Makes the configured throttle (`[throttle]`) in the worker (flags, admin) and its delivery
agent (slots, rates) from one description that crosses the process boundary as JSON.
Invariant: slots are worker shards, so a restarted agent takes back what its predecessor held."""

from __future__ import annotations

import json
import os
import socket

TABLE_FILE = "throttle.shm"  # in the spool root: made fresh by the main process at each start


def table_path(spool_dir: str) -> str:
    return os.path.join(spool_dir, TABLE_FILE)


def describe(cfg, shard: int) -> dict:
    """What a process of worker `shard` needs to make the configured throttle."""
    t = cfg.throttle
    return {"backend": t.backend, "path": table_path(cfg.spool.dir), "slot": shard,
            "redis_url": t.redis_url, "expected_nodes": t.expected_nodes, "lease_ttl": t.lease_ttl,
            "node": f"{cfg.hostname}:{socket.gethostname()}"}


def encode(desc: dict) -> str:
    return json.dumps(desc, separators=(",", ":"))


def make(desc: dict | str, owner: bool = False):
    """The throttle a description names: `local` (the machine-wide table) or `redis`
    (falling back to the table, limits divided by expected_nodes, while Redis is away).
    `owner`: this process takes the slot's connection slots (the delivery agent, or the
    worker without one): what a dead predecessor held in the table is given back first."""
    from mta.delivery.shaping.throttle import LocalThrottle

    if isinstance(desc, str):
        desc = json.loads(desc)
    local = LocalThrottle(desc["path"], desc["slot"])
    if owner:
        local.clear_slot()
    if desc.get("backend") != "redis":
        return local
    from mta.delivery.shaping.redisthrottle import RedisThrottle

    # A busy event loop may take a while to read an answer that came at once: 2 s before
    # Redis counts as unreachable (a fallback that a loaded agent does not need).
    return RedisThrottle(desc["redis_url"], local, node=desc["node"],
                         expected_nodes=desc["expected_nodes"], lease_ttl=desc["lease_ttl"], timeout=2.0)


def fresh_table(spool_dir: str) -> None:
    """A new, empty table for this start (the main process, before any worker): counts and
    times from a previous run or boot must not carry over."""
    from mta._native import ShmThrottle

    os.makedirs(spool_dir, mode=0o700, exist_ok=True)
    ShmThrottle(table_path(spool_dir), 0, fresh=True)
