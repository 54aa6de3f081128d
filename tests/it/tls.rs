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

/// A CA, and a certificate it signs for `name`, valid for 127.0.0.1.
pub fn certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=strata-test-ca"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca-key.pem", "-out", "ca.pem"]);
    openssl(dir, &ca);
    std::fs::write(
        dir.join("san.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    for name in ["server", "client"] {
        let mut req = vec!["req", "-subj", "/CN=strata-test"];
        req.extend(ec);
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
}

/// Strata on https://, with the certificates of `dir`, requiring client certificates.
fn requiring_client_certificates(dir: &Path) -> Strata {
    let file = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    Strata::start_with(&[
        "--listen-client-urls",
        "https://127.0.0.1:0",
        "--cert-file",
        &file("server.pem"),
        "--key-file",
        &file("server-key.pem"),
        "--trusted-ca-file",
        &file("ca.pem"),
        "--client-cert-auth",
    ])
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
