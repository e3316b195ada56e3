//! Server and client configs: certificates and keys from PEM, the versions, key exchange
//! X25519 then P-256 then P-384, tickets and session caches. Invariant: an `Arc<*Config>` is
//! built once and shared by every connection made from it (that is what makes resumption work).

use super::{Error, Ticketer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::crypto::{ring as provider, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{NoServerSessionStorage, ProducesTickets, ServerSessionMemoryCache};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme, SupportedProtocolVersion};
use std::sync::Arc;

/// Debian's bundle of the system's trusted CAs (package ca-certificates).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// TLS 1.2 session ids remembered by one server config (tickets need no server memory).
const SERVER_SESSIONS: usize = 4096;
/// Destinations whose last sessions one client config remembers.
const CLIENT_SESSIONS: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MinVersion {
    Tls12,
    Tls13,
}

impl std::str::FromStr for MinVersion {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "TLSv1.2" => Ok(MinVersion::Tls12),
            "TLSv1.3" => Ok(MinVersion::Tls13),
            other => Err(Error::BadVersion(other.to_string())),
        }
    }
}

static TLS12_UP: [&SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];
static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

fn versions(min: MinVersion) -> &'static [&'static SupportedProtocolVersion] {
    match min {
        MinVersion::Tls12 => &TLS12_UP,
        MinVersion::Tls13 => &TLS13_ONLY,
    }
}

// rustls 0.23.48 deprecates ring's provider for lacking post-quantum key exchange (only
// aws-lc-rs has it, and it needs cmake); OpenSSL 3.0 has none either, so this is no step back.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    use provider::kx_group::{SECP256R1, SECP384R1, X25519};
    Arc::new(CryptoProvider { kx_groups: vec![X25519, SECP256R1, SECP384R1], ..provider::default_provider() })
}

fn certs(pem: &[u8], none: Error, bad: fn(String) -> Error) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(none);
    }
    Ok(certs)
}

fn key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => Error::NoKey,
        other => Error::BadKeyPem(other.to_string()),
    })
}

/// A server config: `cert_pem` the chain (leaf first), `key_pem` its key (PKCS#8, SEC1 or
/// PKCS#1); tickets from `ticketer`, TLS 1.2 session ids in memory, one TLS 1.3 ticket per handshake.
pub fn server_config(cert_pem: &[u8], key_pem: &[u8], min: MinVersion, ticketer: Ticketer) -> Result<Arc<ServerConfig>, Error> {
    let chain = certs(cert_pem, Error::NoCertificate, Error::BadCertificatePem)?;
    let key = key(key_pem)?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(min))
        .map_err(Error::Config)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| Error::BadKey(e.to_string()))?;
    // As the OpenSSL context (OP_CIPHER_SERVER_PREFERENCE): AES-256-GCM first whatever the client's order.
    cfg.ignore_client_order = true;
    cfg.ticketer = Arc::new(ticketer);
    cfg.session_storage = ServerSessionMemoryCache::new(SERVER_SESSIONS);
    cfg.send_tls13_tickets = 1;
    Ok(Arc::new(cfg))
}

/// `cfg` resuming no session: no tickets issued or taken, no session cache (tls.session_tickets
/// false), so every handshake is a full one.
pub fn without_resumption(cfg: Arc<ServerConfig>) -> Arc<ServerConfig> {
    let mut cfg = Arc::unwrap_or_clone(cfg);
    cfg.ticketer = Arc::new(NoTickets);
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Arc::new(cfg)
}

#[derive(Debug)]
struct NoTickets;

impl ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// A client config. `verify` false: opportunistic TLS, any certificate is accepted (the
/// handshake signatures are still checked). True: the chain must lead to a CA of `ca_pem`, or
/// of the system bundle when None (an error if it cannot be read: verified TLS without trust
/// anchors could only fail), and name the server as rustls checks it. Sessions are kept per name.
pub fn client_config(verify: bool, ca_pem: Option<&[u8]>) -> Result<Arc<ClientConfig>, Error> {
    client_config_with(verify, ca_pem, versions(MinVersion::Tls12))
}

/// `client_config` offering only `versions` (tests play a TLS 1.2-only client with it).
pub(super) fn client_config_with(
    verify: bool,
    ca_pem: Option<&[u8]>,
    versions: &'static [&'static SupportedProtocolVersion],
) -> Result<Arc<ClientConfig>, Error> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(Error::Config)?;
    let mut cfg = if verify {
        let mut roots = RootCertStore::empty();
        let ca = match ca_pem {
            Some(pem) => certs(pem, Error::NoCa, Error::BadCaPem)?,
            None => {
                let pem = std::fs::read(SYSTEM_CA_BUNDLE).map_err(|e| Error::NoSystemStore(e.to_string()))?;
                certs(&pem, Error::NoSystemStore("no certificate in it".into()), Error::NoSystemStore)?
            }
        };
        // A bundle may hold certificates webpki cannot use; those are skipped, as OpenSSL does.
        let (added, _skipped) = roots.add_parsable_certificates(ca);
        if added == 0 {
            return Err(Error::NoCa);
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider.signature_verification_algorithms)))
            .with_no_client_auth()
    };
    cfg.resumption = Resumption::store(Arc::new(ClientSessionMemoryCache::new(CLIENT_SESSIONS)));
    Ok(Arc::new(cfg))
}

/// Opportunistic TLS: any certificate, but the handshake must be signed by its key.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
