"""The delivery log: exact JSON records, append mode, reopen after rotation,
stderr by default, and no exception ever reaching the caller."""

import json
import logging
import os
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from mta.delivery import RcptResult
from mta.delivery.classify import CATEGORIES, classify
from mta.delivery.deliverylog import DeliveryLog, rfc3339

KEYS = {"time", "queue_id", "recipient", "status", "remote_host", "remote_ip", "reply",
        "attempt", "delay_s", "tls", "policy", "tls_failure"}
NOW = 1_700_000_000.1234
OK = RcptResult("r@b.test", 250, "2.0.0", "Ok: queued as X", "mx.b.test", "192.0.2.7", "verified",
                "mta-sts-enforce")


def lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(x) for x in f.read().splitlines()]


def test_record_keys_and_values(tmp_path):
    p = tmp_path / "delivery.log"
    d = DeliveryLog(str(p))
    d.record(queue_id="Q1", recipient="r@b.test", status="delivered", result=OK, attempt=2,
             arrival=NOW - 61.5, now=NOW)
    (rec,) = lines(p)
    assert set(rec) == KEYS
    assert rec == {
        "time": "2023-11-14T22:13:20.123Z", "queue_id": "Q1", "recipient": "r@b.test",
        "status": "delivered", "remote_host": "mx.b.test", "remote_ip": "192.0.2.7",
        "reply": "250 2.0.0 Ok: queued as X", "attempt": 2, "delay_s": 61.5,
        "tls": "verified", "policy": "mta-sts-enforce", "tls_failure": None,
    }


def test_failures_carry_their_class(tmp_path):
    """Deferred and bounced records end with "class" (mta.delivery.classify); no other record has it."""
    p = tmp_path / "d.log"
    d = DeliveryLog(str(p))
    full = RcptResult("r@b.test", 452, "4.2.2", "The email account that you tried to reach is over quota.",
                      "mx.b.test", "192.0.2.7", "verified", "none")
    gone = RcptResult("r@b.test", 550, "5.1.1", "User unknown", "mx.b.test", "192.0.2.7", "none", "none")
    d.record(queue_id="Q1", recipient="r@b.test", status="deferred", result=full, attempt=1, arrival=NOW, now=NOW)
    d.record(queue_id="Q1", recipient="r@b.test", status="bounced", result=gone, attempt=2, arrival=NOW, now=NOW)
    d.record(queue_id="Q1", recipient="r@b.test", status="bounced", result=None, attempt=2, arrival=NOW, now=NOW)
    d.record(queue_id="Q1", recipient="r@b.test", status="delivered", result=OK, attempt=1, arrival=NOW, now=NOW)
    d.record(queue_id="Q1", recipient="r@b.test", status="expired", result=None, attempt=1, arrival=NOW, now=NOW)
    recs = lines(p)
    assert [r.get("class") for r in recs] == ["mailbox_full", "invalid_recipient", "other", None, None]
    assert list(recs[0])[-1] == "class" and set(recs[0]) == KEYS | {"class"}
    assert set(recs[3]) == set(recs[4]) == KEYS
    assert all(r["class"] in CATEGORIES for r in recs[:3])


def test_no_result_and_unicode(tmp_path):
    p = tmp_path / "d.log"
    d = DeliveryLog(str(p))
    d.record(queue_id="Q2", recipient="ü@b.test", status="expired", result=None, attempt=9,
             arrival=NOW - 5 * 86400, now=NOW)
    rec = lines(p)[0]
    assert (rec["remote_host"], rec["remote_ip"], rec["reply"]) == (None, None, None)
    assert (rec["tls"], rec["policy"], rec["tls_failure"]) == (None, None, None)
    assert rec["recipient"] == "ü@b.test" and rec["delay_s"] == 432000.0
    assert "ü".encode() in p.read_bytes()  # readable UTF-8, not \u escapes


def test_time_format_now_default():
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1.9999) == "1970-01-01T00:00:01.999Z"
    line = DeliveryLog.format(queue_id="Q", recipient="r", status="deferred", result=None,
                              attempt=1, arrival=0.0)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", json.loads(line)["time"])


def test_appends_and_reopens_after_rotation(tmp_path):
    p = tmp_path / "d.log"
    p.write_text('{"old": 1}\n')
    d = DeliveryLog(str(p))
    d.record(queue_id="A", recipient="r", status="deferred", result=OK, attempt=1, arrival=NOW, now=NOW)
    # A second writer on the same file (another worker) appends too.
    d2 = DeliveryLog(str(p))
    d2.record(queue_id="B", recipient="r", status="bounced", result=OK, attempt=1, arrival=NOW, now=NOW)
    # No flush or close needed: each line is on disk (in the page cache) at once.
    assert [r.get("queue_id", "old") for r in lines(p)] == ["old", "A", "B"]
    os.rename(p, tmp_path / "d.log.1")
    d.record(queue_id="C", recipient="r", status="delivered", result=OK, attempt=1, arrival=NOW, now=NOW)
    d.reopen()
    d.record(queue_id="D", recipient="r", status="delivered", result=OK, attempt=1, arrival=NOW, now=NOW)
    assert [r.get("queue_id") for r in lines(tmp_path / "d.log.1")][-1] == "C"
    assert [r["queue_id"] for r in lines(p)] == ["D"]
    d.close()
    d2.close()


def test_stderr_default(capsys):
    d = DeliveryLog(None)
    d.record(queue_id="Q", recipient="r@b.test", status="dropped", result=None, attempt=1,
             arrival=NOW, now=NOW)
    out, err = capsys.readouterr()
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1
    assert json.loads(err)["status"] == "dropped" and json.loads(err)["delay_s"] == 0.0


def test_unopenable_path_falls_back_to_stderr(tmp_path, capsys, caplog):
    f = tmp_path / "file"
    f.write_text("")
    with caplog.at_level(logging.ERROR):
        d = DeliveryLog(str(f / "d.log"))  # parent is a file: ENOTDIR
        d.record(queue_id="Q", recipient="r", status="delivered", result=OK, attempt=1,
                 arrival=NOW, now=NOW)
        d.reopen()  # still failing: no exception
    assert "cannot open" in caplog.text
    assert json.loads(capsys.readouterr().err)["queue_id"] == "Q"


def test_write_failure_never_raises(tmp_path, caplog):
    d = DeliveryLog(str(tmp_path / "d.log"))
    os.close(d._fd)
    d._fd = os.open(os.devnull, os.O_RDONLY)  # not writable: EBADF on write
    with caplog.at_level(logging.ERROR):
        d.record(queue_id="Q9", recipient="r", status="delivered", result=OK, attempt=1,
                 arrival=NOW, now=NOW)
        d.record(queue_id="Q9", recipient="r", status="delivered", result=object(), attempt=1,
                 arrival=NOW, now=NOW)  # a bad argument: logged, not raised
    assert '"queue_id":"Q9"' in caplog.text  # the record itself survives in the log
    assert "cannot format" in caplog.text
    d.close()


def _reference(queue_id, recipient, status, result, attempt, arrival, now):
    """What the log wrote when it was json.dumps of a dict: the format must not drift."""
    rec = {
        "time": rfc3339(now), "queue_id": queue_id, "recipient": recipient, "status": status,
        "remote_host": result.remote_host if result else None,
        "remote_ip": result.remote_ip if result else None,
        "reply": result.reply() if result else None,
        "attempt": attempt,
        "delay_s": round(max(0.0, now - arrival), 3) if arrival else None,
        "tls": result.tls if result else None, "policy": result.policy if result else None,
        "tls_failure": result.tls_failure if result else None,
    }
    if status in ("deferred", "bounced"):
        rec["class"] = classify(result.code, result.enhanced, result.text) if result else "other"
    return json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n"


_text = st.text(alphabet=st.characters(), max_size=40)  # quotes, controls, surrogates, non-ASCII
_opt = st.none() | _text


@settings(max_examples=300, deadline=None)
@given(queue_id=_text, recipient=_text, status=st.sampled_from(["delivered", "deferred", "bounced"]),
       code=st.integers(200, 599), enhanced=st.none() | st.just("2.0.0"), text=_text,
       host=_opt, ip=_opt, tls=_opt, policy=_opt, failure=_opt, with_result=st.booleans(),
       attempt=st.integers(0, 10**6),
       arrival=st.sampled_from([0.0, NOW - 3.21, NOW - 1e6, NOW + 5, NOW - 0.0625, NOW - 1e17])
       | st.floats(0, 2 * NOW, allow_nan=False),
       now=st.just(NOW) | st.floats(0, 4e9, allow_nan=False))
def test_format_is_the_json_of_the_record(queue_id, recipient, status, code, enhanced, text, host, ip,
                                          tls, policy, failure, with_result, attempt, arrival, now):
    result = RcptResult(recipient, code, enhanced, text, host, ip, tls, policy, failure) if with_result else None
    line = DeliveryLog.format(queue_id=queue_id, recipient=recipient, status=status, result=result,
                              attempt=attempt, arrival=arrival, now=now)
    # Compared as written (UTF-8, a lone surrogate as its backslashreplace escape): the
    # line comes from Rust, whose strings cannot hold a surrogate, so it is escaped there.
    written = _reference(queue_id, recipient, status, result, attempt, arrival, now).encode("utf-8", "backslashreplace")
    assert line.encode("utf-8") == written
    assert set(json.loads(line)) == (KEYS if status == "delivered" else KEYS | {"class"})


_row = st.tuples(_text, st.integers(200, 299), st.none() | st.just("2.0.0"), _text, _opt, _opt, _opt, _opt, _opt)


@settings(max_examples=150, deadline=None)
@given(queue_id=_text, rows=st.lists(_row, min_size=1, max_size=4), attempt=st.integers(1, 10**6),
       arrival=st.sampled_from([0.0, NOW - 3.21]) | st.floats(0, 2 * NOW, allow_nan=False))
def test_delivered_rows_are_the_records_of_record(tmp_path_factory, queue_id, rows, attempt, arrival):
    """The delivery agent's per-message path (`delivered`: rows as tuples, one write) leaves
    the same lines, byte for byte, as `record` for each recipient."""
    d = tmp_path_factory.mktemp("d")
    one, many = DeliveryLog(str(d / "one.log")), DeliveryLog(str(d / "many.log"))
    attempts = [attempt + i for i in range(len(rows))]
    for row, a in zip(rows, attempts):
        one.record(queue_id=queue_id, recipient=row[0], status="delivered", result=RcptResult(*row),
                   attempt=a, arrival=arrival, now=NOW)
    many.delivered(queue_id, rows, attempts, arrival, NOW)
    one.close()
    many.close()
    assert (d / "many.log").read_bytes() == (d / "one.log").read_bytes()
    assert len((d / "many.log").read_bytes().splitlines()) == len(rows)


def test_delivered_with_a_bad_row_never_raises(tmp_path, caplog):
    d = DeliveryLog(str(tmp_path / "d.log"))
    with caplog.at_level(logging.ERROR):
        d.delivered("Q1", [("r@b.test", "not a code")], [1], NOW, NOW)
    assert "cannot format the records of Q1" in caplog.text
    assert (tmp_path / "d.log").read_bytes() == b""
