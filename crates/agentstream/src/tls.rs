//! The TLS settings of every outgoing HTTP client (LLM providers, HTTP tools,
//! JWKS, the chat client).
//!
//! reqwest is built without a crypto provider of its own (its default is
//! aws-lc, a slow C build): each client gets a rustls config that uses ring,
//! the provider the rest of the tree already uses, and trusts Mozilla's root
//! certificates compiled in (webpki-roots), not the system's store, as with
//! reqwest 0.12's `rustls-tls`.

use std::sync::{Arc, LazyLock};

use rustls::ClientConfig;

/// Built once: the root store holds some 150 certificates.
static CONFIG: LazyLock<Result<ClientConfig, rustls::Error>> = LazyLock::new(|| {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(rustls::ALL_VERSIONS)?
            .with_root_certificates(roots)
            .with_no_client_auth();
    // reqwest leaves a preconfigured config's ALPN alone: offer HTTP/2 and
    // HTTP/1.1, as it does for its own.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
});

/// A `reqwest::ClientBuilder` with the TLS settings above; callers add their
/// timeouts and headers. Fails only if ring cannot do TLS 1.2 or 1.3.
pub fn client_builder() -> Result<reqwest::ClientBuilder, rustls::Error> {
    let config = CONFIG.as_ref().map_err(Clone::clone)?;
    Ok(reqwest::Client::builder().tls_backend_preconfigured(config.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_client_with_ring_and_the_webpki_roots() {
        let config = CONFIG.as_ref().unwrap();
        assert!(!config.crypto_provider().cipher_suites.is_empty());
        client_builder().unwrap().build().unwrap();
    }
}
