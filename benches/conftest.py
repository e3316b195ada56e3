"""Micro-benchmarks (`pytest benches/ --benchmark-only`), not tests: tests/ is the test run.
Import the package from ./python when it is not installed (the dev loop's PYTHONPATH=python)."""

import os
import sys

try:
    import mta._native  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))


def pytest_terminal_summary(terminalreporter, config):
    """Print each benchmark's rates (extra_info), which pytest-benchmark's table leaves out."""
    session = getattr(config, "_benchmarksession", None)
    benches = [b for b in getattr(session, "benchmarks", []) if getattr(b, "extra_info", None)]
    if benches:
        terminalreporter.section("accept-path micro-benchmark rates (median round)")
        for b in benches:
            terminalreporter.write_line(f"{b.name}: " + ", ".join(f"{k}={v}" for k, v in b.extra_info.items()))
