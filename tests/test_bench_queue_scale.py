"""benches/queue_scale.py (issue 25's benchmark) at a tiny N: every step runs against a real
server, generator and sink, and reports sane figures; its streaming JSON-array counter takes
what `mta queue list --json` prints and refuses what is not one array of messages."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benches", "queue_scale.py")
N = 300
STEPS = ("idle", "accept", "restart", "list --json", "list", "summary --json", "summary",
         "hold ALL", "release ALL", "drain")


def _module():
    spec = importlib.util.spec_from_file_location("queue_scale", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_queue_scale_smoke(tmp_path):
    out = subprocess.run([sys.executable, SCRIPT, "--messages", str(N), "--no-postfix", "--settle", "0.5",
                          "--work", str(tmp_path / "work"), "--out", str(tmp_path / "qs")],
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-2000:]
    report = json.loads((tmp_path / "qs.json").read_text())
    assert "queue_scale.py --messages 300" in report["command"]
    assert report["machine"]["cpus"] >= 1
    [trial] = report["trials"]
    steps = trial["steps"]
    assert tuple(steps) == STEPS, steps.keys()
    for name in STEPS:
        assert steps[name]["status"] == "ok", (name, steps[name])
    assert steps["idle"]["rss_end"] > 0 and steps["idle"]["pss_end"] > 0
    acc = steps["accept"]
    assert acc["accepted"] == N and acc["errors"] == {}
    assert acc["seconds"] > 0 and acc["rate"] > 0
    assert acc["rss_peak"] >= acc["idle_rss"] > 0 and acc["rss_end"] > 0 and acc["pss_end"] > 0
    assert acc["spool_bytes"] > N * 1024
    rst = steps["restart"]
    assert 0 < rst["listening_s"] < 30 and rst["rss_end"] > 0
    assert rst["attempts_after_restart"] == 0  # deferred mail stays deferred across the restart
    assert steps["list --json"]["entries"] == N and steps["list"]["entries"] == N
    for name in ("list --json", "list", "summary", "summary --json"):
        assert steps[name]["seconds"] > 0 and steps[name]["cli_max_rss"] > 0
    assert steps["summary --json"]["total"] == N
    assert f"{N} message(s): held" in steps["hold ALL"]["said"]
    assert f"{N} message(s): released" in steps["release ALL"]["said"]
    assert steps["release ALL"]["rss_peak"] > 0
    drain = steps["drain"]
    assert drain["drained"] == N and drain["left_queued"] == 0
    assert drain["sink"]["messages"] == N and drain["sink"]["integrity_errors"] == 0
    assert drain["rate"] > 0 and drain["rss_peak"] > 0 and drain["spool_bytes_start"] > 0
    md = (tmp_path / "qs.md").read_text()
    assert "| step | time | rate | RSS peak | RSS end | notes |" in md
    for name in STEPS:
        assert f"| {name} |" in md
    assert "FAILED" not in md and md in out.stdout


def test_refuses_what_does_not_fit(tmp_path):
    out = subprocess.run([sys.executable, SCRIPT, "--messages", "1000000000000", "--work", str(tmp_path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "refusing" in out.stderr


@pytest.mark.parametrize("text,count", [
    ("[]", 0), (" [ ] \n", 0), ('[{"id": "a"}]', 1), ('[{"id": "a"}, {"id": "b"},\n{"id": "c"}]\n', 3),
])
def test_count_json_array(tmp_path, text, count):
    path = tmp_path / "list.json"
    path.write_text(text)
    assert _module().count_json_array(path) == count


@pytest.mark.parametrize("text", ["", "{}", '[{"id": "a"}', '[{"id": "a"} {"id": "b"}]', '[{"x": 1}]',
                                  '[{"id": "a"}] []', "[1]"])
def test_count_json_array_refuses(tmp_path, text):
    path = tmp_path / "list.json"
    path.write_text(text)
    with pytest.raises(ValueError):
        _module().count_json_array(path)


def test_count_json_array_across_chunks(tmp_path):
    """Entries cut by the 1 MiB reads are parsed whole."""
    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"id": f"{i:012d}", "pad": "x" * 300} for i in range(10_000)]))
    assert _module().count_json_array(path) == 10_000
