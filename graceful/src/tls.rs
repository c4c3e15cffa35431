//! TLS listeners: [`TlsConfig`], loaded by each worker as it starts.
//!
//! Certificate files are read when a worker starts, not when the service
//! starts, so rotating a certificate is "replace the files, send SIGHUP". A
//! file that cannot be read or parsed fails the new worker's start, and the
//! reload is rolled back like any other failed start: the old worker keeps
//! serving with the old certificate.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

use crate::Error;

/// How long a client may take to complete the TLS handshake, or
/// `header_timeout` if that is shorter. The connection counts in the drain
/// while it does.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The ALPN protocols offered when the configuration names none.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The TLS configuration of one listener.
///
/// Either PEM files, read again by every new worker (so a reload picks up a
/// rotated certificate), or a ready [`rustls::ServerConfig`], used as given.
/// In both cases, if the configuration offers no ALPN protocol, `h2` and
/// `http/1.1` are offered.
///
/// ```no_run
/// # use std::convert::Infallible;
/// # async fn hello(_: http::Request<hyper::body::Incoming>) -> Result<http::Response<String>, Infallible> { todo!() }
/// use graceful::TlsConfig;
///
/// #[graceful::main]
/// async fn main() {
///     graceful::register!(":8443", hello, tls = TlsConfig::from_pem_files("cert.pem", "key.pem"));
/// }
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    source: Source,
}

#[derive(Clone)]
enum Source {
    Files { cert: PathBuf, key: PathBuf },
    Config(Arc<ServerConfig>),
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Files { cert, key } => f
                .debug_struct("TlsConfig")
                .field("cert", cert)
                .field("key", key)
                .finish(),
            Source::Config(_) => f
                .debug_struct("TlsConfig")
                .field("config", &"rustls::ServerConfig")
                .finish(),
        }
    }
}

impl TlsConfig {
    /// A certificate chain (leaf first) and its private key (PKCS#8, PKCS#1
    /// or SEC1), both PEM files. They are read by each new worker, with the
    /// ring crypto provider and rustls' default protocol versions.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> TlsConfig {
        TlsConfig {
            source: Source::Files {
                cert: cert.as_ref().to_path_buf(),
                key: key.as_ref().to_path_buf(),
            },
        }
    }

    /// A configuration built by the application, for client authentication,
    /// a certificate resolver (SNI), or another crypto provider.
    pub fn from_server_config(config: impl Into<Arc<ServerConfig>>) -> TlsConfig {
        TlsConfig {
            source: Source::Config(config.into()),
        }
    }

    /// Reads the files (if any) and returns the configuration to serve with.
    pub(crate) fn load(&self) -> Result<Arc<ServerConfig>, Error> {
        let config = match &self.source {
            Source::Config(config) => config.clone(),
            Source::Files { cert, key } => Arc::new(load_files(cert, key)?),
        };
        if !config.alpn_protocols.is_empty() {
            return Ok(config);
        }
        let mut config = Arc::unwrap_or_clone(config);
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl From<ServerConfig> for TlsConfig {
    fn from(config: ServerConfig) -> TlsConfig {
        TlsConfig::from_server_config(config)
    }
}

impl From<Arc<ServerConfig>> for TlsConfig {
    fn from(config: Arc<ServerConfig>) -> TlsConfig {
        TlsConfig::from_server_config(config)
    }
}

fn load_files(cert_path: &Path, key_path: &Path) -> Result<ServerConfig, Error> {
    let tls_error = |path: &Path, reason: String| Error::Tls {
        path: path.to_path_buf(),
        reason,
    };
    let read = |path: &Path| std::fs::read(path).map_err(|e| tls_error(path, e.to_string()));
    let pem_error = |path: &Path, what: &str, e: pem::Error| match e {
        pem::Error::NoItemsFound => tls_error(path, format!("no PEM {what} found")),
        e => tls_error(path, format!("not a valid PEM {what}: {e}")),
    };

    let cert_pem = read(cert_path)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert_path, "certificate", e))?;
    if chain.is_empty() {
        return Err(pem_error(
            cert_path,
            "certificate",
            pem::Error::NoItemsFound,
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key_path)?)
        .map_err(|e| pem_error(key_path, "private key", e))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(cert_path, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => tls_error(
                key_path,
                format!("the private key does not match the certificate in {cert_path:?}"),
            ),
            e => tls_error(cert_path, format!("unusable certificate or key: {e}")),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver with no certificate: enough to build a `ServerConfig`.
    #[derive(Debug)]
    struct NoCert;

    impl rustls::server::ResolvesServerCert for NoCert {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            None
        }
    }

    fn config(alpn: &[&[u8]]) -> ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(NoCert));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    #[test]
    fn a_server_config_without_alpn_offers_h2_and_http1() {
        let loaded = TlsConfig::from(config(&[])).load().unwrap();
        assert_eq!(
            loaded.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn a_server_config_with_alpn_is_used_as_given() {
        let given = Arc::new(config(&[b"http/1.1"]));
        let loaded = TlsConfig::from(given.clone()).load().unwrap();
        assert!(Arc::ptr_eq(&loaded, &given));
    }

    #[test]
    fn unreadable_files_are_named() {
        let missing = std::env::temp_dir().join("graceful-no-such-dir/cert.pem");
        let err = TlsConfig::from_pem_files(&missing, "key.pem")
            .load()
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("TLS file {missing:?}: ")),
            "{err}"
        );
    }
}
