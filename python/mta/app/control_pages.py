"""The page requests of the control channel ("page", "shape", "ids"): their fields checked (the
server answers them in mta.app.control_server.serve_page)."""

from __future__ import annotations

import itertools
import math

PAGE_OPS = ("page", "shape", "ids")  # the queue a page at a time (native Spool.page, shape, ids)
MAX_PAGE = 100_000  # messages in one page (the native limit)
# qshape's age columns in minutes (mta.app.admin.BUCKETS): the default of a "shape" request.
SHAPE_BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)
FIELDS = {"page": ("cursor", "limit", "form"), "shape": ("cursor", "limit", "now", "buckets"),
          "ids": ("cursor", "limit")}  # op -> the fields it takes
ALL_FIELDS = ("cursor", "limit", "form", "now", "buckets")


class PageFieldError(ValueError):
    """A page field the server refuses (mta.app.control makes it a RequestError)."""


def whole(raw, lo: int, hi: int) -> bool:
    return isinstance(raw, int) and not isinstance(raw, bool) and lo <= raw <= hi


def page_fields(op: str, obj: dict) -> dict:
    """The cursor, limit, form, now and buckets of a page request, each checked (the Request
    fields); PageFieldError when one is malformed, missing, or given to an op that takes none."""
    allowed = FIELDS.get(op, ())
    extra = [f for f in ALL_FIELDS if f in obj and f not in allowed]
    if extra:
        raise PageFieldError(f"{op} takes no {', '.join(extra)}")
    if op not in PAGE_OPS:
        return {}
    out: dict = {"cursor": obj.get("cursor", 0)}
    if not whole(out["cursor"], 0, 2 ** 64 - 1):
        raise PageFieldError(f"bad cursor {str(out['cursor'])[:80]!r}: expected 0 or the \"next\" of a reply")
    if "limit" not in obj or not whole(obj["limit"], 1, MAX_PAGE):
        raise PageFieldError(f"{op} needs limit, a whole number 1..{MAX_PAGE}, not {str(obj.get('limit'))[:80]!r}")
    out["limit"] = obj["limit"]
    if op == "page":
        if obj.get("form") not in ("json", "text"):
            raise PageFieldError(f"page needs form, 'json' or 'text', not {str(obj.get('form'))[:80]!r}")
        out["form"] = obj["form"]
    if "now" in obj:
        raw = obj["now"]
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or raw < 0:
            raise PageFieldError(f"bad now {str(raw)[:80]!r}: expected a unix time as a number")
        out["now"] = float(raw)
    if "buckets" in obj:
        raw = obj["buckets"]
        if (not isinstance(raw, list) or not 0 < len(raw) <= 64 or not all(whole(b, 1, 2 ** 31) for b in raw)
                or any(a >= b for a, b in itertools.pairwise(raw))):
            raise PageFieldError("bad buckets: expected 1-64 increasing whole numbers of minutes")
        out["buckets"] = tuple(raw)
    return out
