//! What the index needs of a MESSAGE or STATE record, read without allocating: a restart
//! replays millions of them. Invariant: a meta these accept is one `record::decode_envelope`
//! / `decode_state` accepts, and they refuse what those refuse (same checks, strings
//! checked as UTF-8 but not copied).
use super::entry::rdue_of;
use super::record::{FormatError, R, STATES};

/// A MESSAGE record's envelope, as the index keeps it.
pub struct MessageBrief<'a> {
    pub queue_id: &'a str,
    pub arrival_us: u64,
    pub nrcpt: u32,
    /// Earliest due time of its recipients, hold aside (entry::NEVER: none waiting).
    pub rdue: u64,
    pub held: bool,
    pub delay_warned: bool,
}

/// A STATE record, as the index keeps it; `snapshot`: its changes are every recipient in
/// order (`entry::is_snapshot` for `nrcpt` of them), `rdue` then their earliest due time.
pub struct StateBrief<'a> {
    pub queue_id: &'a str,
    pub hold: Option<bool>,
    pub delay_warned: bool,
    pub changes: u64,
    pub in_order: bool,
    pub rdue: u64,
}

fn ferr<T>(s: &str) -> Result<T, FormatError> {
    Err(FormatError(s.into()))
}

fn str_<'a>(r: &mut R<'a>) -> Result<&'a str, FormatError> {
    let n = r.varint()?;
    let (data, at) = (r.0, r.1);
    r.bytes(n)?;
    std::str::from_utf8(&data[at..r.1]).map_err(|_| FormatError("string not UTF-8".into()))
}

fn opt(r: &mut R<'_>) -> Result<(), FormatError> {
    match r.varint()? {
        0 => Ok(()),
        n => {
            let b = r.bytes(n - 1)?;
            std::str::from_utf8(b).map(|_| ()).map_err(|_| FormatError("string not UTF-8".into()))
        }
    }
}

fn state(r: &mut R<'_>) -> Result<u8, FormatError> {
    let s = r.u8()?;
    if s as usize >= STATES.len() {
        return ferr("bad recipient state");
    }
    Ok(s)
}

fn attempts(r: &mut R<'_>) -> Result<(), FormatError> {
    u32::try_from(r.varint()?).map(|_| ()).map_err(|_| FormatError("attempts overflow".into()))
}

pub fn message(b: &[u8]) -> Result<MessageBrief<'_>, FormatError> {
    let mut r = R(b, 0);
    let v = r.version(1)?;
    let queue_id = str_(&mut r)?;
    let arrival_us = r.varint()?;
    r.u8()?; // smtputf8
    str_(&mut r)?; // sender
    for _ in 0..3 {
        opt(&mut r)?; // body, ret, envid
    }
    str_(&mut r)?; // helo
    str_(&mut r)?; // client_ip
    let n = r.varint()?;
    let mut rdue = super::entry::NEVER;
    for _ in 0..n {
        str_(&mut r)?; // address
        r.u8()?; // notify
        opt(&mut r)?; // orcpt
        let st = state(&mut r)?;
        let mut next = None;
        if v >= 2 {
            attempts(&mut r)?;
            next = r.varint()?.checked_sub(1);
            opt(&mut r)?; // last_reply
        }
        if v >= 3 {
            opt(&mut r)?; // route
        }
        rdue = rdue.min(rdue_of(std::iter::once((st, next))));
    }
    let (mut held, mut delay_warned) = (false, false);
    if v >= 2 {
        let f = r.u8()?;
        held = f & 1 != 0;
        delay_warned = f & 2 != 0;
    }
    if v >= 3 {
        opt(&mut r)?; // notes
    }
    r.done()?;
    let nrcpt = u32::try_from(n).map_err(|_| FormatError("too many recipients".into()))?;
    Ok(MessageBrief { queue_id, arrival_us, nrcpt, rdue, held, delay_warned })
}

pub fn state_record(b: &[u8]) -> Result<StateBrief<'_>, FormatError> {
    let mut r = R(b, 0);
    let v = r.version(2)?;
    let queue_id = str_(&mut r)?;
    r.varint()?; // time
    let hb = r.u8()?;
    let hold = match hb & !super::record::DELAY_WARNED_BIT {
        0 => None,
        1 => Some(true),
        2 => Some(false),
        _ => return ferr("bad hold byte"),
    };
    let delay_warned = hb & super::record::DELAY_WARNED_BIT != 0;
    let n = r.varint()?;
    let (mut in_order, mut rdue) = (true, super::entry::NEVER);
    for i in 0..n {
        let index = u32::try_from(r.varint()?).map_err(|_| FormatError("index overflow".into()))?;
        in_order &= index as u64 == i;
        let st = state(&mut r)?;
        attempts(&mut r)?;
        let next = r.varint()?.checked_sub(1);
        opt(&mut r)?; // last_reply
        if v >= 3 {
            opt(&mut r)?; // route
        }
        rdue = rdue.min(rdue_of(std::iter::once((st, next))));
    }
    r.done()?;
    Ok(StateBrief { queue_id, hold, delay_warned, changes: n, in_order, rdue })
}
