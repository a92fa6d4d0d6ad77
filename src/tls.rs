//! TLS for both database connections, by `POSTGRES_{CLIENT,SYNC}_SSLMODE`
//! and `_SSLROOTCERT`, with libpq's meanings:
//!
//! - `disable`: no TLS;
//! - `prefer` and `require` without a root certificate file: TLS without
//!   certificate verification (encrypts against eavesdroppers, not against an
//!   active man in the middle);
//! - `prefer` and `require` *with* `_SSLROOTCERT`, and `verify-ca`: the
//!   chain is verified against that file (libpq: "if a root CA file exists,
//!   require behaves as verify-ca"), the host name is not checked;
//! - `verify-full`: chain verified against `_SSLROOTCERT` or, without it, the
//!   bundled web PKI roots, and the host name must match the certificate.
//!
//! A certificate that fails verification is an operator error (see
//! [`crate::fault`]): it is refused at once, never retried.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{DbConfig, SslMode};

/// Why a TLS connector could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The root certificate file is unreadable or holds no certificate.
    #[error("{var}={path:?}: {reason}")]
    RootCert {
        /// The variable naming the file (`POSTGRES_CLIENT_SSLROOTCERT` or
        /// `POSTGRES_SYNC_SSLROOTCERT`).
        var: String,
        /// The file named by the variable.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The connector for `db`, or `None` when `sslmode` is `disable`. `prefix`
/// is the side's variable prefix, for messages (`POSTGRES_CLIENT`).
///
/// Fails when the root certificate file cannot be used.
pub fn connector_for(db: &DbConfig, prefix: &str) -> Result<Option<MakeRustlsConnect>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let var = format!("{prefix}_SSLROOTCERT");
    let file = db.sslrootcert.as_deref();
    let config = match (db.sslmode, file) {
        (SslMode::Disable, _) => return Ok(None),
        (SslMode::Prefer | SslMode::Require, None) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth(),
        (SslMode::Prefer | SslMode::Require, Some(_)) | (SslMode::VerifyCa, _) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly {
                roots: roots(&var, file)?,
                provider,
            }))
            .with_no_client_auth(),
        (SslMode::VerifyFull, _) => builder
            .with_root_certificates(roots(&var, file)?)
            .with_no_client_auth(),
    };
    Ok(Some(MakeRustlsConnect::new(config)))
}

/// The remote side's connector ([`connector_for`] with `POSTGRES_CLIENT`).
///
/// Fails when the root certificate file cannot be used.
pub fn connector(db: &DbConfig) -> Result<Option<MakeRustlsConnect>, TlsError> {
    connector_for(db, "POSTGRES_CLIENT")
}

fn roots(var: &str, path: Option<&str>) -> Result<RootCertStore, TlsError> {
    let Some(path) = path else {
        return Ok(RootCertStore::from_iter(
            webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
        ));
    };
    let err = |reason: String| TlsError::RootCert {
        var: var.to_string(),
        path: path.to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut store = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| err(format!("not a PEM certificate: {e}")))?;
        store
            .add(cert)
            .map_err(|e| err(format!("unusable certificate: {e}")))?;
    }
    if store.is_empty() {
        return Err(err("the file holds no certificate".into()));
    }
    Ok(store)
}

/// Verifies the chain against the given roots but not the host name
/// (libpq's `verify-ca`), and the handshake signatures.
#[derive(Debug)]
struct ChainOnly {
    roots: RootCertStore,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Accepts any certificate but still checks the handshake signatures, as
/// libpq's `sslmode=require` does.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
