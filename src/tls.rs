//! Certificates made during a test, and a TLS client that reports which
//! certificate the server presented.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// A certificate authority that lives for one test.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A server certificate and key issued by a [`TestCa`].
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Leaf {
    /// Writes `NAME.crt` and `NAME.key` into `dir` (replacing them as a
    /// rotation would: write aside, then rename) and returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        for (path, text) in [(&cert, &self.cert_pem), (&key, &self.key_pem)] {
            let aside = path.with_extension("new");
            std::fs::write(&aside, text).unwrap();
            std::fs::rename(&aside, path).unwrap();
        }
        (cert, key)
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "graceful test CA");
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    pub fn ca_pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `localhost` and `127.0.0.1`, named `common_name`.
    pub fn leaf(&self, common_name: &str) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A client configuration that trusts this CA only.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

impl Default for TestCa {
    fn default() -> TestCa {
        TestCa::new()
    }
}

/// `config` offering only h2 (`http2`) or only http/1.1 by ALPN.
pub fn with_alpn(config: &Arc<ClientConfig>, http2: bool) -> Arc<ClientConfig> {
    let mut config = ClientConfig::clone(config);
    config.alpn_protocols = vec![if http2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Arc::new(config)
}

/// One HTTPS request's outcome.
#[derive(Debug)]
pub struct Fetched {
    pub status: u16,
    pub body: String,
    /// The protocol ALPN chose (`h2`, `http/1.1`).
    pub alpn: String,
    /// The leaf certificate the server presented.
    pub peer_cert: CertificateDer<'static>,
}

/// `GET path` over TLS on a new connection, HTTP/2 or HTTP/1.1 by ALPN.
pub fn fetch(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    http2: bool,
    path: &str,
) -> Result<Fetched, String> {
    let config = with_alpn(config, http2);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let fetched = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let name = ServerName::IpAddress(addr.ip().into());
            let tls = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls handshake: {e}"))?;
            let (_, session) = tls.get_ref();
            let alpn =
                String::from_utf8_lossy(session.alpn_protocol().unwrap_or_default()).into_owned();
            let peer_cert = session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .ok_or("no peer certificate")?
                .clone()
                .into_owned();
            let io = TokioIo::new(tls);
            let request = Request::get(format!("https://{addr}{path}"))
                .header(http::header::HOST, addr.to_string())
                .body(Empty::<Bytes>::new())
                .unwrap();
            let response = if http2 {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(|e| format!("h2 handshake: {e}"))?;
                tokio::spawn(conn);
                let mut request = request;
                request.headers_mut().remove(http::header::HOST);
                sender.send_request(request).await
            } else {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| format!("http1 handshake: {e}"))?;
                tokio::spawn(conn);
                sender.send_request(request).await
            }
            .map_err(|e| format!("request: {e}"))?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            Ok(Fetched {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
                alpn,
                peer_cert,
            })
        };
        tokio::time::timeout(Duration::from_secs(10), fetched)
            .await
            .map_err(|_| "no answer within 10 s".to_string())?
    })
}

/// A Kubernetes Secret volume in `dir/volume`: `tls.crt` and `tls.key` are
/// symlinks through `..data` to a timestamped directory. `swap` writes the
/// new files into a new directory and swaps `..data` atomically, as the
/// kubelet's atomic writer does.
pub struct Volume {
    pub dir: PathBuf,
    version: u32,
}

impl Volume {
    pub fn new(dir: &Path, cert: &str, key: &str) -> Volume {
        let dir = dir.join("volume");
        std::fs::create_dir_all(&dir).unwrap();
        let mut volume = Volume { dir, version: 0 };
        volume.swap(cert, key);
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), volume.dir.join(name)).unwrap();
        }
        volume
    }

    pub fn swap(&mut self, cert: &str, key: &str) {
        self.version += 1;
        let version = format!("..2026_12_02_{}", self.version);
        let target = self.dir.join(&version);
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("tls.crt"), cert).unwrap();
        std::fs::write(target.join("tls.key"), key).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}
