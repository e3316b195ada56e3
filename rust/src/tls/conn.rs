//! `Conn`: one TLS connection, server or client side, sans I/O. `feed` takes the peer's
//! ciphertext and gives back the plaintext it held and the ciphertext to send; `send` encrypts.
//! Invariant: after each call nothing is left buffered inside rustls that the caller must fetch.

use super::Error;
use rustls::{CipherSuite, ClientConfig, ClientConnection, Connection, HandshakeKind, ProtocolVersion, ServerConfig, ServerConnection};
use rustls::pki_types::{DnsName, ServerName};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::sync::Arc;

/// A failed handshake or connection, as TLS-RPT (RFC 8460) result types want it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    CertificateExpired,
    CertificateNotTrusted,
    CertificateHostMismatch,
    Other,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::CertificateExpired => "certificate-expired",
            FailureKind::CertificateNotTrusted => "certificate-not-trusted",
            FailureKind::CertificateHostMismatch => "certificate-host-mismatch",
            FailureKind::Other => "validation-failure",
        }
    }

    fn of(e: &rustls::Error) -> Self {
        use rustls::CertificateError as C;
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => FailureKind::CertificateExpired,
                C::NotValidForName | C::NotValidForNameContext { .. } => FailureKind::CertificateHostMismatch,
                C::UnknownIssuer | C::BadSignature | C::BadEncoding | C::Revoked => FailureKind::CertificateNotTrusted,
                _ => FailureKind::CertificateNotTrusted,
            },
            _ => FailureKind::Other,
        }
    }
}

/// What the connection negotiated, named as Python's ssl names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub version: &'static str,
    pub cipher: &'static str,
    pub bits: u32,
}

/// OpenSSL's name and secret bits of a suite (what `ssl.SSLObject.cipher()` reports today).
fn openssl_name(suite: CipherSuite) -> (&'static str, u32) {
    use CipherSuite as S;
    match suite {
        S::TLS13_AES_256_GCM_SHA384 => ("TLS_AES_256_GCM_SHA384", 256),
        S::TLS13_AES_128_GCM_SHA256 => ("TLS_AES_128_GCM_SHA256", 128),
        S::TLS13_CHACHA20_POLY1305_SHA256 => ("TLS_CHACHA20_POLY1305_SHA256", 256),
        S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => ("ECDHE-ECDSA-AES256-GCM-SHA384", 256),
        S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => ("ECDHE-ECDSA-AES128-GCM-SHA256", 128),
        S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => ("ECDHE-ECDSA-CHACHA20-POLY1305", 256),
        S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => ("ECDHE-RSA-AES256-GCM-SHA384", 256),
        S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => ("ECDHE-RSA-AES128-GCM-SHA256", 128),
        S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => ("ECDHE-RSA-CHACHA20-POLY1305", 256),
        _ => ("unknown", 0),
    }
}

pub struct Conn {
    inner: Connection,
    peer_closed: bool,
    // The alert rustls queued when the connection failed: `close` hands it out.
    failed: Option<Vec<u8>>,
}

impl Conn {
    pub fn server(config: &Arc<ServerConfig>) -> Result<Self, Error> {
        let c = ServerConnection::new(config.clone()).map_err(Error::Config)?;
        Ok(Self::wrap(Connection::Server(c)))
    }

    /// A client connection to `server_name`: a DNS name (sent as SNI, checked when verifying)
    /// or an IP address (no SNI; the certificate must name the address when verifying).
    pub fn client(config: &Arc<ClientConfig>, server_name: &str) -> Result<Self, Error> {
        let name = match server_name.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => {
                let dns = DnsName::try_from(server_name).map_err(|_| Error::BadServerName(server_name.to_string()))?;
                ServerName::DnsName(dns.to_owned())
            }
        };
        let c = ClientConnection::new(config.clone(), name).map_err(Error::Config)?;
        Ok(Self::wrap(Connection::Client(c)))
    }

    fn wrap(mut inner: Connection) -> Self {
        // Each call drains what it produced, so rustls never holds more than one call's worth.
        inner.set_buffer_limit(None);
        Conn { inner, peer_closed: false, failed: None }
    }

    /// The peer's ciphertext in; (plaintext received, ciphertext to send) out. A fatal error
    /// (alert, garbage, a refused certificate) is returned once; the alert then comes from `close`.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
        if self.failed.is_some() {
            return Err(Error::Tls { kind: FailureKind::Other, reason: "connection already failed".into() });
        }
        // Plaintext is never much more than the ciphertext that carried it: one allocation.
        let mut plain = Vec::with_capacity(data.len());
        let mut out = Vec::new();
        // An empty feed still flushes what a client has to say first (its ClientHello).
        loop {
            if !data.is_empty() {
                if let Err(e) = self.inner.read_tls(&mut data) {
                    return Err(self.fail(rustls::Error::General(e.to_string())));
                }
            }
            let state = match self.inner.process_new_packets() {
                Ok(s) => s,
                Err(e) => return Err(self.fail(e)),
            };
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let at = plain.len();
                plain.resize(at + n, 0);
                self.inner.reader().read_exact(&mut plain[at..]).expect("rustls said these bytes are there");
            }
            if state.peer_has_closed() {
                self.peer_closed = true;
            }
            self.drain(&mut out);
            if data.is_empty() || self.peer_closed {
                break;
            }
        }
        Ok((plain, out))
    }

    fn fail(&mut self, e: rustls::Error) -> Error {
        let mut alert = Vec::new();
        self.drain(&mut alert);
        self.failed = Some(alert);
        Error::Tls { kind: FailureKind::of(&e), reason: e.to_string() }
    }

    fn drain(&mut self, out: &mut Vec<u8>) {
        while self.inner.wants_write() {
            if self.inner.write_tls(out).is_err() {
                break; // writing to a Vec cannot fail
            }
        }
    }

    /// Plaintext to ciphertext (buffered by rustls until the handshake is done).
    pub fn send(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + data.len() / 512 + 64);
        // With no buffer limit a write takes everything.
        let _ = self.inner.writer().write_all(data);
        self.drain(&mut out);
        out
    }

    /// close_notify, or the alert of a failed connection.
    pub fn close(&mut self) -> Vec<u8> {
        if let Some(alert) = self.failed.as_mut() {
            return std::mem::take(alert);
        }
        self.inner.send_close_notify();
        let mut out = Vec::new();
        self.drain(&mut out);
        out
    }

    pub fn handshaking(&self) -> bool {
        self.inner.is_handshaking()
    }

    pub fn resumed(&self) -> bool {
        self.inner.handshake_kind() == Some(HandshakeKind::Resumed)
    }

    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// None while handshaking.
    pub fn info(&self) -> Option<Info> {
        let version = match self.inner.protocol_version()? {
            ProtocolVersion::TLSv1_3 => "TLSv1.3",
            ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "unknown",
        };
        let (cipher, bits) = openssl_name(self.inner.negotiated_cipher_suite()?.suite());
        if self.handshaking() {
            return None;
        }
        Some(Info { version, cipher, bits })
    }
}
