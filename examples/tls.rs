//! The hello handler over TLS, HTTP/1.1 and HTTP/2 by ALPN.
//!
//! ```text
//! cargo run --example tls -- :8443 cert.pem key.pem
//! curl --cacert ca.pem https://localhost:8443/world
//! cp new-cert.pem cert.pem; cp new-key.pem key.pem
//! kill -HUP <pid>          # the new worker reads the new files; a broken
//!                          # pair is rolled back and the old one keeps serving
//! ```

use graceful::TlsConfig;

#[path = "shared/hello.rs"]
mod hello;

#[graceful::main]
async fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(cert), Some(key)) = (args.next(), args.next(), args.next()) else {
        return Err("usage: tls ADDR CERT_PEM KEY_PEM".to_string());
    };
    graceful::register!(
        addr,
        hello::hello,
        tls = TlsConfig::from_pem_files(cert, key)
    );
    Ok(())
}
