//! TLS for SMTP connections on rustls (ring provider), sans I/O: server and client configs
//! from PEM, shared session tickets, and `Conn`, which turns ciphertext into plaintext and back.
//! Invariant: nothing here does I/O on sockets or knows Python; files are read only for the CA bundle.

mod config;
mod conn;
mod ticket;
#[cfg(test)]
mod tests;

pub use config::{client_config, server_config, without_resumption, MinVersion, SYSTEM_CA_BUNDLE};
pub use conn::{Conn, FailureKind, Info};
pub use ticket::{Clock, Ticketer};

use thiserror::Error;

/// Why a config cannot be built or a connection failed. The caller adds file paths.
#[derive(Debug, Error)]
pub enum Error {
    #[error("no certificate found in the certificate PEM")]
    NoCertificate,
    #[error("certificate PEM cannot be parsed: {0}")]
    BadCertificatePem(String),
    #[error("no private key found in the key PEM")]
    NoKey,
    #[error("key PEM cannot be parsed: {0}")]
    BadKeyPem(String),
    #[error("key cannot be used (unsupported type, or not the certificate's key): {0}")]
    BadKey(String),
    #[error("no CA certificate found in the CA PEM")]
    NoCa,
    #[error("CA PEM cannot be parsed: {0}")]
    BadCaPem(String),
    #[error("system CA bundle {SYSTEM_CA_BUNDLE} cannot be read: {0}")]
    NoSystemStore(String),
    #[error("unknown minimum TLS version {0:?} (TLSv1.2 or TLSv1.3)")]
    BadVersion(String),
    #[error("ticket secret must be 32 bytes, got {0}")]
    BadSecret(usize),
    #[error("ticket rotation must be at least one second")]
    BadRotation,
    #[error("invalid server name {0:?}")]
    BadServerName(String),
    #[error("{0}")]
    Config(rustls::Error),
    /// A failed connection: the reason for logs, and its kind for TLS-RPT result types.
    #[error("{reason}")]
    Tls { kind: FailureKind, reason: String },
}
