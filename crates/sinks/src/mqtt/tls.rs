//! rustls client configuration for `mqtts://` (the ring provider; verification always on).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::config::TlsConfig;
use crate::SinkError;

fn tls_error(key: &'static str, message: impl Into<String>) -> SinkError {
    SinkError::Tls {
        key,
        message: message.into(),
    }
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, SinkError> {
    crate::pem::read_certs(path).map_err(|e| tls_error(key, e.to_string()))
}

/// Builds the client configuration: CA from `ca_file` or the system store, optional client cert.
pub(crate) fn client_config(tls: &TlsConfig) -> Result<Arc<ClientConfig>, SinkError> {
    let mut roots = RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            for cert in read_certs("sink.tls.ca_file", path)? {
                roots.add(cert).map_err(|e| {
                    tls_error("sink.tls.ca_file", format!("bad CA certificate: {e}"))
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                // Skip certificates the system store holds but rustls cannot parse.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(tls_error(
                    "sink.tls.ca_file",
                    "no system CA certificates found; set sink.tls.ca_file",
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("sink.tls", e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = read_certs("sink.tls.client_cert_file", cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                tls_error(
                    "sink.tls.client_key_file",
                    format!("cannot read a PEM private key from {}: {e}", key.display()),
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_error("sink.tls.client_cert_file", e.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
