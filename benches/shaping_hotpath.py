"""The worker's per-message cost of traffic shaping: `Smtp.submit` and `submit_spooled` to a
smarthost with and without the shaper (default config: no rules), against a wire that takes
every job at once. Run with the release build: python benches/shaping_hotpath.py"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))

from mta.config import schema as config  # noqa: E402
from mta.config.routes import parse_transport  # noqa: E402
from mta.config.shaping import egress_of, shaping_of  # noqa: E402
from mta.delivery import OutMessage, OutRcpt  # noqa: E402
from mta.delivery.mtasts import OutboundTls  # noqa: E402
from mta.delivery.mx import MxResolver  # noqa: E402
from mta.delivery.shaping.shaper import Shaper  # noqa: E402
from mta.delivery.shaping.throttle import LocalThrottle  # noqa: E402
from mta.delivery.transport import Route, Smtp  # noqa: E402


class Wire:
    def submit(self, key, targets, opts, msg, done, log=None):
        return True

    def submit_spooled(self, *args):
        return True

    def prestart(self):
        pass


def main(n: int = 200_000) -> None:
    tmp = tempfile.mkdtemp()
    cfg = config.load(None, {"listen": ["127.0.0.1:2525"], "spool.dir": tmp, "delivery.relay_to": "127.0.0.1:2626",
                             "delivery.mta_sts": False})
    throttle = LocalThrottle(os.path.join(tmp, "throttle.shm"), 0)
    spec = parse_transport("smarthost 127.0.0.1:2626")
    msg = OutMessage("q1", "a@b.test", (OutRcpt("x@example.test"),), b"x" * 1000)
    for shaped in (False, True):
        shaper = Shaper(shaping_of(cfg), egress_of(cfg), throttle, 1000) if shaped else None
        smtp = Smtp(Wire(), MxResolver(None), OutboundTls(None, 0), cfg.delivery, "h", shaper=shaper)
        route, spooled = Route(spec, ""), Route(spec, "example.test")
        t0 = time.perf_counter()
        for _ in range(n):
            smtp.submit(route, msg, print)
            if shaper:
                shaper.done("127.0.0.1")
        t1 = time.perf_counter()
        for _ in range(n):
            smtp.submit_spooled(spooled, "q1", print, print)
            if shaper:
                shaper.done("127.0.0.1")
        t2 = time.perf_counter()
        print(f"{'shaper' if shaped else 'none  '}: submit {(t1 - t0) / n * 1e6:.2f} us, "
              f"submit_spooled {(t2 - t1) / n * 1e6:.2f} us")


if __name__ == "__main__":
    main()
