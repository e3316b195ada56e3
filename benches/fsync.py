"""What an fdatasync costs when records are appended to a file against when they land in
blocks already written (the spool writer's zeros ahead, writer::ZERO_AHEAD): syncs per
second, the sync's latency (p50, p90, p99) and the CPU per sync (write and sync, this
process). N syncs of a CHUNK-byte record each, on a file in DIR (removed after).

  python benches/fsync.py [--dir /work] [--syncs 3000] [--chunk 14000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import time


def run(path: str, mode: str, n: int, chunk: int, ahead: int = 1 << 20) -> str:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        zeroed = length = 0
        record = b"x" * chunk
        lat = []
        cpu0, wall0 = time.process_time(), time.monotonic()
        for _ in range(n):
            os.pwrite(fd, record, length)
            length += chunk
            if mode == "zeros ahead" and zeroed < length + ahead // 2:
                start, end = max(zeroed, length), length + ahead
                os.pwrite(fd, bytes(end - start), start)
                zeroed = end
            t = time.perf_counter()
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t)
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    us = [lat[int(n * q)] * 1e6 for q in (0.5, 0.9, 0.99)]
    return (f"{mode:12s} {n / wall:6.0f} syncs/s  p50 {us[0]:5.0f} us  p90 {us[1]:5.0f} us  "
            f"p99 {us[2]:6.0f} us  CPU {cpu / n * 1e6:4.0f} us/sync")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/work")
    ap.add_argument("--syncs", type=int, default=3000)
    ap.add_argument("--chunk", type=int, default=14000)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args(argv)
    path = os.path.join(a.dir, f"mta-fsync-bench-{os.getpid()}.dat")
    for _ in range(a.rounds):
        for mode in ("append", "zeros ahead"):
            print(run(path, mode, a.syncs, a.chunk), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
