//! The TLS settings of the load generator's HTTP clients.
//!
//! reqwest is built without a crypto provider of its own (its default is
//! aws-lc, a slow C build): the clients get a rustls config that uses ring and
//! trusts Mozilla's root certificates compiled in (webpki-roots), as with
//! reqwest 0.12's `rustls-tls` and as agentstream does.

use std::sync::Arc;

/// A `reqwest::ClientBuilder` for HTTP/1.1 only (ALPN offers nothing else);
/// callers still call `http1_only` for plain HTTP.
pub fn client_builder() -> Result<reqwest::ClientBuilder, rustls::Error> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(rustls::ALL_VERSIONS)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder().tls_backend_preconfigured(config))
}
