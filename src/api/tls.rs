//! TLS on https:// client URLs, from etcd's flags: the server certificate, and client certificates
//! verified against the trusted CA (required with --client-cert-auth). Both HTTP/2 (gRPC) and
//! HTTP/1.1 (probes, scrapers, the JSON gateway) are offered by ALPN, as etcd offers them.

use crate::config::Config;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

/// Connections through their handshake, waiting for the server to take them.
const ACCEPTED: usize = 64;
/// A client that does not finish its handshake in this time is dropped.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn read(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
}

pub fn acceptor(config: &Config) -> anyhow::Result<TlsAcceptor> {
    let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) else {
        anyhow::bail!("https:// client URLs need --cert-file and --key-file");
    };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read(cert)?).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(&read(key)?)?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &config.trusted_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&read(ca)?) {
                roots.add(c?)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider);
            let verifier = if config.client_cert_auth {
                verifier.build()?
            } else {
                verifier.allow_unauthenticated().build()?
            };
            builder.with_client_cert_verifier(verifier)
        }
        None if config.client_cert_auth => {
            anyhow::bail!("--client-cert-auth needs --trusted-ca-file to verify clients with")
        }
        None => builder.with_no_client_auth(),
    };
    let mut tls = builder.with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(tls)))
}

/// The TLS connections of `incoming`, each handshake on its own task; a failed handshake drops its
/// connection and nothing else.
pub fn accept(
    mut incoming: impl Stream<Item = std::io::Result<TcpStream>> + Send + Unpin + 'static,
    acceptor: TlsAcceptor,
) -> impl Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
    let (accepted, rx) = tokio::sync::mpsc::channel(ACCEPTED);
    tokio::spawn(async move {
        while let Some(stream) = incoming.next().await {
            let Ok(stream) = stream else { continue };
            let (acceptor, accepted) = (acceptor.clone(), accepted.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = accepted.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
