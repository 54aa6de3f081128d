//! TLS on https:// client URLs, from etcd's flags: the server certificate (or a self-signed one,
//! --auto-tls), the versions and cipher suites offered, and client certificates verified against
//! the trusted CA (required with --client-cert-auth), the revocation list and the allowed host
//! names. A renewed certificate or revocation list counts from the next handshake on, without a
//! restart. Both HTTP/2 (gRPC) and
//! HTTP/1.1 (probes, scrapers, the JSON gateway) are offered by ALPN, as etcd offers them.

use crate::config::Config;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::client::verify_server_name;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::server::{
    ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier,
};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::version::{TLS12, TLS13};
use tokio_rustls::rustls::{
    DigitallySignedStruct, DistinguishedName, SignatureScheme, SupportedCipherSuite,
    SupportedProtocolVersion,
};
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

/// The TLS side of https:// URLs, as etcd's flags configure it: the server certificate (or a
/// self-signed one with `--auto-tls`), the TLS versions and TLS 1.2 cipher suites offered, and
/// client certificates verified against `--trusted-ca-file`, `--client-crl-file` and
/// `--client-cert-allowed-hostname`.
pub fn acceptor(config: &Config) -> anyhow::Result<TlsAcceptor> {
    let (cert, key) = server_certificate(config)?;
    let (provider, versions) = provider_and_versions(config)?;
    let provider = Arc::new(provider);
    let certificate = Reloading::new(&cert, &key, provider.clone())?;
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(&versions)?;
    let builder = match &config.trusted_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&read(ca)?) {
                roots.add(c?)?;
            }
            builder.with_client_cert_verifier(Arc::new(ClientCertificates::new(
                config,
                Arc::new(roots),
                provider,
            )?))
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

/// The server certificate's files: `--cert-file` and `--key-file`, or with `--auto-tls` and
/// neither, a self-signed certificate made once in `<data-dir>/fixtures/client`, as etcd makes it.
fn server_certificate(config: &Config) -> anyhow::Result<(PathBuf, PathBuf)> {
    match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => {
            if config.auto_tls {
                tracing::warn!("ignoring client auto TLS since certs given");
            }
            Ok((cert.clone(), key.clone()))
        }
        _ if config.auto_tls => self_signed(config),
        _ => anyhow::bail!("https:// client URLs need --cert-file and --key-file"),
    }
}

/// etcd's self-signed certificate for `--auto-tls`: organisation "etcd", the listen URLs' hosts as
/// its names, valid `--self-signed-cert-validity` years; kept and used again by later starts.
fn self_signed(config: &Config) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = config.data_dir.join("fixtures").join("client");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let hosts: Vec<String> = config
        .listen_client_urls
        .iter()
        .chain(&config.listen_client_http_urls)
        .filter_map(|url| url.split_once("://"))
        .map(|(_, authority)| {
            let host = authority
                .rsplit_once(':')
                .map_or(authority, |(host, _)| host);
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        })
        .collect();
    let pair = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(hosts)?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "etcd");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + time::Duration::days(365 * config.self_signed_cert_validity as i64);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyEncipherment,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let made = params.self_signed(&pair)?;
    std::fs::create_dir_all(&dir)?;
    let mut options = std::fs::OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(options.write(true).create_new(true), 0o600);
    std::io::Write::write_all(&mut options.open(&key)?, pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert, made.pem())?;
    tracing::info!(
        cert = %cert.display(),
        not_after = %params.not_after,
        "made a self-signed certificate for the client URLs (--auto-tls)"
    );
    Ok((cert, key))
}

/// The cryptography offered: with `--cipher-suites`, TLS 1.2 takes only those of them that rustls
/// has, in their order (TLS 1.3's suites are not chosen, as in Go); the versions between
/// `--tls-min-version` and `--tls-max-version`, less TLS 1.2 if none of its suites is left.
fn provider_and_versions(
    config: &Config,
) -> anyhow::Result<(CryptoProvider, Vec<&'static SupportedProtocolVersion>)> {
    let mut provider = tokio_rustls::rustls::crypto::ring::default_provider();
    let mut versions = Vec::new();
    if config.tls_min_version.as_deref() != Some("TLS1.3") {
        versions.push(&TLS12);
    }
    if config.tls_max_version.as_deref() != Some("TLS1.2") {
        versions.push(&TLS13);
    }
    if config.cipher_suites.is_empty() {
        return Ok((provider, versions));
    }
    let mut chosen: Vec<SupportedCipherSuite> = provider
        .cipher_suites
        .iter()
        .filter(|s| s.version() == &TLS13)
        .copied()
        .collect();
    let mut not_offered = Vec::new();
    for name in &config.cipher_suites {
        match crate::config::cipher_suite(name).map_err(anyhow::Error::msg)? {
            Some(rustls_name) => {
                let suite = provider
                    .cipher_suites
                    .iter()
                    .find(|s| s.suite().as_str() == Some(rustls_name));
                if let Some(suite) = suite.filter(|s| s.version() == &TLS12) {
                    if !chosen.contains(suite) {
                        chosen.push(*suite);
                    }
                }
            }
            None => not_offered.push(name.as_str()),
        }
    }
    if !not_offered.is_empty() {
        tracing::warn!(
            suites = ?not_offered,
            "cipher suites of --cipher-suites that rustls does not have (no forward secrecy, or \
             not AEAD) are not offered; the others are"
        );
    }
    if !chosen.iter().any(|s| s.version() == &TLS12) {
        versions.retain(|v| *v != &TLS12);
        anyhow::ensure!(
            !versions.is_empty(),
            "none of --cipher-suites is offered by Strata, and --tls-max-version rules out TLS 1.3"
        );
        tracing::warn!("none of --cipher-suites is offered by Strata: TLS 1.3 only");
    }
    provider.cipher_suites = chosen;
    Ok((provider, versions))
}

/// Client certificates verified as etcd verifies them: against the trusted CA (required with
/// `--client-cert-auth`); against `--client-crl-file`, read again whenever it changes (etcd reads
/// it for every connection); and valid for one of `--client-cert-allowed-hostname`.
#[derive(Debug)]
struct ClientCertificates {
    chains: Chains,
    mandatory: bool,
    allowed_hostnames: Vec<ServerName<'static>>,
    /// The trusted CAs' names, which the server sends clients to choose a certificate by.
    hints: Vec<DistinguishedName>,
    /// The revocation list's modification time as last read, and the verifier made with it.
    current: RwLock<(Option<SystemTime>, Arc<dyn ClientCertVerifier>)>,
}

/// What a client's chain is verified against: the trusted CAs and the revocation list, if any.
#[derive(Debug)]
struct Chains {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    crl: Option<PathBuf>,
}

impl Chains {
    /// The revocation list's modification time, as the verifier's version.
    fn stamp(&self) -> Option<SystemTime> {
        let crl = self.crl.as_ref()?;
        std::fs::metadata(crl).and_then(|m| m.modified()).ok()
    }

    /// A verifier with the revocation list as it is now.
    fn verifier(&self, mandatory: bool) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
        let mut builder =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone());
        if let Some(crl) = &self.crl {
            let crls = CertificateRevocationListDer::pem_slice_iter(&read(crl)?)
                .collect::<Result<Vec<_>, _>>()?;
            // As etcd, a certificate is refused if the list names it, and only then.
            builder = builder.with_crls(crls).allow_unknown_revocation_status();
        }
        if !mandatory {
            builder = builder.allow_unauthenticated();
        }
        Ok(builder.build()?)
    }
}

impl ClientCertificates {
    fn new(
        config: &Config,
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
    ) -> anyhow::Result<ClientCertificates> {
        let allowed_hostnames = config
            .client_cert_allowed_hostnames
            .iter()
            .map(|h| {
                ServerName::try_from(h.clone()).map_err(|e| {
                    anyhow::anyhow!("--client-cert-allowed-hostname {h:?} is not a host name: {e}")
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let chains = Chains {
            roots,
            provider,
            crl: config.client_crl_file.clone(),
        };
        let stamp = chains.stamp();
        let built = chains.verifier(config.client_cert_auth)?;
        Ok(ClientCertificates {
            hints: built.root_hint_subjects().to_vec(),
            current: RwLock::new((stamp, built)),
            chains,
            mandatory: config.client_cert_auth,
            allowed_hostnames,
        })
    }

    /// The verifier for the revocation list as it is now.
    fn verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, tokio_rustls::rustls::Error> {
        let now = self.chains.stamp();
        {
            let current = self.current.read().expect("verifier lock");
            if current.0 == now {
                return Ok(current.1.clone());
            }
        }
        let built = self.chains.verifier(self.mandatory).map_err(|e| {
            tracing::warn!(error = %e, "cannot read --client-crl-file; refusing client certificates");
            tokio_rustls::rustls::Error::General(format!("certificate revocation list: {e}"))
        })?;
        *self.current.write().expect("verifier lock") = (now, built.clone());
        Ok(built)
    }

    fn settled(&self) -> Arc<dyn ClientCertVerifier> {
        self.current.read().expect("verifier lock").1.clone()
    }
}

impl ClientCertVerifier for ClientCertificates {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, tokio_rustls::rustls::Error> {
        let verified = self
            .verifier()?
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.allowed_hostnames.is_empty() {
            return Ok(verified);
        }
        let parsed = ParsedCertificate::try_from(end_entity)?;
        if self
            .allowed_hostnames
            .iter()
            .any(|name| verify_server_name(&parsed, name).is_ok())
        {
            return Ok(verified);
        }
        Err(tokio_rustls::rustls::Error::General(
            "the client certificate is valid for none of --client-cert-allowed-hostname".to_owned(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        self.settled().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        self.settled().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.settled().supported_verify_schemes()
    }
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
pub fn accept<S>(
    mut incoming: impl Stream<Item = std::io::Result<S>> + Send + Unpin + 'static,
    acceptor: TlsAcceptor,
) -> impl Stream<Item = std::io::Result<TlsStream<S>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (accepted, rx) = tokio::sync::mpsc::channel(ACCEPTED);
    // Accepting ends with the server: once nobody takes handshaken connections any more.
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = accepted.closed() => return,
                stream = incoming.next() => stream,
            };
            let Some(stream) = stream else { return };
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
