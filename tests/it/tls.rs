//! TLS on https:// client URLs with etcd's flags: etcdctl with a client certificate gets in, one
//! without is refused when --client-cert-auth is set; `strata snapshot save` connects with them too. Certificates are made by openssl for the test.

use crate::support::{etcdctl_binary, Strata};
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
fn certificates(dir: &Path) {
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

#[test]
fn https_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let strata = Strata::start_with(&[
        "--listen-client-urls",
        "https://127.0.0.1:0",
        "--cert-file",
        &file("server.pem"),
        "--key-file",
        &file("server-key.pem"),
        "--trusted-ca-file",
        &file("ca.pem"),
        "--client-cert-auth",
    ]);
    let endpoint = format!("https://{}", strata.address);
    let etcdctl = |with_client_cert: bool, args: &[&str]| {
        let mut command = Command::new(etcdctl_binary());
        command
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoint, "--cacert", &file("ca.pem")])
            .args(["--dial-timeout", "3s", "--command-timeout", "3s"]);
        if with_client_cert {
            command.args([
                "--cert",
                &file("client.pem"),
                "--key",
                &file("client-key.pem"),
            ]);
        }
        command.args(args).output().unwrap()
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
