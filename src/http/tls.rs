//! TLS for the listener (`--tls-cert`, `--tls-key`): rustls, no OpenSSL.
//!
//! - TLS 1.3 and 1.2 only, with the `ring` provider's suites (AEAD only:
//!   AES-GCM and ChaCha20-Poly1305, ECDHE key exchange).
//! - ALPN offers `h2` and `http/1.1`: a client that picks `h2` is served
//!   by hyper's HTTP/2; one that picks `http/1.1` (or none) takes the same
//!   path as a clear-text connection, lean event streams included.
//! - The certificate and key are read at start (an error names the file
//!   and what is wrong: unreadable, no certificate, no key, or a key that
//!   does not belong to the certificate) and again on SIGHUP: connections
//!   already open keep theirs, new handshakes get the new one; a reload
//!   that fails is logged and the old pair stays in use.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// The certificate in use, replaced whole by a reload.
#[derive(Debug)]
pub struct Certificates {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Read and check the pair; the error names the file and the fault.
    pub fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<Certificates>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = read_pair(cert_path, key_path, &provider)?;
        Ok(Arc::new(Certificates {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            provider,
            current: RwLock::new(Arc::new(key)),
        }))
    }

    /// Read the files again (SIGHUP). On error the pair in use stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let key = read_pair(&self.cert_path, &self.key_path, &self.provider)?;
        *self.current.write() = Arc::new(key);
        Ok(())
    }

    /// The rustls configuration for the listener: TLS 1.3 and 1.2, ALPN
    /// `h2` then `http/1.1`, this certificate (as reloaded).
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<Arc<ServerConfig>> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

fn read_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let cert_name = cert_path.display();
    let key_name = key_path.display();
    let pem = std::fs::read(cert_path)
        .map_err(|e| anyhow::anyhow!("--tls-cert {cert_name}: cannot read it: {e}"))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--tls-cert {cert_name}: not a PEM certificate: {e}"))?;
    if chain.is_empty() {
        anyhow::bail!("--tls-cert {cert_name}: holds no PEM certificate (BEGIN CERTIFICATE)");
    }
    let pem = std::fs::read(key_path)
        .map_err(|e| anyhow::anyhow!("--tls-key {key_name}: cannot read it: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        anyhow::anyhow!(
            "--tls-key {key_name}: holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"
        )
    })?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        anyhow::anyhow!(
            "--tls-key {key_name} does not go with --tls-cert {cert_name} (or is of a kind \
             rustls cannot use): {e}"
        )
    })?;
    Ok(certified)
}
