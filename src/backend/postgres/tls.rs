//! The connection string as libpq reads it, TLS included: tokio-postgres takes everything but the
//! certificate options, so those (`sslmode`'s verifying values, `sslrootcert`, `sslcert`, `sslkey`)
//! are taken out here and turn into a rustls client configuration.
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow`, `prefer` (the default) | if the server offers it | not verified (as libpq) |
//! | `require` | always | not verified, unless `sslrootcert` is given: then as `verify-ca` (as libpq) |
//! | `verify-ca` | always | signed by a CA of `sslrootcert` |
//! | `verify-full` | always | signed by a CA of `sslrootcert`, and issued for the host connected to |
//!
//! `sslrootcert` defaults to `~/.postgresql/root.crt`, as libpq's does; `sslcert` and `sslkey` give a
//! client certificate. `allow` tries TLS first where libpq tries without it first.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_postgres::config::SslMode;
use tokio_postgres::Config;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{self, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// Where and how to connect.
#[derive(Clone)]
pub struct Connection {
    pub config: Config,
    pub tls: MakeRustlsConnect,
    /// Of several hosts, the one that last took a connection as asked, tried first (see
    /// `connect::connect`); shared by every clone.
    pub last_good: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// How the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Verify {
    Nothing,
    Chain,
    ChainAndHost,
}

/// The options taken out of the connection string.
#[derive(Default)]
struct TlsOptions {
    mode: Option<String>,
    root: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl TlsOptions {
    /// Takes `key`'s value if it is one of ours; false if it is not.
    fn take(&mut self, key: &str, value: &str) -> bool {
        match key {
            "sslmode" => self.mode = Some(value.to_owned()),
            "sslrootcert" => self.root = Some(PathBuf::from(value)),
            "sslcert" => self.cert = Some(PathBuf::from(value)),
            "sslkey" => self.key = Some(PathBuf::from(value)),
            _ => return false,
        }
        true
    }
}

/// Parses a libpq connection string: a `postgres://` or `postgresql://` URL, or `key=value` pairs.
pub fn parse(connection: &str) -> Result<Connection, String> {
    let mut options = TlsOptions::default();
    let rest = if connection.starts_with("postgres://") || connection.starts_with("postgresql://") {
        let (base, query) = connection.split_once('?').unwrap_or((connection, ""));
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                !options.take(key, &percent_decoded(value))
            })
            .collect();
        if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else {
        let mut kept = Vec::new();
        for (key, value) in pairs(connection)? {
            if !options.take(&key, &value) {
                kept.push(format!(
                    "{key}='{}'",
                    value.replace('\\', "\\\\").replace('\'', "\\'")
                ));
            }
        }
        kept.join(" ")
    };
    let mut config: Config = rest.parse().map_err(|e| format!("{e}"))?;
    let root = options.root.clone().or_else(|| {
        let home = std::env::var_os("HOME")?;
        let default = Path::new(&home).join(".postgresql/root.crt");
        default.exists().then_some(default)
    });
    let verify = match options.mode.as_deref().unwrap_or("prefer") {
        "disable" => {
            config.ssl_mode(SslMode::Disable);
            Verify::Nothing
        }
        "allow" | "prefer" => {
            config.ssl_mode(SslMode::Prefer);
            Verify::Nothing
        }
        "require" => {
            config.ssl_mode(SslMode::Require);
            if options.root.is_some() {
                Verify::Chain
            } else {
                Verify::Nothing
            }
        }
        "verify-ca" => {
            config.ssl_mode(SslMode::Require);
            Verify::Chain
        }
        "verify-full" => {
            config.ssl_mode(SslMode::Require);
            Verify::ChainAndHost
        }
        other => return Err(format!("invalid sslmode {other:?}")),
    };
    let tls = client_config(verify, root.as_deref(), &options)?;
    Ok(Connection {
        config,
        tls: MakeRustlsConnect::new(tls),
        last_good: Default::default(),
    })
}

/// The `key=value` pairs of a libpq connection string; values may be single-quoted, with `\\` and
/// `\'` inside.
fn pairs(connection: &str) -> Result<Vec<(String, String)>, String> {
    let mut chars = connection.chars().peekable();
    let mut pairs = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!(
                "missing \"=\" after {key:?} in the connection string"
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated quoted value of {key:?}")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(c);
            }
        }
        pairs.push((key, value));
    }
}

/// A URL query value with its `%XX` escapes decoded.
fn percent_decoded(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

fn client_config(
    verify: Verify,
    root: Option<&Path>,
    options: &TlsOptions,
) -> Result<ClientConfig, String> {
    let provider = Arc::new(crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if verify == Verify::Nothing {
        let lenient = Lenient {
            chain: None,
            provider,
        };
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(lenient))
    } else {
        let Some(root) = root else {
            return Err(
                "sslmode verify-ca and verify-full need sslrootcert (or ~/.postgresql/root.crt)"
                    .into(),
            );
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&read("sslrootcert", root)?) {
            let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", root.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("sslrootcert {}: {e}", root.display()))?;
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| e.to_string())?;
        if verify == Verify::Chain {
            let lenient = Lenient {
                chain: Some(webpki),
                provider,
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(lenient))
        } else {
            builder.with_webpki_verifier(webpki)
        }
    };
    match (&options.cert, &options.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(&read("sslcert", cert)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("sslcert {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_slice(&read("sslkey", key)?)
                .map_err(|e| format!("sslkey {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err("sslcert and sslkey go together".into()),
    }
}

/// What libpq checks short of `verify-full` (the handshake's signatures are checked always): with
/// no chain verifier any certificate (`prefer`, and `require` without a root certificate, which
/// encrypt without authenticating), else the chain to a trusted CA but not the host name
/// (`verify-ca`).
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, tokio_rustls::rustls::Error> {
        use tokio_rustls::rustls::Error::InvalidCertificate;
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_strings_keep_what_tokio_postgres_reads() {
        let c = parse("host=db port = 5433 user=strata password='it\\'s' dbname=x sslmode=disable")
            .unwrap();
        assert_eq!(c.config.get_ports(), &[5433]);
        assert_eq!(c.config.get_password(), Some(&b"it's"[..]));
        assert_eq!(c.config.get_dbname(), Some("x"));
        assert_eq!(c.config.get_ssl_mode(), SslMode::Disable);
        let unterminated = parse("host=db password='open").err().expect("refused");
        assert_eq!(unterminated, "unterminated quoted value of \"password\"");
    }

    #[test]
    fn urls_lose_only_the_certificate_options() {
        let c = parse(
            "postgres://u@db:6000/strata?application_name=fe1&sslmode=require&target_session_attrs=read-write",
        )
        .unwrap();
        assert_eq!(c.config.get_ssl_mode(), SslMode::Require);
        assert_eq!(c.config.get_application_name(), Some("fe1"));
        assert_eq!(c.config.get_dbname(), Some("strata"));
        assert_eq!(c.config.get_ports(), &[6000]);
    }

    #[test]
    fn verifying_modes_need_a_root_certificate() {
        let missing =
            parse("postgres://u@db/x?sslmode=verify-full&sslrootcert=/nonexistent/ca.crt");
        let error = missing.err().expect("refused");
        assert!(error.contains("/nonexistent/ca.crt"), "{error}");
        let bad = parse("host=db sslmode=sometimes").err().expect("refused");
        assert_eq!(bad, "invalid sslmode \"sometimes\"");
        assert_eq!(percent_decoded("%2Fetc%2Fca.crt"), "/etc/ca.crt");
    }
}
