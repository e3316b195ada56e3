//! Sans-IO parser of the HAProxy PROXY protocol header, v1 (text) and v2 (binary). Invariants:
//! the result (even the byte that decides an error) does not depend on the split; at most 107
//! (v1) or 16 + 65535 (v2) bytes are buffered; bytes after the header are kept for the caller.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest v1 line, "PROXY" through CR LF (the spec's 107).
pub const V1_MAX: usize = 107;
/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
pub const V2_SIG: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];
const V1_SIG: &[u8] = b"PROXY ";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addresses {
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("PROXY v1 line longer than 107 bytes")]
    TooLong,
    #[error("PROXY v1 line holds a byte that is not printable ASCII")]
    BadByte,
    #[error("PROXY v1 line: {0}")]
    BadLine(&'static str),
    #[error("PROXY v2: unsupported version")]
    BadVersion,
    #[error("PROXY v2: unknown command")]
    BadCommand,
    #[error("PROXY v2: unsupported address family or protocol")]
    BadFamily,
    #[error("PROXY v2: address block shorter than its family needs")]
    ShortAddresses,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// More bytes are needed to decide.
    NeedMore,
    /// A PROXY header naming the client (src) and the address it connected to (dst).
    Header(Addresses),
    /// v2 LOCAL, v2 UNSPEC or v1 UNKNOWN: use the real connection's endpoints.
    Local,
    Error(ProxyError),
}

/// Decide on `buf` alone: `Ok(None)` = need more, `Ok(Some((outcome, consumed)))`, or the error.
/// Pure, and monotone in `buf`: a prefix either needs more or gives the same answer.
pub fn parse(buf: &[u8]) -> Result<Option<(Outcome, usize)>, ProxyError> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(buf),
        Some(0x0D) => parse_v2(buf),
        Some(_) => Err(ProxyError::NotProxy),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Outcome, usize)>, ProxyError> {
    // Scan left to right; the first undecidable-or-bad byte decides, whatever the split.
    for (i, &b) in buf.iter().enumerate() {
        if i < V1_SIG.len() {
            if b != V1_SIG[i] {
                return Err(ProxyError::NotProxy);
            }
            continue;
        }
        if i >= V1_MAX {
            return Err(ProxyError::TooLong);
        }
        match b {
            // The LF must still fit in the 107 bytes.
            b'\r' if i + 1 >= V1_MAX => return Err(ProxyError::TooLong),
            b'\r' => match buf.get(i + 1) {
                None => return Ok(None),
                Some(b'\n') => {
                    let line = &buf[V1_SIG.len()..i];
                    return v1_fields(line).map(|o| Some((o, i + 2)));
                }
                Some(_) => return Err(ProxyError::BadByte),
            },
            0x20..=0x7E => {}
            _ => return Err(ProxyError::BadByte),
        }
    }
    Ok(None)
}

fn v1_fields(line: &[u8]) -> Result<Outcome, ProxyError> {
    // Printable ASCII only (checked by the caller), so this is valid UTF-8.
    let line = std::str::from_utf8(line).map_err(|_| ProxyError::BadByte)?;
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        return Ok(Outcome::Local); // the rest of the line is ignored, as the spec says
    }
    let parts: Vec<&str> = line.split(' ').collect();
    if parts.len() != 5 {
        return Err(ProxyError::BadLine("expected PROTO SRC DST SPORT DPORT, single spaces"));
    }
    let (src, dst): (IpAddr, IpAddr) = match parts[0] {
        "TCP4" => (
            parts[1].parse::<Ipv4Addr>().map_err(|_| ProxyError::BadLine("bad IPv4 source"))?.into(),
            parts[2].parse::<Ipv4Addr>().map_err(|_| ProxyError::BadLine("bad IPv4 destination"))?.into(),
        ),
        "TCP6" => (
            v6(parts[1]).ok_or(ProxyError::BadLine("bad IPv6 source"))?.into(),
            v6(parts[2]).ok_or(ProxyError::BadLine("bad IPv6 destination"))?.into(),
        ),
        _ => return Err(ProxyError::BadLine("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let src_port = port(parts[3]).ok_or(ProxyError::BadLine("bad source port"))?;
    let dst_port = port(parts[4]).ok_or(ProxyError::BadLine("bad destination port"))?;
    Ok(Outcome::Header(Addresses { src, src_port, dst, dst_port }))
}

fn v6(s: &str) -> Option<Ipv6Addr> {
    // No zone ids, no brackets: the plain textual form only.
    if s.contains(['%', '[', ']']) {
        return None;
    }
    s.parse().ok()
}

/// 0..65535 in decimal, no sign, no leading zeros (except "0" itself).
fn port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Outcome, usize)>, ProxyError> {
    let sig = buf.len().min(V2_SIG.len());
    if buf[..sig] != V2_SIG[..sig] {
        return Err(ProxyError::NotProxy);
    }
    if buf.len() < 13 {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::BadVersion);
    }
    let command = ver_cmd & 0x0F;
    if command > 1 {
        return Err(ProxyError::BadCommand);
    }
    if buf.len() < 14 {
        return Ok(None);
    }
    let fam = buf[13];
    let (family, proto) = (fam >> 4, fam & 0x0F);
    // Checked before the body arrives only for PROXY; LOCAL ignores the family.
    if command == 1 && family != 0 && !(matches!(family, 1 | 2) && proto == 1) {
        return Err(ProxyError::BadFamily);
    }
    if buf.len() < 16 {
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let need = match (command, family) {
        (1, 1) => 12,
        (1, 2) => 36,
        _ => 0,
    };
    if len < need {
        return Err(ProxyError::ShortAddresses);
    }
    let total = 16 + len;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[16..total]; // addresses, then TLVs (skipped)
    let outcome = match (command, family) {
        (1, 1) => {
            let ip = |o: usize| IpAddr::from(<[u8; 4]>::try_from(&body[o..o + 4]).unwrap());
            Outcome::Header(Addresses {
                src: ip(0),
                dst: ip(4),
                src_port: u16::from_be_bytes([body[8], body[9]]),
                dst_port: u16::from_be_bytes([body[10], body[11]]),
            })
        }
        (1, 2) => {
            let ip = |o: usize| IpAddr::from(<[u8; 16]>::try_from(&body[o..o + 16]).unwrap());
            Outcome::Header(Addresses {
                src: ip(0),
                dst: ip(16),
                src_port: u16::from_be_bytes([body[32], body[33]]),
                dst_port: u16::from_be_bytes([body[34], body[35]]),
            })
        }
        _ => Outcome::Local,
    };
    Ok(Some((outcome, total)))
}

/// Incremental wrapper: feed bytes until the outcome is decided; then `rest()` holds the
/// bytes that followed the header. Once decided, the outcome never changes.
#[derive(Default)]
pub struct ProxyParser {
    buf: Vec<u8>,
    done: Option<(Outcome, usize)>,
}

impl ProxyParser {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn feed(&mut self, data: &[u8]) -> Outcome {
        if let Some((o, _)) = &self.done {
            self.buf.extend_from_slice(data);
            return o.clone();
        }
        self.buf.extend_from_slice(data);
        match parse(&self.buf) {
            Ok(None) => Outcome::NeedMore,
            Ok(Some((o, used))) => {
                self.done = Some((o.clone(), used));
                o
            }
            Err(e) => {
                let o = Outcome::Error(e);
                self.done = Some((o.clone(), self.buf.len()));
                o
            }
        }
    }

    /// Bytes received after the header (empty until decided, and after an error).
    pub fn rest(&self) -> &[u8] {
        match &self.done {
            Some((Outcome::Error(_), _)) | None => &[],
            Some((_, used)) => &self.buf[*used..],
        }
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// Fuzz and property harness: the outcome and the rest must not depend on the split.
pub mod harness {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (Outcome, Vec<u8>) {
        let mut p = ProxyParser::new();
        let mut last = Outcome::NeedMore;
        for c in chunks {
            last = p.feed(c);
            assert!(p.buffered() <= 16 + 65535 + c.len());
        }
        (last, p.rest().to_vec())
    }

    /// Byte 0-1: split seed; the rest: the client's bytes.
    pub fn check(data: &[u8]) {
        if data.len() < 2 {
            return;
        }
        let (seed, input) = (u16::from_le_bytes([data[0], data[1]]) as usize, &data[2..]);
        let whole = run(&[input]);
        let bytewise: Vec<&[u8]> = input.chunks(1).collect();
        let by_byte = run(&bytewise);
        if !input.is_empty() {
            assert_eq!(whole, by_byte);
        }
        let cut = seed % (input.len() + 1);
        let two = run(&[&input[..cut], &input[cut..]]);
        assert_eq!(whole, two);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> IpAddr {
        IpAddr::from(a)
    }

    fn hdr(src: &str, sp: u16, dst: &str, dp: u16) -> Outcome {
        Outcome::Header(Addresses { src: src.parse().unwrap(), src_port: sp, dst: dst.parse().unwrap(), dst_port: dp })
    }

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut v = V2_SIG.to_vec();
        v.push(0x20 | cmd);
        v.push(fam);
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn v2_inet(tlv: &[u8]) -> Vec<u8> {
        let mut b = vec![192, 0, 2, 1, 198, 51, 100, 7];
        b.extend_from_slice(&40000u16.to_be_bytes());
        b.extend_from_slice(&25u16.to_be_bytes());
        b.extend_from_slice(tlv);
        v2(1, 0x11, &b)
    }

    fn v2_inet6() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&"2001:db8::25".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&1234u16.to_be_bytes());
        b.extend_from_slice(&587u16.to_be_bytes());
        v2(1, 0x21, &b)
    }

    /// (input, expected outcome, expected consumed length) — every valid form.
    fn valid() -> Vec<(Vec<u8>, Outcome, usize)> {
        let mut out = vec![];
        let mut add = |input: Vec<u8>, o: Outcome| {
            let n = input.len();
            out.push((input, o, n));
        };
        add(b"PROXY TCP4 192.0.2.1 198.51.100.7 40000 25\r\n".to_vec(), hdr("192.0.2.1", 40000, "198.51.100.7", 25));
        add(b"PROXY TCP6 2001:db8::1 2001:db8::25 1234 587\r\n".to_vec(), hdr("2001:db8::1", 1234, "2001:db8::25", 587));
        add(b"PROXY TCP6 ::ffff:192.0.2.1 ::1 0 65535\r\n".to_vec(), hdr("::ffff:192.0.2.1", 0, "::1", 65535));
        add(b"PROXY UNKNOWN\r\n".to_vec(), Outcome::Local);
        add(b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n".to_vec(), Outcome::Local);
        // The longest v1 line: TCP6 with full-width addresses, exactly 104 + CRLF... padded to 107.
        let long = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert!(long.len() <= V1_MAX);
        add(long.as_bytes().to_vec(), hdr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535));
        add(v2_inet(&[]), hdr("192.0.2.1", 40000, "198.51.100.7", 25));
        // TLVs (ALPN "smtp", a NOOP) inside the declared length are skipped.
        add(v2_inet(&[0x01, 0x00, 0x04, b's', b'm', b't', b'p', 0x04, 0x00, 0x00]), hdr("192.0.2.1", 40000, "198.51.100.7", 25));
        add(v2_inet6(), hdr("2001:db8::1", 1234, "2001:db8::25", 587));
        add(v2(0, 0x00, &[]), Outcome::Local); // LOCAL (health check)
        add(v2(0, 0x11, &[1, 2, 3]), Outcome::Local); // LOCAL ignores family and body
        add(v2(1, 0x00, &[9, 9]), Outcome::Local); // PROXY UNSPEC: use the real endpoints
        out
    }

    fn errors() -> Vec<(Vec<u8>, ProxyError)> {
        use ProxyError::*;
        let mut v: Vec<(Vec<u8>, ProxyError)> = vec![
            (b"EHLO x\r\n".to_vec(), NotProxy),
            (b"PROXX TCP4".to_vec(), NotProxy),
            (b"proxy TCP4".to_vec(), NotProxy),
            (b"PROXY TCP4 192.0.2.1 198.51.100.7 40000 25\n".to_vec(), BadByte),
            (b"PROXY TCP4 192.0.2.1 198.51.100.7 40000 25\rX".to_vec(), BadByte),
            (b"PROXY TCP4 192.0.2.1\x00".to_vec(), BadByte),
            (b"PROXY TCP4 192.0.2.1 198.51.100.7 40000\r\n".to_vec(), BadLine("expected PROTO SRC DST SPORT DPORT, single spaces")),
            (b"PROXY TCP4 192.0.2.1  198.51.100.7 40000 25\r\n".to_vec(), BadLine("expected PROTO SRC DST SPORT DPORT, single spaces")),
            (b"PROXY TCP4 2001:db8::1 198.51.100.7 40000 25\r\n".to_vec(), BadLine("bad IPv4 source")),
            (b"PROXY TCP4 192.0.2.1 198.51.100.256 40000 25\r\n".to_vec(), BadLine("bad IPv4 destination")),
            (b"PROXY TCP6 192.0.2.1 ::1 1 2\r\n".to_vec(), BadLine("bad IPv6 source")),
            (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n".to_vec(), BadLine("bad IPv6 source")),
            (b"PROXY TCP4 192.0.2.1 198.51.100.7 65536 25\r\n".to_vec(), BadLine("bad source port")),
            (b"PROXY TCP4 192.0.2.1 198.51.100.7 025 25\r\n".to_vec(), BadLine("bad source port")),
            (b"PROXY TCP4 192.0.2.1 198.51.100.7 1 -2\r\n".to_vec(), BadLine("bad destination port")),
            (b"PROXY UDP4 192.0.2.1 198.51.100.7 1 2\r\n".to_vec(), BadLine("protocol is not TCP4, TCP6 or UNKNOWN")),
            (b"PROXY \r\n".to_vec(), BadLine("expected PROTO SRC DST SPORT DPORT, single spaces")),
            (v2(2, 0x11, &[]), BadCommand),
            (v2(1, 0x31, &[0; 216]), BadFamily), // AF_UNIX
            (v2(1, 0x12, &[0; 12]), BadFamily), // DGRAM
            (v2(1, 0x11, &[0; 11]), ShortAddresses),
            (v2(1, 0x21, &[0; 35]), ShortAddresses),
            (b"\r\n\r\n\x00\r\nQUIX".to_vec(), NotProxy),
        ];
        let mut bad_ver = v2(1, 0x11, &[0; 12]);
        bad_ver[12] = 0x11;
        v.push((bad_ver, BadVersion));
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(200, b'x');
        v.push((long, TooLong));
        v
    }

    #[test]
    fn valid_forms_whole_and_every_split() {
        for (input, want, used) in valid() {
            let mut p = ProxyParser::new();
            assert_eq!(p.feed(&input), want, "{:?}", String::from_utf8_lossy(&input));
            assert!(p.rest().is_empty());
            assert_eq!(parse(&input).unwrap().unwrap().1, used);
            // Every truncation needs more; every two-way split gives the same answer.
            for cut in 0..input.len() {
                assert_eq!(parse(&input[..cut]), Ok(None), "cut {cut} of {:?}", input);
                let mut p = ProxyParser::new();
                assert_eq!(p.feed(&input[..cut]), Outcome::NeedMore);
                assert_eq!(p.feed(&input[cut..]), want);
            }
            // Byte by byte, then trailing bytes are kept as the rest.
            let mut p = ProxyParser::new();
            for (i, b) in input.iter().enumerate() {
                let o = p.feed(std::slice::from_ref(b));
                assert_eq!(o == want, i + 1 == input.len());
            }
            let mut with_rest = input.clone();
            with_rest.extend_from_slice(b"EHLO x\r\n");
            let mut p = ProxyParser::new();
            assert_eq!(p.feed(&with_rest), want);
            assert_eq!(p.rest(), b"EHLO x\r\n");
            assert_eq!(p.feed(b"more"), want);
            assert_eq!(p.rest(), b"EHLO x\r\nmore");
        }
    }

    #[test]
    fn errors_whole_and_every_split() {
        for (input, want) in errors() {
            let mut p = ProxyParser::new();
            assert_eq!(p.feed(&input), Outcome::Error(want.clone()), "{:?}", String::from_utf8_lossy(&input));
            assert!(p.rest().is_empty());
            for cut in 0..=input.len() {
                let mut p = ProxyParser::new();
                let first = p.feed(&input[..cut]);
                let o = if first == Outcome::NeedMore { p.feed(&input[cut..]) } else { first };
                assert_eq!(o, Outcome::Error(want.clone()), "cut {cut} of {:?}", input);
            }
        }
    }

    #[test]
    fn v1_length_limit_is_107_with_crlf() {
        // 105 bytes of line + CRLF = 107: accepted (UNKNOWN ignores the rest).
        let mut ok = b"PROXY UNKNOWN ".to_vec();
        ok.resize(105, b'x');
        ok.extend_from_slice(b"\r\n");
        assert_eq!(ok.len(), 107);
        assert_eq!(ProxyParser::new().feed(&ok), Outcome::Local);
        let mut over = b"PROXY UNKNOWN ".to_vec();
        over.resize(106, b'x');
        over.extend_from_slice(b"\r\n");
        assert_eq!(ProxyParser::new().feed(&over), Outcome::Error(ProxyError::TooLong));
        // Decided as soon as the 107th byte cannot be the LF, without waiting for more.
        let mut p = ProxyParser::new();
        assert_eq!(p.feed(&over[..106]), Outcome::NeedMore);
        assert_eq!(p.feed(&over[106..107]), Outcome::Error(ProxyError::TooLong));
        let mut p = ProxyParser::new();
        let mut none = b"PROXY UNKNOWN ".to_vec();
        none.resize(107, b'x');
        assert_eq!(p.feed(&none), Outcome::NeedMore);
        assert_eq!(p.feed(b"x"), Outcome::Error(ProxyError::TooLong));
    }

    #[test]
    fn v2_declared_length_bounds_the_read() {
        let h = v2_inet(&[0xEE; 100]);
        let mut p = ProxyParser::new();
        assert_eq!(p.feed(&h[..h.len() - 1]), Outcome::NeedMore);
        assert_eq!(p.feed(&h[h.len() - 1..]), hdr("192.0.2.1", 40000, "198.51.100.7", 25));
        assert_eq!(v4([192, 0, 2, 1]), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn harness_holds_for_the_tables() {
        for (input, _, _) in valid() {
            for seed in 0..input.len() as u16 + 2 {
                let mut d = seed.to_le_bytes().to_vec();
                d.extend_from_slice(&input);
                d.extend_from_slice(b"QUIT\r\n");
                harness::check(&d);
            }
        }
        for (input, _) in errors() {
            let mut d = vec![3, 0];
            d.extend_from_slice(&input);
            harness::check(&d);
        }
    }
}
