//! The seed's hello handler, shared by `examples/hello.rs` and
//! `examples/tls.rs`: `Hello, port: <Host header>, "<HTML-escaped path>"`.

use std::convert::Infallible;

use http::header::HOST;
use http::{Request, Response};
use hyper::body::Incoming;

pub(crate) async fn hello(req: Request<Incoming>) -> Result<Response<String>, Infallible> {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    let body = format!(
        "Hello, port: {host}, \"{}\"\n",
        html_escape(req.uri().path())
    );
    Ok(Response::new(body))
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&#39;"),
            '"' => out.push_str("&#34;"),
            c => out.push(c),
        }
    }
    out
}
