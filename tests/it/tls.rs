//! TLS on https:// client URLs with etcd's flags: etcdctl with a client certificate gets in, one
//! without is refused when --client-cert-auth is set; `strata snapshot save` connects with them too. Certificates are made by openssl for the test.

use crate::support::{enable_auth, etcdctl_binary, Strata};
use std::path::Path;
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs (scripts/test installs it)");
    assert!(status.status.success(), "openssl {args:?}: {status:?}");
}

/// openssl's arguments for a new P-256 key, unencrypted.
const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// A CA, and the certificates it signs for the server and a client, valid for 127.0.0.1.
pub fn certificates(dir: &Path) {
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=strata-test-ca"];
    ca.extend(EC_KEY);
    ca.extend(["-keyout", "ca-key.pem", "-out", "ca.pem"]);
    openssl(dir, &ca);
    std::fs::write(
        dir.join("san.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    for name in ["server", "client"] {
        signed(dir, name);
    }
}

/// A certificate `<name>.pem` and its key `<name>-key.pem`, signed by the CA of `dir`, valid for
/// 127.0.0.1 and localhost.
pub fn signed(dir: &Path, name: &str) {
    let mut req = vec!["req", "-subj", "/CN=strata-test"];
    req.extend(EC_KEY);
    let (key, csr, pem) = (
        format!("{name}-key.pem"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    req.extend(["-keyout", &key, "-out", &csr]);
    openssl(dir, &req);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.cnf",
            "-out",
            &pem,
        ],
    );
}

/// Strata on https://, with the certificates of `dir`, requiring client certificates.
fn requiring_client_certificates(dir: &Path) -> Strata {
    requiring_client_certificates_and(dir, &[])
}

/// The same, with flags of `extra` besides.
fn requiring_client_certificates_and(dir: &Path, extra: &[&str]) -> Strata {
    let file = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let mut args = vec![
        "--listen-client-urls".to_owned(),
        "https://127.0.0.1:0".to_owned(),
        format!("--cert-file={}", file("server.pem")),
        format!("--key-file={}", file("server-key.pem")),
        format!("--trusted-ca-file={}", file("ca.pem")),
        "--client-cert-auth".to_owned(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    Strata::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// etcdctl on `endpoint` trusting `ca`, with the client certificate of `client` if given.
pub fn etcdctl_over_tls(endpoint: &str, ca: &Path, client: Option<&Path>) -> Command {
    let mut command = Command::new(etcdctl_binary());
    command
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--cacert"])
        .arg(ca)
        .args(["--dial-timeout", "3s", "--command-timeout", "3s"]);
    if let Some(dir) = client {
        command
            .arg("--cert")
            .arg(dir.join("client.pem"))
            .arg("--key")
            .arg(dir.join("client-key.pem"));
    }
    command
}

#[test]
fn https_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let strata = requiring_client_certificates(dir.path());
    let endpoint = format!("https://{}", strata.address);
    let etcdctl = |with_client_cert: bool, args: &[&str]| {
        let client = with_client_cert.then_some(dir.path());
        etcdctl_over_tls(&endpoint, &dir.path().join("ca.pem"), client)
            .args(args)
            .output()
            .unwrap()
    };
    let put = etcdctl(true, &["put", "secure", "yes"]);
    assert!(put.status.success(), "{put:?}");
    let get = etcdctl(true, &["get", "secure", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout), "yes\n");
    let refused = etcdctl(false, &["get", "secure"]);
    assert!(
        !refused.status.success(),
        "a client without a certificate got in"
    );
    // Clients that speak only HTTP/1.1 (probes, scrapers) are offered it by ALPN.
    let http1 = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &strata.address.to_string(),
            "-alpn",
            "http/1.1",
        ])
        .args(["-CAfile", &file("ca.pem"), "-cert", &file("client.pem")])
        .args(["-key", &file("client-key.pem")])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&http1.stdout);
    assert!(said.contains("ALPN protocol: http/1.1"), "{said}");

    // `strata snapshot save` (and `strata migrate`, which connects the same way) with etcdctl's
    // certificate flags.
    let snapshot = dir.path().join("snapshot.db");
    let save = |with_client_cert: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
        command.args(["snapshot", "save"]).arg(&snapshot).args([
            "--endpoints",
            &endpoint,
            "--cacert",
            &file("ca.pem"),
        ]);
        if with_client_cert {
            command.args([
                "--cert",
                &file("client.pem"),
                "--key",
                &file("client-key.pem"),
            ]);
        }
        command.output().unwrap()
    };
    let saved = save(true);
    assert!(saved.status.success(), "{saved:?}");
    assert!(snapshot.exists());
    assert!(!save(false).status.success());
}

/// Under --client-cert-auth with auth on, a request with no token is made by the user its
/// client certificate's common name names (here `strata-test`), as in etcd.
#[test]
fn the_client_certificate_names_the_user() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let strata = requiring_client_certificates(dir.path());
    let endpoint = format!("https://{}", strata.address);
    let etcdctl = |args: &[&str]| {
        let output = etcdctl_over_tls(&endpoint, &dir.path().join("ca.pem"), Some(dir.path()))
            .args(args)
            .output()
            .unwrap();
        let said =
            String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
        (output.status.success(), said.into_owned())
    };
    for setup in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "reader"],
        &["role", "grant-permission", "reader", "read", "secure"],
        &["user", "add", "strata-test:pw"],
        &["user", "grant-role", "strata-test", "reader"],
        &["put", "secure", "yes"],
        &["auth", "enable"],
    ] {
        let (ok, said) = etcdctl(setup);
        assert!(ok, "{setup:?}: {said}");
    }
    assert_eq!(
        etcdctl(&["get", "secure", "--print-value-only"]),
        (true, "yes\n".to_owned())
    );
    let (ok, said) = etcdctl(&["put", "secure", "no"]);
    assert!(
        !ok && said.contains("etcdserver: permission denied"),
        "{said}"
    );
    let (ok, said) = etcdctl(&["--user", "root:rootpw", "put", "secure", "no"]);
    assert!(ok, "{said}");
}

/// The header that carries a certificate's user inside the server cannot be sent from outside.
#[tokio::test]
async fn a_forged_certificate_user_is_ignored() {
    use strata::proto::etcdserverpb::*;
    let strata = Strata::start();
    enable_auth(&strata).await;
    let mut forged = tonic::Request::new(RangeRequest {
        key: "k".into(),
        ..Default::default()
    });
    forged
        .metadata_mut()
        .insert("strata-certificate-user", "root".parse().unwrap());
    let refused = strata.kv().await.range(forged).await.unwrap_err();
    assert_eq!(refused.message(), "etcdserver: user name is empty");
}

/// A certificate renewed in place (files replaced, as cert-manager or `kubeadm certs renew` do)
/// is served from the next handshake on, without a restart.
#[test]
fn a_renewed_certificate_is_served_without_a_restart() {
    let (first, renewed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    certificates(first.path());
    certificates(renewed.path());
    let file =
        |dir: &tempfile::TempDir, name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let strata = Strata::start_with(&[
        "--listen-client-urls",
        "https://127.0.0.1:0",
        "--cert-file",
        &file(&first, "server.pem"),
        "--key-file",
        &file(&first, "server-key.pem"),
    ]);
    let endpoint = format!("https://{}", strata.address);
    let trusts = |ca: &str| {
        etcdctl_over_tls(&endpoint, Path::new(ca), None)
            .args(["get", "anything"])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(trusts(&file(&first, "ca.pem")));
    assert!(!trusts(&file(&renewed, "ca.pem")));
    for name in ["server-key.pem", "server.pem"] {
        std::fs::copy(file(&renewed, name), file(&first, name)).unwrap();
    }
    assert!(trusts(&file(&renewed, "ca.pem")));
    assert!(!trusts(&file(&first, "ca.pem")));
}

/// Whether openssl completes a TLS handshake with `address` given `args` (versions, ciphers).
fn handshake(address: &str, dir: &Path, args: &[&str]) -> bool {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(["s_client", "-connect", address, "-CAfile", "ca.pem"])
        .args(["-cert", "client.pem", "-key", "client-key.pem"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    out.status.success() && said.contains("Verify return code: 0 (ok)")
}

#[test]
fn tls_versions_and_cipher_suites_as_etcd_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let serve = |args: &[&str]| {
        let mut all = vec![
            "--listen-client-urls".to_owned(),
            "https://127.0.0.1:0".to_owned(),
            format!("--cert-file={}", file("server.pem")),
            format!("--key-file={}", file("server-key.pem")),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        Strata::start_with(&all.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let tls13 = serve(&["--tls-min-version=TLS1.3"]);
    let address = tls13.address.to_string();
    assert!(handshake(&address, dir.path(), &["-tls1_3"]));
    assert!(!handshake(&address, dir.path(), &["-tls1_2"]));

    // The list limits TLS 1.2 to the suites it names, skipping those rustls lacks (etcd's CIS
    // hardening lists name some with RSA key exchange).
    let limited = serve(&[
        "--tls-max-version=TLS1.2",
        "--cipher-suites=TLS_RSA_WITH_AES_256_GCM_SHA384,TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ]);
    let address = limited.address.to_string();
    assert!(!handshake(&address, dir.path(), &["-tls1_3"]));
    assert!(handshake(
        &address,
        dir.path(),
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"]
    ));
    assert!(!handshake(
        &address,
        dir.path(),
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"]
    ));
    assert!(limited.log().contains("TLS_RSA_WITH_AES_256_GCM_SHA384"));
}

/// `openssl ca`'s files for the CA of `dir`, to revoke certificates with and write its list.
fn revocation_list(dir: &Path, revoke: &[&str]) {
    std::fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\ncrlnumber = crlnumber\n\
         default_md = sha256\ndefault_crl_days = 1\n",
    )
    .unwrap();
    std::fs::write(dir.join("index.txt"), "").unwrap();
    if !dir.join("crlnumber").exists() {
        std::fs::write(dir.join("crlnumber"), "01\n").unwrap();
    }
    let ca = [
        "-config",
        "ca.cnf",
        "-cert",
        "ca.pem",
        "-keyfile",
        "ca-key.pem",
    ];
    for certificate in revoke {
        let mut args = vec!["ca", "-revoke", certificate];
        args.extend(ca);
        openssl(dir, &args);
    }
    let mut args = vec!["ca", "-gencrl", "-out", "crl.new"];
    args.extend(ca);
    openssl(dir, &args);
    // In place at once, as an operator's renewal would be.
    std::fs::rename(dir.join("crl.new"), dir.join("crl.pem")).unwrap();
}

#[test]
fn revoked_client_certificates_are_refused_from_the_next_connection() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    signed(dir.path(), "other");
    revocation_list(dir.path(), &[]);
    let crl = format!("--client-crl-file={}", dir.path().join("crl.pem").display());
    let strata = requiring_client_certificates_and(dir.path(), &[&crl]);
    let endpoint = format!("https://{}", strata.address);
    let get_as = |client: &str| {
        etcdctl_over_tls(&endpoint, &dir.path().join("ca.pem"), None)
            .arg("--cert")
            .arg(dir.path().join(format!("{client}.pem")))
            .arg("--key")
            .arg(dir.path().join(format!("{client}-key.pem")))
            .args(["get", "k"])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(get_as("client"));
    assert!(get_as("other"));
    revocation_list(dir.path(), &["client.pem"]);
    assert!(!get_as("client"), "a revoked certificate got in");
    assert!(get_as("other"));
}

#[test]
fn client_certificates_must_name_an_allowed_host() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let serve = |allowed: &str| {
        let allowed = format!("--client-cert-allowed-hostname={allowed}");
        requiring_client_certificates_and(dir.path(), &[&allowed])
    };
    for (allowed, admitted) in [("localhost", true), ("elsewhere.example", false)] {
        let strata = serve(allowed);
        let got = etcdctl_over_tls(
            &format!("https://{}", strata.address),
            &dir.path().join("ca.pem"),
            Some(dir.path()),
        )
        .args(["get", "k"])
        .output()
        .unwrap();
        assert_eq!(got.status.success(), admitted, "{allowed}: {got:?}");
    }
}

#[test]
fn auto_tls_makes_a_certificate_once() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--listen-client-urls", "https://127.0.0.1:0", "--auto-tls"];
    let cert = dir.path().join("data/fixtures/client/cert.pem");
    let mut made = None;
    for _ in 0..2 {
        let strata = Strata::start_in(dir.path(), &args);
        let got = Command::new(etcdctl_binary())
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &format!("https://{}", strata.address)])
            // etcdctl 3.5 skips verification only so.
            .args(["--insecure-skip-tls-verify", "--insecure-transport=false"])
            .args(["put", "k", "v"])
            .output()
            .unwrap();
        assert!(got.status.success(), "{got:?}");
        let pem = std::fs::read(&cert).unwrap();
        assert!(made.get_or_insert(pem.clone()) == &pem, "made again");
        let text = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&cert)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains("O=etcd") || text.contains("O = etcd"),
            "{text}"
        );
        assert!(text.contains("IP Address:127.0.0.1"), "{text}");
    }
}
