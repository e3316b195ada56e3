"""Several worker processes: one port (SO_REUSEPORT), one spool shard each,
every shard listed by `mta queue list`, and no worker outliving the main
process."""

from __future__ import annotations

import os
import signal
import smtplib
import time

import pytest

from conftest import free_port


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def test_two_workers_share_the_port_and_the_queue(server_factory):
    srv = server_factory(args=("--workers", "2"))
    deadline = time.monotonic() + 20
    while srv.log().count("listening on") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # both workers bound (on a loaded machine one can lag)
    workers = children_of(srv.proc.pid)
    assert len(workers) == 2
    for i in range(40):
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as c:
            refused = c.sendmail("a@example.test", ["b@example.test"], f"Subject: {i}\r\n\r\nbody {i}\r\n")
            assert refused == {}
    shards = sorted(p.name for p in srv.spool.iterdir() if p.is_dir())
    assert shards == ["0", "1"]
    listed = srv.queue()
    assert len(listed) == 40
    assert len({e["id"] for e in listed}) == 40  # ids unique across shards

    # SIGKILL of the main process takes the workers with it and frees the port.
    srv.stop(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{w}") for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(os.path.exists(f"/proc/{w}") for w in workers)

    again = server_factory(args=("--workers", "2"), spool=srv.spool, port=srv.port)
    assert len(again.queue()) == 40
    with smtplib.SMTP("127.0.0.1", again.port, timeout=30) as c:
        assert c.sendmail("a@example.test", ["b@example.test"], "Subject: after\r\n\r\nx\r\n") == {}
    assert again.stop() == 0  # SIGTERM: workers stop cleanly, exit 0
    assert len(again.queue()) == 41


def test_worker_that_cannot_start_stops_the_server(server_factory, tmp_path):
    port = free_port()
    import socket

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    try:
        srv = server_factory(args=("--workers", "2"), port=port, wait=False)
        assert srv.proc.wait(30) == 1
        assert "cannot start" in srv.log() or "Address already in use" in srv.log() or "address already in use" in srv.log().lower()
    finally:
        blocker.close()


def _agents_under(pid: int) -> list[int]:
    """Delivery agents among the descendants of pid (workers' children)."""
    found, todo = [], [pid]
    while todo:
        for child in children_of(todo.pop()):
            try:
                with open(f"/proc/{child}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if b"mta.delivery.agent" in cmd:
                found.append(child)
            todo.append(child)
    return found


def test_delivery_agents_deliver_and_die_with_the_server(server_factory, tmp_path):
    """Each worker starts its delivery agent at its first SMTP delivery; SIGKILL of the
    main process takes workers and agents with it."""
    from conftest import SmtpPeer

    peer = SmtpPeer().start()
    try:
        srv = server_factory(deliver=True, args=("--workers", "2", "--relay-to", f"127.0.0.1:{peer.port}"))
        for i in range(30):  # enough connections for both workers to get some
            with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as c:
                assert c.sendmail("a@example.test", ["b@example.test"], f"Subject: {i}\r\n\r\nbody {i}\r\n") == {}
        assert len(peer.wait_txns(30)) >= 30
        deadline = time.monotonic() + 20
        while srv.queue() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.queue() == []
        agents = _agents_under(srv.proc.pid)
        assert 1 <= len(agents) <= 2 and srv.log().count("delivery agent started") == len(agents)
        srv.stop(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(os.path.exists(f"/proc/{a}") for a in agents) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(os.path.exists(f"/proc/{a}") for a in agents), "a delivery agent outlived the server"
    finally:
        peer.stop()


def _allowed(task_status: str) -> set[int]:
    """Cpus_allowed_list of a /proc status file, as a set."""
    with open(task_status) as f:
        line = next(x for x in f if x.startswith("Cpus_allowed_list:"))
    out: set[int] = set()
    for part in line.split(":", 1)[1].strip().split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _threads(pid: int) -> dict[str, set[int]]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            name = f.read().strip()
        out[name if int(tid) != pid else "main"] = _allowed(f"/proc/{pid}/task/{tid}/status")
    return out


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="cpu_affinity needs two CPUs")
@pytest.mark.parametrize("workers", [1, 2])
def test_cpu_affinity_auto_separates_the_loop_from_its_helpers(server_factory, workers):
    """cpu_affinity = "auto": worker n's event loop on the n-th allowed CPU, its spool
    writer thread and delivery agent on the other CPUs; mail still flows."""
    from conftest import SmtpPeer

    cpus = sorted(os.sched_getaffinity(0))
    peer = SmtpPeer().start()
    try:
        srv = server_factory(deliver=True, config='cpu_affinity = "auto"\n',
                             args=("--workers", str(workers), "--relay-to", f"127.0.0.1:{peer.port}"))
        for i in range(10 * workers):
            with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as c:
                assert c.sendmail("a@example.test", ["b@example.test"], f"Subject: {i}\r\n\r\n{i}\r\n") == {}
        assert len(peer.wait_txns(10 * workers)) >= 10 * workers
        agents = set(_agents_under(srv.proc.pid))
        pids = [srv.proc.pid] if workers == 1 else [p for p in children_of(srv.proc.pid) if p not in agents]
        assert len(pids) == workers
        seen_loops = set()
        for pid in pids:
            threads = _threads(pid)
            loop = threads["main"]
            assert len(loop) == 1 and loop <= set(cpus)
            seen_loops |= loop
            writers = [v for k, v in threads.items() if k.startswith("spool-writer")]
            assert writers and all(w == set(cpus) - loop for w in writers)
            for agent in _agents_under(pid):
                # The agent pins itself once its imports are done; until then it has the
                # worker's CPU (under load that can outlast the ten messages above).
                deadline = time.monotonic() + 20
                while _allowed(f"/proc/{agent}/status") != set(cpus) - loop and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert _allowed(f"/proc/{agent}/status") == set(cpus) - loop
        assert len(seen_loops) == min(workers, len(cpus))  # each worker a CPU of its own
        assert "cpu affinity: event loop on CPU" in srv.log()
    finally:
        peer.stop()


def test_cpu_affinity_none_leaves_placement_alone(server_factory):
    srv = server_factory()
    assert all(v == os.sched_getaffinity(0) for v in _threads(srv.proc.pid).values())
    assert "cpu affinity" not in srv.log()
