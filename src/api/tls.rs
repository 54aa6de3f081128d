//! TLS on https:// client URLs, from etcd's flags: the server certificate, and client certificates
//! verified against the trusted CA (required with --client-cert-auth). A renewed certificate is
//! served from the next handshake on, without a restart. Both HTTP/2 (gRPC) and
//! HTTP/1.1 (probes, scrapers, the JSON gateway) are offered by ALPN, as etcd offers them.

use crate::config::Config;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;
use tokio::net::TcpStream;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
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
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let certificate = Reloading::new(cert, key, provider.clone())?;
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
    let mut tls = builder.with_cert_resolver(Arc::new(certificate));
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(tls)))
}

/// The server certificate, read again from its files when they change (looked at in each
/// handshake, as etcd reads them for each), so that a renewed certificate is served without a
/// restart. A renewal that does not load (half written, or a key that does not match the
/// certificate) leaves the previous one in use until the files change again.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    /// The files' modification times as last loaded, and what they held.
    current: RwLock<(Stamps, Arc<CertifiedKey>)>,
}

type Stamps = [Option<SystemTime>; 2];

impl Reloading {
    fn new(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> anyhow::Result<Reloading> {
        let (cert, key) = (cert.to_path_buf(), key.to_path_buf());
        let stamps = stamps(&cert, &key);
        let loaded = load(&cert, &key, &provider)?;
        Ok(Reloading {
            cert,
            key,
            provider,
            current: RwLock::new((stamps, loaded)),
        })
    }
}

fn stamps(cert: &Path, key: &Path) -> Stamps {
    [cert, key].map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read(cert)?).collect::<Result<_, _>>()?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", cert.display());
    let key = PrivateKeyDer::from_pem_slice(&read(key)?)?;
    Ok(Arc::new(CertifiedKey::from_der(chain, key, provider)?))
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let now = stamps(&self.cert, &self.key);
        {
            let current = self.current.read().expect("certificate lock");
            if current.0 == now {
                return Some(current.1.clone());
            }
        }
        let mut current = self.current.write().expect("certificate lock");
        current.0 = now;
        match load(&self.cert, &self.key, &self.provider) {
            Ok(loaded) => {
                tracing::info!(cert = %self.cert.display(), "serving the renewed certificate");
                current.1 = loaded;
            }
            Err(e) => tracing::warn!(
                error = %e,
                "cannot load the renewed certificate; serving the previous one"
            ),
        }
        Some(current.1.clone())
    }
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

/// The common name of a DER certificate's subject (the last, as Go's x509 reads it); None if it
/// has none or is not a certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    const COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];
    let (certificate, _) = der_item(der, 0x30)?;
    let (mut tbs, _) = der_item(certificate, 0x30)?;
    if tbs.first() == Some(&0xa0) {
        tbs = der_any(tbs)?.2;
    }
    // The serial number, signature algorithm, issuer and validity come before the subject.
    for _ in 0..4 {
        tbs = der_any(tbs)?.2;
    }
    let (mut names, _) = der_item(tbs, 0x30)?;
    let mut common = None;
    while !names.is_empty() {
        let (mut set, after) = der_item(names, 0x31)?;
        names = after;
        while !set.is_empty() {
            let (attribute, after) = der_item(set, 0x30)?;
            set = after;
            let (oid, value) = der_item(attribute, 0x06)?;
            if oid == COMMON_NAME {
                common = std::str::from_utf8(der_any(value)?.1)
                    .ok()
                    .map(str::to_owned);
            }
        }
    }
    common
}

/// The tag, contents and what follows of the DER item `bytes` starts with.
fn der_any(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = match first {
        short if short < 0x80 => (short as usize, rest),
        long => {
            let n = (long & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let length = rest[..n].iter().fold(0, |l, b| l << 8 | *b as usize);
            (length, &rest[n..])
        }
    };
    (rest.len() >= length).then(|| (tag, &rest[..length], &rest[length..]))
}

/// The contents and what follows of the DER item `bytes` starts with, if it has tag `tag`.
fn der_item(bytes: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, contents, rest) = der_any(bytes)?;
    (found == tag).then_some((contents, rest))
}

#[cfg(test)]
mod tests {
    use super::common_name;

    fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if contents.len() < 0x80 {
            out.push(contents.len() as u8);
        } else {
            out.extend([0x82, (contents.len() >> 8) as u8, contents.len() as u8]);
        }
        out.extend_from_slice(contents);
        out
    }

    fn name(attributes: &[(&[u8], &str)]) -> Vec<u8> {
        let sets: Vec<u8> = attributes
            .iter()
            .flat_map(|(oid, value)| {
                let attribute = [tlv(0x06, oid), tlv(0x0c, value.as_bytes())].concat();
                tlv(0x31, &tlv(0x30, &attribute))
            })
            .collect();
        tlv(0x30, &sets)
    }

    #[test]
    fn the_subjects_last_common_name() {
        let (cn, org): (&[u8], &[u8]) = (&[0x55, 4, 3], &[0x55, 4, 10]);
        let tbs = [
            tlv(0xa0, &tlv(0x02, &[2])),
            tlv(0x02, &[7]),
            tlv(0x30, &[]),
            name(&[(cn, "issuer")]),
            tlv(0x30, &[]),
            name(&[(org, "org"), (cn, "first"), (cn, "alice")]),
            tlv(0x30, &[0; 200]),
        ]
        .concat();
        let certificate = tlv(0x30, &[tlv(0x30, &tbs), tlv(0x30, &[])].concat());
        assert_eq!(common_name(&certificate).as_deref(), Some("alice"));
        assert_eq!(common_name(&certificate[..40]), None);
        assert_eq!(common_name(b"not a certificate"), None);
    }
}
