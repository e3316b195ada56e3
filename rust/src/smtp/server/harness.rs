//! Test and fuzz support: drive a parser the way a simple session would (accept every
//! DATA, accept BDAT chunks, every third DATA refused). Invariant: the transcript is the
//! same for every split of the input, or `check` panics.
#![doc(hidden)]

use super::{BareLf, Command, Config, Discard, Event, Parser};

#[derive(Debug, PartialEq, Eq, Default)]
pub struct Transcript {
    pub events: Vec<Event>,
    pub messages: Vec<Vec<u8>>,
}

/// Feed `chunks` in order; react to pauses deterministically (by event count).
pub fn drive(cfg: &Config, chunks: &[&[u8]]) -> Transcript {
    drive_with(cfg, chunks, false)
}

/// `auth`: pause after AUTH; an AUTH without initial response takes raw lines
/// until "*", or one line for PLAIN, two otherwise (LOGIN), then commands resume.
pub fn drive_with(cfg: &Config, chunks: &[&[u8]], auth: bool) -> Transcript {
    let mut p = Parser::new(cfg.clone());
    p.set_auth_pause(auth);
    let mut t = Transcript::default();
    let mut cur: Vec<u8> = Vec::new();
    let mut st = State { auth, ..State::default() };
    for c in chunks {
        let mut evs = Vec::new();
        if p.in_data() {
            p.feed(c, &mut cur, &mut evs);
        } else {
            p.feed(c, &mut Discard, &mut evs);
        }
        react(&mut p, &mut t, &mut cur, &mut evs, &mut st);
        assert!(p.in_data() || p.is_paused() || p.buffered() < cfg.max_line);
    }
    if !cur.is_empty() || st.bdat_open {
        t.messages.push(std::mem::take(&mut cur));
    }
    t
}

#[derive(Default)]
struct State {
    datas: usize,
    bdat_open: bool,
    auth_lines: usize,
    auth_want: usize,
    auth: bool,
}

fn react(p: &mut Parser, t: &mut Transcript, cur: &mut Vec<u8>, evs: &mut Vec<Event>, st: &mut State) {
    let State { datas, bdat_open, auth_lines, auth_want, auth } = st;
    while !evs.is_empty() {
        let batch = std::mem::take(evs);
        for e in batch {
            if *auth {
                match &e {
                    Event::Command(Command::Auth(arg)) => {
                        *auth_lines = 0;
                        *auth_want = if arg.eq_ignore_ascii_case("PLAIN") { 1 } else { 2 };
                        if arg.is_empty() || !arg.contains(' ') {
                            p.take_line(evs).unwrap();
                        } else {
                            p.resume(evs).unwrap();
                        }
                    }
                    Event::Line(l) => {
                        *auth_lines += 1;
                        if l.as_slice() == b"*" || *auth_lines >= *auth_want {
                            p.resume(evs).unwrap();
                        } else {
                            p.take_line(evs).unwrap();
                        }
                    }
                    _ => {}
                }
                if matches!(e, Event::Command(Command::Auth(_)) | Event::Line(_)) {
                    t.events.push(e);
                    continue;
                }
            }
            let pausing = matches!(e, Event::Command(Command::Data | Command::Bdat { .. }));
            let cmd = match &e {
                Event::Command(c) => Some(c.clone()),
                _ => None,
            };
            if let Event::DataEnd(_) | Event::BdatEnd { last: true, .. } = e {
                t.messages.push(std::mem::take(cur));
                *bdat_open = false;
            }
            t.events.push(e);
            if !pausing {
                continue;
            }
            match cmd {
                Some(Command::Data) => {
                    *datas += 1;
                    if *datas % 3 == 0 {
                        p.resume(evs).unwrap();
                    } else {
                        if *bdat_open {
                            t.messages.push(std::mem::take(cur));
                            *bdat_open = false;
                        }
                        p.start_data(cur, evs).unwrap();
                    }
                }
                Some(Command::Bdat { .. }) => {
                    let new = !*bdat_open;
                    *bdat_open = true;
                    p.start_bdat(new, cur, evs).unwrap();
                }
                _ => unreachable!(),
            }
        }
    }
}

/// Fuzz/corpus entry: byte 0 picks the policy and line limit, bytes 1..3 seed the
/// split points, the rest is the client stream. Panics if any split changes the result.
pub fn check(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let cfg = Config {
        max_line: [512, 16, 8, 1000][(data[0] & 3) as usize],
        max_message_size: [52_428_800, 10, 64, 0][((data[0] >> 2) & 3) as usize],
        bare_lf: if data[0] & 16 == 0 { BareLf::Reject } else { BareLf::Normalize },
    };
    let auth = data[0] & 32 != 0;
    let drive = |cfg: &Config, chunks: &[&[u8]]| drive_with(cfg, chunks, auth);
    let stream = &data[3..];
    let whole = drive(&cfg, &[stream]);
    let mut seed = u64::from(data[1]) << 8 | u64::from(data[2]) | 1;
    let mut cuts = Vec::new();
    for _ in 0..(data[1] % 8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        cuts.push((seed % (stream.len() as u64 + 1)) as usize);
    }
    assert_eq!(drive(&cfg, &split(stream, &cuts)), whole, "cuts {cuts:?}");
    if data[2] & 1 == 1 {
        let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(drive(&cfg, &bytewise), whole, "byte by byte");
    }
}

/// Split `input` at the given cut points (sorted, deduplicated, clamped).
pub fn split<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cs: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    cs.sort_unstable();
    cs.dedup();
    let mut out = Vec::new();
    let mut prev = 0;
    for c in cs {
        out.push(&input[prev..c]);
        prev = c;
    }
    out.push(&input[prev..]);
    out
}
