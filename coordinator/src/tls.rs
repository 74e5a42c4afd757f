//! TLS for the coordinator: the certificate and key `serve --tls-cert/--tls-key` reads, checked
//! at start-up, used for gRPC (tonic's rustls) and for the `--http` endpoint (tokio-rustls), so
//! the dashboard, `/metrics` and the token are never sent in the clear when gRPC is TLS.

use std::sync::Arc;

/// The coordinator's certificate chain and private key, both PEM.
#[derive(Clone)]
pub struct TlsIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        write!(f, "TlsIdentity {{ cert: {} bytes, key: redacted }}", self.cert_pem.len())
    }
}

impl TlsIdentity {
    /// Read `cert` and `key` and check that they make a usable TLS server configuration, so a bad
    /// file is reported at start-up rather than by the first worker that fails to connect.
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<TlsIdentity, String> {
        // Bounded: `/dev/zero` or a huge file given by mistake is refused at the limit instead
        // of being read until memory runs out.
        let read = |p: &std::path::Path, what: &str| {
            freqsweep_common::files::read_bounded(p, freqsweep_common::files::MAX_PEM_BYTES)
                .map_err(|e| format!("cannot read the TLS {what} {}: {e}", p.display()))
        };
        let identity = TlsIdentity { cert_pem: read(cert, "certificate")?, key_pem: read(key, "key")? };
        tonic::transport::Server::builder().tls_config(identity.server_config()).map_err(|e| {
            let cause = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
            format!("{} and {} are not a usable TLS certificate and key: {e}{cause}", cert.display(), key.display())
        })?;
        Ok(identity)
    }

    /// The same identity for the HTTP endpoint (`--http`): dashboard, `/metrics` and the token
    /// are not sent in the clear when the gRPC port is TLS.
    pub fn http_acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, String> {
        use tokio_rustls::rustls::{
            self, pki_types::pem::PemObject, pki_types::CertificateDer, pki_types::PrivateKeyDer,
        };
        let certs = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("TLS certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| format!("TLS key: {e}"))?;
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
                .map_err(|e| format!("TLS for HTTP: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    pub(crate) fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}
