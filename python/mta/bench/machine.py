"""What a report records about the machine a run was made on (CPUs, model, kernel, memory,
the disk under the spools), so a reader can tell whether two runs are comparable."""

from __future__ import annotations

import os
import platform


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _disk(path: str) -> dict:
    """The filesystem and block device holding `path` (from /proc/self/mountinfo and /sys)."""
    out: dict = {"path": path}
    try:
        dev = os.stat(path).st_dev
    except OSError:
        return out
    major, minor = os.major(dev), os.minor(dev)
    for line in _read("/proc/self/mountinfo").splitlines():
        parts = line.split()
        if len(parts) > 9 and parts[2] == f"{major}:{minor}":
            sep = parts.index("-")
            out["fstype"], out["device"] = parts[sep + 1], parts[sep + 2]
            out["mount"] = parts[4]
            break
    sysdev = f"/sys/dev/block/{major}:{minor}"
    if os.path.exists(sysdev):
        real = os.path.realpath(sysdev)
        disk = real if os.path.exists(f"{real}/queue") else os.path.dirname(real)
        rot = _read(f"{disk}/queue/rotational")
        if rot:
            out["rotational"] = rot == "1"
        model = _read(f"{disk}/device/model")
        if model:
            out["model"] = model
    return out


def describe(spool_path: str) -> dict:
    model = ""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "memory_gib": round(mem_kib / 2 ** 20, 1), "python": platform.python_version(),
            "disk": _disk(spool_path)}
