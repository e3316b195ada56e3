//! Handshakes between our server and our client in memory: full, resumed, tickets shared
//! by secret and refused across secrets and epochs, versions, verification, bad PEM, garbage.

use super::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CA: &[u8] = include_bytes!("testdata/ca.pem");
const EC: (&[u8], &[u8]) = (include_bytes!("testdata/ec.pem"), include_bytes!("testdata/ec.key"));
const RSA: (&[u8], &[u8]) = (include_bytes!("testdata/rsa.pem"), include_bytes!("testdata/rsa.key"));
const ED: (&[u8], &[u8]) = (include_bytes!("testdata/ed.pem"), include_bytes!("testdata/ed.key"));
const EXPIRED: &[u8] = include_bytes!("testdata/expired.pem");
const SECRET: [u8; 32] = [7; 32];
const HOUR: Duration = Duration::from_secs(3600);

fn server(pair: (&[u8], &[u8]), min: MinVersion, secret: &[u8]) -> Arc<rustls::ServerConfig> {
    server_config(pair.0, pair.1, min, Ticketer::new(secret, HOUR).unwrap()).unwrap()
}

/// Pumps ciphertext both ways until neither side has anything to say; the first error wins.
fn pump(c: &mut Conn, s: &mut Conn) -> Result<(), Error> {
    let (_, mut to_s) = c.feed(&[])?;
    for _ in 0..20 {
        let (_, to_c) = s.feed(&to_s)?;
        let (_, next) = c.feed(&to_c)?;
        if to_c.is_empty() && next.is_empty() {
            return Ok(());
        }
        to_s = next;
    }
    panic!("handshake did not settle");
}

fn connect(cc: &Arc<rustls::ClientConfig>, name: &str, sc: &Arc<rustls::ServerConfig>) -> Result<(Conn, Conn), Error> {
    let mut c = Conn::client(cc, name)?;
    let mut s = Conn::server(sc)?;
    pump(&mut c, &mut s)?;
    assert!(!c.handshaking() && !s.handshaking());
    Ok((c, s))
}

#[test]
fn full_handshake_then_data_and_close_notify() {
    let sc = server(EC, MinVersion::Tls12, &SECRET);
    let cc = client_config(false, None).unwrap();
    let (mut c, mut s) = connect(&cc, "mx.example", &sc).unwrap();
    let info = s.info().unwrap();
    assert_eq!(info, Info { version: "TLSv1.3", cipher: "TLS_AES_256_GCM_SHA384", bits: 256 });
    assert_eq!(c.info(), Some(info));
    assert!(!s.resumed() && !c.resumed());
    let big = vec![b'x'; 200_000]; // several records, more than rustls's default buffer limit
    let wire = c.send(&big);
    let (plain, back) = s.feed(&wire).unwrap();
    assert_eq!(plain, big);
    assert!(back.is_empty());
    let (plain, _) = c.feed(&s.send(b"250 ok\r\n")).unwrap();
    assert_eq!(plain, b"250 ok\r\n");
    let (plain, _) = s.feed(&c.close()).unwrap();
    assert!(plain.is_empty() && s.peer_closed());
}

#[test]
fn resumed_with_the_same_config_and_across_configs_sharing_the_secret() {
    let cc = client_config(false, None).unwrap();
    let a = server(EC, MinVersion::Tls12, &SECRET);
    let b = server(EC, MinVersion::Tls12, &SECRET);
    assert!(!connect(&cc, "mx.example", &a).unwrap().1.resumed());
    let (c, s) = connect(&cc, "mx.example", &a).unwrap();
    assert!(s.resumed() && c.resumed());
    let (c, s) = connect(&cc, "mx.example", &b).unwrap();
    assert!(s.resumed() && c.resumed(), "a worker opens another worker's ticket");
    // Sessions are kept per name: another destination starts afresh.
    assert!(!connect(&cc, "127.0.0.1", &b).unwrap().1.resumed());
}

#[test]
fn another_secret_refuses_the_ticket() {
    let cc = client_config(false, None).unwrap();
    connect(&cc, "mx.example", &server(EC, MinVersion::Tls12, &SECRET)).unwrap();
    let (c, s) = connect(&cc, "mx.example", &server(EC, MinVersion::Tls12, &[8; 32])).unwrap();
    assert!(!s.resumed() && !c.resumed());
}

#[test]
fn tickets_open_in_the_next_epoch_not_the_one_after() {
    let now = Arc::new(AtomicU64::new(1_000 * 3600 + 10));
    let at = |n: &Arc<AtomicU64>| {
        let n = n.clone();
        let clock: Clock = Arc::new(move || Duration::from_secs(n.load(Ordering::SeqCst)));
        server_config(EC.0, EC.1, MinVersion::Tls12, Ticketer::with_clock(&SECRET, HOUR, clock).unwrap()).unwrap()
    };
    let sc = at(&now);
    for (advance, resumed) in [(HOUR, true), (2 * HOUR, false)] {
        let cc = client_config(false, None).unwrap();
        now.store(1_000 * 3600 + 10, Ordering::SeqCst);
        connect(&cc, "mx.example", &sc).unwrap();
        now.fetch_add(advance.as_secs(), Ordering::SeqCst);
        let (_, s) = connect(&cc, "mx.example", &sc).unwrap();
        assert_eq!(s.resumed(), resumed, "advanced {advance:?}");
    }
}

fn tls12_only_client() -> Arc<rustls::ClientConfig> {
    static TLS12: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
    config::client_config_with(false, None, &TLS12).unwrap()
}

#[test]
fn tls12_names_and_resumption_and_the_minimum_version() {
    let cc = tls12_only_client();
    let sc = server(EC, MinVersion::Tls12, &SECRET);
    let (_, s) = connect(&cc, "mx.example", &sc).unwrap();
    assert_eq!(s.info().unwrap(), Info { version: "TLSv1.2", cipher: "ECDHE-ECDSA-AES256-GCM-SHA384", bits: 256 });
    let (_, s) = connect(&cc, "mx.example", &server(EC, MinVersion::Tls12, &SECRET)).unwrap();
    assert!(s.resumed(), "TLS 1.2 ticket from another config with the secret");
    let e = connect(&cc, "mx.example", &server(EC, MinVersion::Tls13, &SECRET)).err().unwrap();
    assert!(matches!(e, Error::Tls { kind: FailureKind::Other, .. }), "{e}");
    assert!("TLSv1.1".parse::<MinVersion>().is_err());
}

#[test]
fn rsa_and_ed25519_certificates() {
    let cc = client_config(false, None).unwrap();
    let (_, s) = connect(&cc, "mx.example", &server(RSA, MinVersion::Tls12, &SECRET)).unwrap();
    assert_eq!(s.info().unwrap().version, "TLSv1.3");
    let (_, s) = connect(&tls12_only_client(), "mx.example", &server(RSA, MinVersion::Tls12, &SECRET)).unwrap();
    assert_eq!(s.info().unwrap().cipher, "ECDHE-RSA-AES256-GCM-SHA384");
    connect(&cc, "mx.example", &server(ED, MinVersion::Tls12, &SECRET)).unwrap();
}

#[test]
fn verified_client_checks_chain_name_and_dates() {
    let cc = client_config(true, Some(CA)).unwrap();
    let sc = server(EC, MinVersion::Tls12, &SECRET);
    connect(&cc, "mx.example", &sc).unwrap();
    connect(&cc, "127.0.0.1", &sc).unwrap();
    let kind = |r: Result<(Conn, Conn), Error>| match r {
        Err(Error::Tls { kind, .. }) => kind,
        _ => panic!("expected a failure"),
    };
    assert_eq!(kind(connect(&cc, "other.example", &sc)), FailureKind::CertificateHostMismatch);
    let expired = server((EXPIRED, EC.1), MinVersion::Tls12, &SECRET);
    // A fresh client: this one would resume its session with mx.example, with no certificate to check.
    let cc = client_config(true, Some(CA)).unwrap();
    assert_eq!(kind(connect(&cc, "mx.example", &expired)), FailureKind::CertificateExpired);
    let stranger = client_config(true, Some(RSA.0)).unwrap(); // a self-signed leaf, not our CA
    assert_eq!(kind(connect(&stranger, "mx.example", &sc)), FailureKind::CertificateNotTrusted);
    // The opportunistic client takes all of them.
    connect(&client_config(false, None).unwrap(), "other.example", &expired).unwrap();
}

#[test]
fn bad_pem_and_arguments_are_named() {
    let t = || Ticketer::new(&SECRET, HOUR).unwrap();
    let err = |r: Result<Arc<rustls::ServerConfig>, Error>| r.err().unwrap();
    assert!(matches!(err(server_config(b"", EC.1, MinVersion::Tls12, t())), Error::NoCertificate));
    let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
    assert!(matches!(err(server_config(broken, EC.1, MinVersion::Tls12, t())), Error::BadCertificatePem(_)));
    assert!(matches!(err(server_config(EC.0, b"", MinVersion::Tls12, t())), Error::NoKey));
    assert!(matches!(err(server_config(EC.0, RSA.1, MinVersion::Tls12, t())), Error::BadKey(_)), "not the certificate's key");
    assert!(matches!(client_config(true, Some(b"nothing")), Err(Error::NoCa)));
    assert!(matches!(Ticketer::new(&[1; 16], HOUR), Err(Error::BadSecret(16))));
    assert!(matches!(Ticketer::new(&SECRET, Duration::ZERO), Err(Error::BadRotation)));
    let cc = client_config(false, None).unwrap();
    assert!(matches!(Conn::client(&cc, "bad name!"), Err(Error::BadServerName(_))));
}

#[test]
fn garbage_to_a_server_fails_without_panic() {
    let sc = server(EC, MinVersion::Tls12, &SECRET);
    let cc = client_config(false, None).unwrap();
    let (_, hello) = Conn::client(&cc, "mx.example").unwrap().feed(&[]).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..2000 {
        let mut data = if round % 2 == 0 { hello.clone() } else { vec![0; (next() % 600) as usize] };
        let flips = 1 + next() % 8;
        for _ in 0..flips {
            if data.is_empty() {
                break;
            }
            let i = (next() as usize) % data.len();
            data[i] = next() as u8;
        }
        if round % 2 == 1 {
            data.iter_mut().for_each(|b| *b = next() as u8);
        }
        let mut s = Conn::server(&sc).unwrap();
        for chunk in data.chunks(1 + (next() % 300) as usize) {
            if s.feed(chunk).is_err() {
                let _alert = s.close();
                assert!(s.feed(b"more").is_err());
                break;
            }
        }
    }
    let mut s = Conn::server(&sc).unwrap();
    let e = s.feed(b"EHLO mx.example\r\n").err().unwrap();
    assert!(!s.close().is_empty(), "the alert for a plaintext client: {e}");
}
