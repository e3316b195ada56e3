//! One SMTP/LMTP mail transaction on the client side (pipelined or lock-step), sans I/O: which
//! replies are owed (RSET, MAIL, each RCPT, DATA, end of data) and what each decides. Invariants:
//! once `Done`, every recipient has an outcome; a reply nothing is owed for is `Unexpected`.

use std::collections::VecDeque;

use super::reply::Reply;

/// What the server said about one recipient (or a synthetic failure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub code: u16,
    pub enhanced: Option<String>,
    pub text: String,
}

impl Outcome {
    pub fn of(r: &Reply) -> Self {
        Outcome { code: r.code, enhanced: enhanced(r).map(str::to_owned), text: reply_text(r) }
    }
}

/// The reply's RFC 3463 code, of class 2, 4 or 5 only (RFC 3463 has no other).
fn enhanced(r: &Reply) -> Option<&str> {
    r.enhanced().filter(|e| matches!(e.as_bytes()[0], b'2' | b'4' | b'5'))
}

/// All lines of a reply as one, each without the reply's enhanced code, empty ones left out.
pub fn reply_text(r: &Reply) -> String {
    let enh = enhanced(r);
    let mut out = String::new();
    for line in &r.lines {
        let mut t = line.as_str();
        if let Some(e) = enh {
            if t == e {
                t = "";
            } else if let Some(rest) = t.strip_prefix(e).and_then(|s| s.strip_prefix(' ')) {
                t = rest;
            }
        }
        if !t.is_empty() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(t);
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owed {
    Rset,
    Mail,
    Rcpt(usize),
    Data,
    /// The end of an empty data phase: 354 came although no recipient was accepted.
    EmptyEnd,
    /// The end of data (SMTP: one reply for every accepted recipient).
    End,
    /// LMTP: the end-of-data reply for the i-th accepted recipient.
    LmtpEnd(usize),
}

/// What the caller does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// More replies are owed.
    Wait,
    /// Write the message (with its terminator, or as BDAT n LAST), then feed the end-of-data reply.
    SendData,
    /// The server said 354 though no recipient was accepted: write ".\r\n" and feed its reply.
    SendEmptyEnd,
    /// Every recipient has its outcome.
    Done,
    /// RSET was refused: nothing was decided; the message needs another connection.
    Stale,
    /// A reply came that no command is owed: the conversation is out of sync.
    Unexpected,
}

/// The caller writes the whole command batch at once (pipelined), or each command named by
/// `command` just before its reply (lock-step), feeds the replies in order, and writes the
/// message when told to; the result is one outcome per recipient.
pub struct Transaction {
    owed: VecDeque<Owed>,
    chunking: bool,
    lmtp: bool,
    reset: bool,
    /// A peer without PIPELINING: a command goes only when the one before is answered,
    /// so after a refused MAIL, or with no recipient accepted, nothing more is owed.
    lockstep: bool,
    mail_ok: bool,
    accepted: Vec<usize>,
    outcomes: Vec<Option<Outcome>>,
    /// A 421 came: the server is closing, the connection must not be reused.
    pub closing: bool,
    finished: bool,
}

impl Transaction {
    /// `reset`: RSET goes first (a pooled connection). `chunking`: BDAT, so no DATA command.
    pub fn new(rcpts: usize, reset: bool, chunking: bool, lmtp: bool) -> Self {
        let mut owed = VecDeque::with_capacity(rcpts + 3);
        if reset {
            owed.push_back(Owed::Rset);
        }
        owed.push_back(Owed::Mail);
        owed.extend((0..rcpts).map(Owed::Rcpt));
        if !chunking {
            owed.push_back(Owed::Data);
        }
        Transaction {
            owed,
            chunking,
            lmtp,
            reset,
            lockstep: false,
            mail_ok: true,
            accepted: Vec::new(),
            outcomes: vec![None; rcpts],
            closing: false,
            finished: rcpts == 0,
        }
    }

    /// The same for a peer without PIPELINING: the caller writes each command `command`
    /// names, then feeds its reply; none is written whose reply would not matter.
    pub fn lockstep(rcpts: usize, reset: bool, chunking: bool, lmtp: bool) -> Self {
        Transaction { lockstep: true, ..Self::new(rcpts, reset, chunking, lmtp) }
    }

    /// Lock-step: the command to write now (its reply is the next one owed), as its index in
    /// the batch [RSET if reset, MAIL, each RCPT, DATA unless chunking]. None when pipelined
    /// (the whole batch went at once), once done, or when the reply awaited is to no command.
    pub fn command(&self) -> Option<usize> {
        if !self.lockstep || self.finished {
            return None;
        }
        let base = self.reset as usize;
        match self.owed.front()? {
            Owed::Rset => Some(0),
            Owed::Mail => Some(base),
            Owed::Rcpt(k) => Some(base + 1 + k),
            Owed::Data => Some(base + 1 + self.outcomes.len()),
            Owed::EmptyEnd | Owed::End | Owed::LmtpEnd(_) => None,
        }
    }

    /// The command whose reply is awaited, as the client's error texts name it ("" when none is).
    pub fn waiting_for(&self) -> &'static str {
        match self.owed.front() {
            Some(Owed::Rset) => "RSET",
            Some(Owed::Mail) => "MAIL FROM",
            Some(Owed::Rcpt(_)) => "RCPT TO",
            Some(Owed::Data) => "DATA",
            Some(Owed::EmptyEnd | Owed::End | Owed::LmtpEnd(_)) => "the end of data",
            None => "",
        }
    }

    pub fn is_done(&self) -> bool {
        self.finished
    }

    pub fn outcomes(&self) -> &[Option<Outcome>] {
        &self.outcomes
    }

    /// The connection failed: every recipient without an outcome gets 451 4.4.2 `text`.
    pub fn fail(&mut self, text: &str) {
        self.fail_as(451, "4.4.2", text);
    }

    /// The transaction cannot go on (e.g. the message could not be read): every recipient
    /// without an outcome gets this synthetic reply, and nothing more is owed.
    pub fn fail_as(&mut self, code: u16, enhanced: &str, text: &str) {
        let o = Outcome { code, enhanced: Some(enhanced.into()), text: text.into() };
        for slot in self.outcomes.iter_mut().filter(|s| s.is_none()) {
            *slot = Some(o.clone());
        }
        self.owed.clear();
        self.finished = true;
    }

    pub fn on_reply(&mut self, r: &Reply) -> Step {
        if r.code == 421 {
            self.closing = true;
        }
        let Some(owed) = self.owed.pop_front() else {
            return Step::Unexpected;
        };
        let ok = r.code / 100 == 2;
        match owed {
            Owed::Rset => {
                if !ok {
                    self.owed.clear();
                    return Step::Stale;
                }
            }
            Owed::Mail => {
                if !ok {
                    self.mail_ok = false;
                    let o = Outcome::of(r);
                    self.outcomes.iter_mut().for_each(|s| *s = Some(o.clone()));
                    if self.lockstep {
                        self.owed.clear(); // no RCPT or DATA follows a refused MAIL
                    }
                }
            }
            Owed::Rcpt(k) => {
                if self.mail_ok {
                    if ok {
                        self.accepted.push(k);
                    } else {
                        self.outcomes[k] = Some(Outcome::of(r));
                    }
                }
                if self.lockstep && self.accepted.is_empty() && self.owed.front() == Some(&Owed::Data) {
                    self.owed.clear(); // the last RCPT refused too: no DATA for nobody
                }
            }
            Owed::Data => {
                if r.code != 354 {
                    let o = Outcome::of(r);
                    for &k in &self.accepted {
                        self.outcomes[k] = Some(o.clone());
                    }
                    self.accepted.clear();
                } else if self.accepted.is_empty() {
                    self.owed.push_back(Owed::EmptyEnd);
                    return Step::SendEmptyEnd;
                }
            }
            Owed::EmptyEnd => {}
            Owed::End => {
                let o = Outcome::of(r);
                for &k in &self.accepted {
                    self.outcomes[k] = Some(o.clone());
                }
            }
            Owed::LmtpEnd(i) => self.outcomes[self.accepted[i]] = Some(Outcome::of(r)),
        }
        if !self.owed.is_empty() {
            return Step::Wait;
        }
        if matches!(owed, Owed::End | Owed::LmtpEnd(_) | Owed::EmptyEnd) || !self.mail_ok || self.accepted.is_empty() {
            self.finished = true;
            return Step::Done;
        }
        // Every command before the data is answered and someone was accepted.
        debug_assert!(matches!(owed, Owed::Data) || self.chunking);
        if self.lmtp {
            self.owed.extend((0..self.accepted.len()).map(Owed::LmtpEnd));
        } else {
            self.owed.push_back(Owed::End);
        }
        Step::SendData
    }
}

/// Decide on `replies` in order, up to the first that needs the caller (`Wait` when
/// none did): the step and how many replies it used. A reply behind the step is the
/// server speaking out of turn (`Unexpected`), except behind `Done` when `chained`:
/// then it belongs to the transaction pipelined behind this one, which takes the
/// unused rest. `Stale` ignores what follows (nothing was decided).
pub fn decide(tx: &mut Transaction, replies: &[Reply], chained: bool) -> (Step, usize) {
    let mut step = Step::Wait;
    let mut used = 0;
    for r in replies {
        if step != Step::Wait {
            if step == Step::Done && chained {
                break;
            }
            if step != Step::Stale {
                step = Step::Unexpected;
            }
            break;
        }
        used += 1;
        step = if tx.is_done() { Step::Unexpected } else { tx.on_reply(r) };
    }
    (step, used)
}

/// Fuzz/corpus entry: a transaction shape from the first byte, the rest as server bytes
/// fed through a `ReplyParser`, whole and byte by byte.
pub mod harness {
    use super::*;
    use crate::smtp::client::ReplyParser;

    type Run = (Vec<Step>, Vec<Option<Outcome>>, bool);

    fn run(shape: u8, chunks: &[&[u8]]) -> Run {
        let rcpts = (shape & 7) as usize;
        let (reset, chunking, lmtp) = (shape & 8 != 0, shape & 16 != 0, shape & 32 != 0);
        let mut tx = if shape & 64 != 0 {
            Transaction::lockstep(rcpts, reset, chunking, lmtp)
        } else {
            Transaction::new(rcpts, reset, chunking, lmtp)
        };
        let mut p = ReplyParser::new(512);
        let mut steps = Vec::new();
        let mut replies = Vec::new();
        'feed: for c in chunks {
            // Replies completed before garbage still count, as in the Python client.
            let parsed = p.feed(c, &mut replies);
            for r in replies.drain(..) {
                if tx.is_done() {
                    steps.push(Step::Unexpected);
                    break 'feed;
                }
                let s = tx.on_reply(&r);
                steps.push(s);
                if matches!(s, Step::Stale | Step::Unexpected) {
                    break 'feed;
                }
            }
            if parsed.is_err() {
                tx.fail("garbage");
                break;
            }
        }
        if tx.is_done() {
            assert!(tx.outcomes().iter().all(Option::is_some), "done with a recipient undecided");
        }
        (steps, tx.outcomes().to_vec(), tx.is_done())
    }

    /// Steps and outcomes do not depend on how the server's bytes are split.
    pub fn check(data: &[u8]) {
        let Some((&shape, input)) = data.split_first() else { return };
        let whole = run(shape, &[input]);
        let bytewise: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(shape, &bytewise), whole);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decide_keeps_what_follows_done_only_when_chained() {
        use Step::*;
        let r = |c: u16, t: &str| Reply { code: c, lines: vec![t.to_string()] };
        let after_354 = || {
            let mut tx = Transaction::new(1, false, false, false);
            assert_eq!(decide(&mut tx, &[r(250, "Ok"), r(250, "Ok"), r(354, "go")], false), (SendData, 3));
            tx
        };
        let next = [r(250, "2.0.0 queued"), r(250, "2.1.0 Ok"), r(250, "2.1.5 Ok"), r(354, "go")];
        // (chained, replies, step, used)
        let table: Vec<(bool, &[Reply], Step, usize)> = vec![
            (true, &next, Done, 1),        // the other three are the next transaction's
            (false, &next, Unexpected, 1), // nobody owed them: out of sync
            (true, &next[..1], Done, 1),
            (false, &next[..1], Done, 1),
            (true, &[], Wait, 0),
        ];
        for (chained, replies, step, used) in table {
            let mut tx = after_354();
            assert_eq!(decide(&mut tx, replies, chained), (step, used), "chained={chained} {replies:?}");
            assert_eq!(tx.is_done(), used == 1);
        }
        // The next transaction (no RSET) decides on the rest as if it had read them itself.
        let mut tx = Transaction::new(1, false, false, false);
        assert_eq!(decide(&mut tx, &next[1..], false), (SendData, 3));
        // A refused RSET: what follows does not matter.
        let mut tx = Transaction::new(1, true, false, false);
        assert_eq!(decide(&mut tx, &[r(421, "4.4.2 bye"), r(250, "Ok")], true), (Stale, 1));
    }

    fn reply(code: u16, lines: &[&str]) -> Reply {
        Reply { code, lines: lines.iter().map(|s| s.to_string()).collect() }
    }

    fn out(code: u16, enh: Option<&str>, text: &str) -> Option<Outcome> {
        Some(Outcome { code, enhanced: enh.map(Into::into), text: text.into() })
    }

    /// (rcpts, reset, chunking, lmtp, replies, steps, outcomes)
    #[allow(clippy::type_complexity)]
    fn cases() -> Vec<(usize, bool, bool, bool, Vec<Reply>, Vec<Step>, Vec<Option<Outcome>>)> {
        use Step::*;
        let ok = |e: &str| reply(250, &[&format!("{e} Ok")]);
        vec![
            // RSET, MAIL, two RCPT, DATA, end: both delivered.
            (2, true, false, false,
             vec![ok("2.0.0"), ok("2.1.0"), ok("2.1.5"), ok("2.1.5"), reply(354, &["go"]), reply(250, &["2.0.0 queued as X"])],
             vec![Wait, Wait, Wait, Wait, SendData, Done],
             vec![out(250, Some("2.0.0"), "queued as X"), out(250, Some("2.0.0"), "queued as X")]),
            // One RCPT refused: the data reply applies to the accepted one only.
            (2, false, false, false,
             vec![ok("2.1.0"), reply(550, &["5.1.1 no such user"]), ok("2.1.5"), reply(354, &["go"]), reply(451, &["4.3.0 try later"])],
             vec![Wait, Wait, Wait, SendData, Done],
             vec![out(550, Some("5.1.1"), "no such user"), out(451, Some("4.3.0"), "try later")]),
            // MAIL refused: every recipient gets its reply; the rest are read and ignored.
            (1, false, false, false,
             vec![reply(553, &["5.1.8 bad sender"]), reply(503, &["5.5.1 need MAIL"]), reply(503, &["5.5.1 need RCPT"])],
             vec![Wait, Wait, Done],
             vec![out(553, Some("5.1.8"), "bad sender")]),
            // Every RCPT refused, yet 354: an empty data phase ends it.
            (1, false, false, false,
             vec![ok("2.1.0"), reply(450, &["4.2.0 busy"]), reply(354, &["go"]), reply(250, &["ok"])],
             vec![Wait, Wait, SendEmptyEnd, Done],
             vec![out(450, Some("4.2.0"), "busy")]),
            // DATA refused: the accepted recipients get its reply.
            (1, false, false, false,
             vec![ok("2.1.0"), ok("2.1.5"), reply(554, &["5.5.1 no valid recipients"])],
             vec![Wait, Wait, Done],
             vec![out(554, Some("5.5.1"), "no valid recipients")]),
            // RSET refused: stale, nothing decided.
            (1, true, false, false, vec![reply(421, &["4.4.2 idle too long"])], vec![Stale], vec![None]),
            // CHUNKING: the data goes after the last RCPT reply.
            (1, true, true, false,
             vec![ok("2.0.0"), ok("2.1.0"), ok("2.1.5"), reply(250, &["2.0.0 Ok: 5 octets"])],
             vec![Wait, Wait, SendData, Done],
             vec![out(250, Some("2.0.0"), "Ok: 5 octets")]),
            // LMTP: one end-of-data reply per accepted recipient, in order.
            (3, false, false, true,
             vec![ok("2.1.0"), ok("2.1.5"), reply(550, &["5.1.1 unknown"]), ok("2.1.5"), reply(354, &["go"]),
                  reply(250, &["2.0.0 a done"]), reply(452, &["4.2.2 c over quota"])],
             vec![Wait, Wait, Wait, Wait, SendData, Wait, Done],
             vec![out(250, Some("2.0.0"), "a done"), out(550, Some("5.1.1"), "unknown"), out(452, Some("4.2.2"), "c over quota")]),
            // Multi-line text; a code of another class is not an enhanced code.
            (1, false, false, false,
             vec![ok("2.1.0"), ok("2.1.5"), reply(354, &["go"]), reply(250, &["5.0.0 odd", "2.0.0", "second line"])],
             vec![Wait, Wait, SendData, Done],
             vec![out(250, None, "5.0.0 odd 2.0.0 second line")]),
            // A reply nobody asked for.
            (1, false, false, false,
             vec![ok("2.1.0"), ok("2.1.5"), reply(354, &["go"]), ok("2.0.0"), ok("2.0.0")],
             vec![Wait, Wait, SendData, Done, Unexpected],
             vec![out(250, Some("2.0.0"), "Ok")]),
        ]
    }

    #[test]
    fn table() {
        for (i, (n, reset, chunking, lmtp, replies, steps, outcomes)) in cases().into_iter().enumerate() {
            let mut tx = Transaction::new(n, reset, chunking, lmtp);
            let got: Vec<Step> = replies.iter().map(|r| { assert_eq!(tx.command(), None); tx.on_reply(r) }).collect();
            assert_eq!(got, steps, "case {i}");
            assert_eq!(tx.outcomes(), &outcomes[..], "case {i}");
        }
    }

    /// Feed `replies` to a lock-step transaction: the steps, and the command it said to
    /// write before each reply.
    fn lockstep_run(tx: &mut Transaction, replies: &[Reply]) -> (Vec<Step>, Vec<Option<usize>>) {
        replies.iter().map(|r| (tx.command(), tx.on_reply(r))).map(|(c, s)| (s, c)).unzip()
    }

    /// Every pipelined case in lock-step: the same steps and outcomes, except where a
    /// lock-step client writes less (nothing after a refused MAIL; no DATA when no
    /// recipient was accepted), so its peer answers less. The commands written are the
    /// batch's, in order, each just before its reply; none for the end of data.
    #[test]
    fn table_lockstep() {
        use Step::*;
        let ok = |e: &str| reply(250, &[&format!("{e} Ok")]);
        // case index -> (replies, steps) of a lock-step peer
        let differs: Vec<(usize, Vec<Reply>, Vec<Step>)> = vec![
            (2, vec![reply(553, &["5.1.8 bad sender"])], vec![Done]),
            (3, vec![ok("2.1.0"), reply(450, &["4.2.0 busy"])], vec![Wait, Done]),
        ];
        for (i, (n, reset, chunking, lmtp, mut replies, mut steps, outcomes)) in cases().into_iter().enumerate() {
            if let Some((_, r, s)) = differs.iter().find(|d| d.0 == i) {
                (replies, steps) = (r.clone(), s.clone());
            }
            let mut tx = Transaction::lockstep(n, reset, chunking, lmtp);
            let (got, commands) = lockstep_run(&mut tx, &replies);
            assert_eq!(got, steps, "case {i}");
            assert_eq!(tx.outcomes(), &outcomes[..], "case {i}");
            let written: Vec<usize> = commands.iter().map_while(|c| *c).collect();
            assert_eq!(written, (0..written.len()).collect::<Vec<_>>(), "case {i}: the batch in order");
            assert!(commands[written.len()..].iter().all(Option::is_none), "case {i}: {commands:?}");
        }
    }

    /// Lock-step only: (rcpts, reset, chunking, lmtp, replies, steps, commands, outcomes).
    #[allow(clippy::type_complexity)]
    fn lockstep_cases() -> Vec<(usize, bool, bool, bool, Vec<Reply>, Vec<Step>, Vec<Option<usize>>, Vec<Option<Outcome>>)> {
        use Step::*;
        let ok = |e: &str| reply(250, &[&format!("{e} Ok")]);
        vec![
            // RSET, then MAIL refused: no RCPT is written.
            (2, true, false, false, vec![ok("2.0.0"), reply(553, &["5.1.8 bad sender"])],
             vec![Wait, Done], vec![Some(0), Some(1)],
             vec![out(553, Some("5.1.8"), "bad sender"), out(553, Some("5.1.8"), "bad sender")]),
            // CHUNKING, every RCPT refused: every RCPT is written, then nothing.
            (2, false, true, false, vec![ok("2.1.0"), reply(550, &["5.1.1 no"]), reply(451, &["4.3.0 later"])],
             vec![Wait, Wait, Done], vec![Some(0), Some(1), Some(2)],
             vec![out(550, Some("5.1.1"), "no"), out(451, Some("4.3.0"), "later")]),
            // A refused RCPT before an accepted one: DATA is still written.
            (2, false, false, false,
             vec![ok("2.1.0"), reply(550, &["5.1.1 no"]), ok("2.1.5"), reply(354, &["go"]), reply(250, &["2.0.0 queued"])],
             vec![Wait, Wait, Wait, SendData, Done], vec![Some(0), Some(1), Some(2), Some(3), None],
             vec![out(550, Some("5.1.1"), "no"), out(250, Some("2.0.0"), "queued")]),
            // LMTP with CHUNKING after RSET: BDAT after the last RCPT, a reply per accepted one.
            (2, true, true, true,
             vec![ok("2.0.0"), ok("2.1.0"), ok("2.1.5"), ok("2.1.5"), reply(250, &["2.0.0 a done"]),
                  reply(452, &["4.2.2 b over quota"])],
             vec![Wait, Wait, Wait, SendData, Wait, Done], vec![Some(0), Some(1), Some(2), Some(3), None, None],
             vec![out(250, Some("2.0.0"), "a done"), out(452, Some("4.2.2"), "b over quota")]),
            // A 421 to MAIL: decided, and a reply after that was owed nothing.
            (1, false, false, false, vec![reply(421, &["4.3.2 shutting down"]), reply(503, &["5.5.1 what"])],
             vec![Done, Unexpected], vec![Some(0), None],
             vec![out(421, Some("4.3.2"), "shutting down")]),
            // DATA refused in lock-step.
            (1, true, false, false, vec![ok("2.0.0"), ok("2.1.0"), ok("2.1.5"), reply(554, &["5.5.1 no"])],
             vec![Wait, Wait, Wait, Done], vec![Some(0), Some(1), Some(2), Some(3)],
             vec![out(554, Some("5.5.1"), "no")]),
        ]
    }

    #[test]
    fn table_lockstep_only() {
        for (i, (n, reset, chunking, lmtp, replies, steps, commands, outcomes)) in lockstep_cases().into_iter().enumerate() {
            let mut tx = Transaction::lockstep(n, reset, chunking, lmtp);
            assert_eq!(lockstep_run(&mut tx, &replies), (steps, commands), "case {i}");
            assert_eq!(tx.outcomes(), &outcomes[..], "case {i}");
            assert_eq!(tx.command(), None, "case {i}: nothing more to write");
        }
        assert!(Transaction::lockstep(0, true, false, false).is_done());
        assert_eq!(Transaction::lockstep(0, true, false, false).command(), None);
    }

    #[test]
    fn fail_as_fills_only_the_undecided() {
        let mut tx = Transaction::lockstep(2, false, false, false);
        for r in [reply(250, &["ok"]), reply(550, &["5.1.1 no"]), reply(250, &["ok"])] {
            tx.on_reply(&r);
        }
        assert_eq!(tx.on_reply(&reply(354, &["go"])), Step::SendData);
        tx.fail_as(451, "4.3.0", "cannot read the message from the spool");
        assert!(tx.is_done());
        assert_eq!(tx.outcomes(), &[out(550, Some("5.1.1"), "no"),
                                    out(451, Some("4.3.0"), "cannot read the message from the spool")]);
    }

    #[test]
    fn waiting_for_names_each_command_and_fail_fills_the_rest() {
        let mut tx = Transaction::new(2, true, false, false);
        let mut seen = vec![tx.waiting_for()];
        for r in [reply(250, &["ok"]), reply(250, &["ok"]), reply(250, &["ok"]), reply(550, &["no"])] {
            tx.on_reply(&r);
            seen.push(tx.waiting_for());
        }
        assert_eq!(seen, ["RSET", "MAIL FROM", "RCPT TO", "RCPT TO", "DATA"]);
        assert_eq!(tx.on_reply(&reply(354, &["go"])), Step::SendData);
        assert_eq!(tx.waiting_for(), "the end of data");
        assert!(!tx.is_done());
        tx.fail("mx: connection lost");
        assert!(tx.is_done());
        assert_eq!(tx.outcomes()[0], out(451, Some("4.4.2"), "mx: connection lost"));
        assert_eq!(tx.outcomes()[1], out(550, None, "no"));
    }

    #[test]
    fn a_421_marks_the_connection_closing() {
        let mut tx = Transaction::new(1, false, false, false);
        assert_eq!(tx.on_reply(&reply(421, &["4.3.2 shutting down"])), Step::Wait);
        assert!(tx.closing);
        assert_eq!(tx.outcomes()[0], out(421, Some("4.3.2"), "shutting down"));
    }

    #[test]
    fn no_recipients_is_done_at_once() {
        assert!(Transaction::new(0, true, false, false).is_done());
    }

    #[test]
    fn corpus_replays_split_independent() {
        for data in crate::corpus::files("client") {
            for shape in [0u8, 1, 2, 9, 17, 33, 43, 63, 65, 74, 82, 107, 127] {
                let mut d = data.clone();
                if !d.is_empty() {
                    d[0] = shape;
                }
                harness::check(&d);
            }
        }
    }
}
