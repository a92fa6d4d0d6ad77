//! TLS for the remote connection, by `POSTGRES_CLIENT_SSLMODE`.
//!
//! - `disable`: no TLS;
//! - `prefer` and `require`: TLS without certificate verification, as libpq
//!   does for those modes (encrypts against eavesdroppers, not against an
//!   active man in the middle);
//! - `verify-full`: the chain is verified against `POSTGRES_CLIENT_SSLROOTCERT`
//!   (a PEM file) or, without it, the bundled web PKI roots, and the host name
//!   must match the certificate.

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
    #[error("POSTGRES_CLIENT_SSLROOTCERT={path:?}: {reason}")]
    RootCert {
        /// The file named by the variable.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The connector for `db`, or `None` when `sslmode` is `disable`.
///
/// Fails when the root certificate file cannot be used.
pub fn connector(db: &DbConfig) -> Result<Option<MakeRustlsConnect>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = match db.sslmode {
        SslMode::Disable => return Ok(None),
        SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth(),
        SslMode::VerifyFull => builder
            .with_root_certificates(roots(db.sslrootcert.as_deref())?)
            .with_no_client_auth(),
    };
    Ok(Some(MakeRustlsConnect::new(config)))
}

fn roots(path: Option<&str>) -> Result<RootCertStore, TlsError> {
    let Some(path) = path else {
        return Ok(RootCertStore::from_iter(
            webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
        ));
    };
    let err = |reason: String| TlsError::RootCert {
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
