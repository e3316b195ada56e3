"""Delay notices end to end: the real `mta run` with bounce.delay_warning = 2 s relays to a
peer that answers 451 at every RCPT; exactly one delay DSN (multipart/report, Action:
delayed) reaches the sender's Maildir, and none more after further deferrals or after a
kill -9 and a restart on the same spool."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import connect, queued_id  # noqa: E402
from test_delivery import (RETRY_WAIT, log_records, maildir_files, message, mta_config,  # noqa: E402
                           parse_dsn, rec, send, wait_log, wait_maildir)

DELAY = 2.0  # bounce.delay_warning


def config(tmp_path: Path, peer_port: int) -> str:
    return mta_config(tmp_path, transport={"dest.test": f"smarthost 127.0.0.1:{peer_port}"}) + (
        f'\n[bounce]\ndelay_warning = "{int(DELAY)}s"\n')


def test_one_delay_notice_survives_further_deferrals_and_a_restart(tmp_path, server_factory, peer_factory):
    peer = peer_factory(rcpt=lambda a, n, p: "451 4.3.0 come back later")
    cfg = config(tmp_path, peer.port)
    srv = server_factory(config=cfg, deliver=True)
    t0 = time.time()
    qid = send(srv, ["user@dest.test"], message("slow"))
    inbox = tmp_path / "mail" / "sender.test" / "alice"

    (path,) = wait_maildir(inbox, 1, srv, timeout=DELAY + 2 * RETRY_WAIT)
    assert time.time() - t0 >= DELAY
    msg, blocks = parse_dsn(path)
    assert msg["To"] == "alice@sender.test"
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    (b,) = blocks
    assert b["Final-Recipient"].lower() == "rfc822; user@dest.test"
    assert (b["Action"], b["Status"]) == ("delayed", "4.3.0")
    assert "451 4.3.0 come back later" in b["Diagnostic-Code"], b["Diagnostic-Code"]
    assert b["Will-Retry-Until"], "a delay notice says until when it is retried"
    (notice,) = wait_log(tmp_path, srv, rec("user@dest.test", "delay_notice", qid))
    assert f" for {qid} to <alice@sender.test> nrcpt=1" in srv.log()

    # Two more deferrals (1 s apart): no second notice.
    before = len(wait_log(tmp_path, srv, rec("user@dest.test", "deferred", qid)))
    wait_log(tmp_path, srv, rec("user@dest.test", "deferred", qid), n=before + 2, timeout=2 * RETRY_WAIT)
    assert len(maildir_files(inbox)) == 1

    # kill -9 and a restart on the same spool: the flag is durable, no second notice.
    srv.stop(signal.SIGKILL)
    deferred = len([r for r in log_records(tmp_path) if rec("user@dest.test", "deferred", qid)(r)])
    srv = server_factory(config=cfg, deliver=True, spool=srv.spool)
    wait_log(tmp_path, srv, rec("user@dest.test", "deferred", qid), n=deferred + 2, timeout=2 * RETRY_WAIT)
    assert [q["id"] for q in srv.queue()] == [qid]
    assert "delay notice sent: yes" in srv.show(qid).stdout.decode()
    assert len(maildir_files(inbox)) == 1
    assert [r for r in log_records(tmp_path) if r["status"] == "delay_notice"] == [notice]


def send_notify(srv, notify: str, subject: str) -> str:
    with connect(srv) as c:
        c.start()
        c.expect("MAIL FROM:<alice@sender.test>", 250, "2.1.0")
        c.expect(f"RCPT TO:<user@dest.test> NOTIFY={notify}", 250, "2.1.5")
        qid = queued_id(c.data(message(subject)))
        c.quit()
    return qid


def test_notify_and_the_null_sender_decide(tmp_path, server_factory, peer_factory):
    peer = peer_factory(rcpt=lambda a, n, p: "451 4.3.0 come back later")
    srv = server_factory(config=config(tmp_path, peer.port), deliver=True)
    null = send(srv, ["user@dest.test"], message("from nobody"), sender="")
    failure = send_notify(srv, "FAILURE", "failures only")
    delays = send_notify(srv, "DELAY,FAILURE", "delays too")
    for qid in (null, failure, delays):
        wait_log(tmp_path, srv, rec("user@dest.test", "deferred", qid), n=4, timeout=DELAY + 3 * RETRY_WAIT)
    notices = [r["queue_id"] for r in log_records(tmp_path) if r["status"] == "delay_notice"]
    assert notices == [delays]
    (path,) = wait_maildir(tmp_path / "mail" / "sender.test" / "alice", 1, srv)
    _, (b,) = parse_dsn(path)
    assert b["Action"] == "delayed"
