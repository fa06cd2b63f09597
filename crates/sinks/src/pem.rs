//! PEM certificate files, read whole: every block parsed, or an error naming the file. A block
//! that cannot be parsed is never skipped silently (a CA missing from the trust store would
//! surface much later, as a handshake failure far from its cause).

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Why a PEM certificate file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file cannot be read, or one of its blocks cannot be parsed.
    #[error("cannot read certificates from {path}: {source}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        source: rustls::pki_types::pem::Error,
    },
    /// The file holds no certificate at all.
    #[error("{path} holds no PEM certificate")]
    Empty {
        /// The file.
        path: String,
    },
}

/// Every certificate of a PEM file: an error when the file is unreadable, when any block
/// cannot be parsed, or when there is none.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let shown = || path.display().to_string();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|blocks| blocks.collect::<Result<Vec<_>, _>>())
        .map_err(|source| PemError::Unreadable {
            path: shown(),
            source,
        })?;
    if certs.is_empty() {
        return Err(PemError::Empty { path: shown() });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PEM block: the parser checks the armour and the base64, not the DER inside.
    const GOOD: &str = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
    const BROKEN: &str = "-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n";

    #[test]
    fn a_block_that_cannot_be_parsed_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, format!("{GOOD}{BROKEN}")).unwrap();
        let err = read_certs(&path).unwrap_err();
        assert!(matches!(err, PemError::Unreadable { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        let unterminated = dir.path().join("cut.pem");
        std::fs::write(
            &unterminated,
            format!("{GOOD}-----BEGIN CERTIFICATE-----\naGk=\n"),
        )
        .unwrap();
        let err = read_certs(&unterminated).unwrap_err();
        assert!(err.to_string().contains("cut.pem"), "{err}");
    }

    #[test]
    fn every_good_block_is_read_and_none_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, format!("{GOOD}{GOOD}")).unwrap();
        assert_eq!(read_certs(&path).unwrap().len(), 2);
        std::fs::write(&path, "no pem here\n").unwrap();
        assert!(matches!(read_certs(&path), Err(PemError::Empty { .. })));
        assert!(matches!(
            read_certs(&dir.path().join("missing.pem")),
            Err(PemError::Unreadable { .. })
        ));
    }
}
