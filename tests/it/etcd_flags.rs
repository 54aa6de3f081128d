//! Strata in etcd's place: kubeadm's etcd command lines over mutual TLS with the kubelet's probes
//! on the metrics URL, etcd's config file, `ETCD_*` variables, and malformed flags refused with
//! etcd's messages and exit statuses (the same command lines given to etcd itself).

use crate::http::get_from;
use crate::support::{
    etcd_binary, etcdctl_binary, free_port, on_postgres, postgres_database, Strata,
};
use crate::tls::{certificates, etcdctl_over_tls};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

/// kubeadm's layout of the etcd certificates under `pki/` (its server and peer certificates
/// both serve and authenticate; the API server's client certificate beside them).
fn kubeadm_certificates(dir: &Path) {
    certificates(dir);
    let etcd = dir.join("pki/etcd");
    std::fs::create_dir_all(&etcd).unwrap();
    for (from, to) in [
        ("ca.pem", "pki/etcd/ca.crt"),
        ("ca-key.pem", "pki/etcd/ca.key"),
        ("server.pem", "pki/etcd/server.crt"),
        ("server-key.pem", "pki/etcd/server.key"),
        ("server.pem", "pki/etcd/peer.crt"),
        ("server-key.pem", "pki/etcd/peer.key"),
        ("client.pem", "pki/apiserver-etcd-client.crt"),
        ("client-key.pem", "pki/apiserver-etcd-client.key"),
    ] {
        std::fs::copy(dir.join(from), dir.join(to)).unwrap();
    }
}

/// The arguments kubeadm's `getEtcdCommand` writes for a single control-plane node `node1` on
/// 127.0.0.1 (v1.36, or with `experimental` the 3.5-era names of v1.31 to v1.33), with the
/// certificates under `dir` and the given ports in place of 2379, 2380 and 2381.
fn kubeadm_arguments(dir: &Path, experimental: bool, ports: [u16; 3]) -> Vec<String> {
    let [client, peer, metrics] = ports;
    let pki = dir.join("pki").display().to_string();
    let data = dir.join("var/lib/etcd").display().to_string();
    let (corrupt_check, progress) = if experimental {
        (
            "--experimental-initial-corrupt-check=true",
            "--experimental-watch-progress-notify-interval=5s",
        )
    } else {
        (
            "--feature-gates=InitialCorruptCheck=true",
            "--watch-progress-notify-interval=5s",
        )
    };
    let mut args = vec![
        format!("--advertise-client-urls=https://127.0.0.1:{client}"),
        format!("--cert-file={pki}/etcd/server.crt"),
        "--client-cert-auth=true".to_owned(),
        format!("--data-dir={data}"),
        corrupt_check.to_owned(),
        format!("--initial-advertise-peer-urls=https://127.0.0.1:{peer}"),
        format!("--initial-cluster=node1=https://127.0.0.1:{peer}"),
        format!("--key-file={pki}/etcd/server.key"),
        format!("--listen-client-urls=https://127.0.0.1:{client},https://127.0.0.1:{client}"),
        format!("--listen-metrics-urls=http://127.0.0.1:{metrics}"),
        format!("--listen-peer-urls=https://127.0.0.1:{peer}"),
        "--name=node1".to_owned(),
        format!("--peer-cert-file={pki}/etcd/peer.crt"),
        "--peer-client-cert-auth=true".to_owned(),
        format!("--peer-key-file={pki}/etcd/peer.key"),
        format!("--peer-trusted-ca-file={pki}/etcd/ca.crt"),
        "--snapshot-count=10000".to_owned(),
        format!("--trusted-ca-file={pki}/etcd/ca.crt"),
        progress.to_owned(),
    ];
    args.sort();
    args
}

/// `etcdctl member list -w json` through `command`, as (name, peer URLs, client URLs).
fn members(mut command: Command) -> Vec<(String, Vec<String>, Vec<String>)> {
    let out = command
        .args(["member", "list", "-w", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("").to_owned(),
                strings(&m["peerURLs"]),
                strings(&m["clientURLs"]),
            )
        })
        .collect()
}

fn etcdctl(endpoint: &str) -> Command {
    let mut command = Command::new(etcdctl_binary());
    command
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--dial-timeout", "3s"]);
    command
}

/// The kubelet's probes of kubeadm's manifest, over plain HTTP on the metrics URL.
fn kubelet_probes(metrics: SocketAddr) {
    assert_eq!(get_from(metrics, "/livez"), (200, "ok\n".to_owned()));
    assert_eq!(get_from(metrics, "/readyz"), (200, "ok\n".to_owned()));
    let (status, health) = get_from(metrics, "/health");
    assert_eq!(
        (status, health.as_str()),
        (200, r#"{"health":"true","reason":""}"#)
    );
    let (status, scrape) = get_from(metrics, "/metrics");
    assert_eq!(status, 200);
    assert!(scrape.contains("etcd_server_has_leader 1"), "{scrape}");
}

/// Strata started with the arguments kubeadm writes (see [`kubeadm_arguments`]) in a new
/// directory with kubeadm's certificates, and the ports in place of 2379, 2380 and 2381.
pub fn kubeadm_strata(experimental: bool) -> (Strata, tempfile::TempDir, u16) {
    let (strata, dir, [client, ..]) = kubeadm_strata_on_ports(experimental);
    (strata, dir, client)
}

fn kubeadm_strata_on_ports(experimental: bool) -> (Strata, tempfile::TempDir, [u16; 3]) {
    let dir = tempfile::tempdir().unwrap();
    kubeadm_certificates(dir.path());
    let ports = [free_port(), free_port(), free_port()];
    let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
    command.args(kubeadm_arguments(dir.path(), experimental, ports));
    if on_postgres() {
        command.arg(format!("--backend={}", postgres_database(dir.path())));
    }
    (Strata::start_command(command), dir, ports)
}

#[test]
fn kubeadm_etcd_command_lines_serve_over_mutual_tls() {
    for experimental in [false, true] {
        let (strata, dir, ports) = kubeadm_strata_on_ports(experimental);
        let [client, peer, metrics] = ports;
        assert_eq!(strata.address.port(), client);
        kubelet_probes(SocketAddr::from(([127, 0, 0, 1], metrics)));

        let endpoint = format!("https://127.0.0.1:{client}");
        let pki = dir.path().join("pki");
        let api_server = |args: &[&str]| {
            let mut command = etcdctl_over_tls(&endpoint, &pki.join("etcd/ca.crt"), None);
            command
                .arg("--cert")
                .arg(pki.join("apiserver-etcd-client.crt"))
                .arg("--key")
                .arg(pki.join("apiserver-etcd-client.key"))
                .args(args);
            command
        };
        let put = api_server(&["put", "/registry/ns/default", "v"])
            .output()
            .unwrap();
        assert!(put.status.success(), "{put:?}");
        let get = api_server(&["get", "/registry/ns/default", "--print-value-only"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&get.stdout), "v\n");
        let without_certificate = etcdctl_over_tls(&endpoint, &pki.join("etcd/ca.crt"), None)
            .args(["get", "x"])
            .output()
            .unwrap();
        assert!(!without_certificate.status.success());

        let list = members(api_server(&[]));
        assert_eq!(
            list,
            vec![(
                "node1".to_owned(),
                vec![format!("https://127.0.0.1:{peer}")],
                vec![endpoint.clone()],
            )]
        );
        let log = strata.log();
        assert!(
            log.contains(&format!(
                "--listen-peer-urls=https://127.0.0.1:{peer} has no effect in Strata"
            )),
            "{log}"
        );
        assert!(log.contains("--snapshot-count=10000 has no effect in Strata"));
    }
}

#[test]
fn a_config_file_is_read_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (client, metrics) = (free_port(), free_port());
    let mut file = format!(
        "name: from-file\n\
         data-dir: {}\n\
         listen-client-urls: http://127.0.0.1:{client}\n\
         advertise-client-urls: http://127.0.0.1:{client}\n\
         listen-metrics-urls: http://127.0.0.1:{metrics}\n\
         initial-advertise-peer-urls: http://127.0.0.1:2390\n\
         max-txn-ops: 3\n\
         client-transport-security:\n  client-cert-auth: false\n",
        dir.path().join("data").display()
    );
    if on_postgres() {
        file.push_str(&format!("backend: {}\n", postgres_database(dir.path())));
    }
    let path = dir.path().join("etcd.conf.yml");
    std::fs::write(&path, file).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
    // The file alone counts: etcd ignores the other flags and the variables.
    command
        .arg("--config-file")
        .arg(&path)
        .args(["--name", "from-flag"])
        .env("ETCD_MAX_TXN_OPS", "1000");
    let strata = Strata::start_command(command);
    assert_eq!(strata.address.port(), client);
    let endpoint = format!("http://127.0.0.1:{client}");
    assert_eq!(
        members(etcdctl(&endpoint)),
        vec![(
            "from-file".to_owned(),
            vec!["http://127.0.0.1:2390".to_owned()],
            vec![endpoint.clone()]
        )]
    );
    let txn = etcdctl(&endpoint)
        .arg("txn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = txn.stdin.as_ref().unwrap();
    std::io::Write::write_all(&mut stdin, b"\nput a 1\nput b 2\nput c 3\nput d 4\n\n\n").unwrap();
    let out = txn.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("too many operations in txn request"),
        "{out:?}"
    );
    kubelet_probes(SocketAddr::from(([127, 0, 0, 1], metrics)));
}

#[test]
fn environment_variables_set_what_the_command_line_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let client = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
    command
        .env("ETCD_NAME", "from-env")
        .env("ETCD_DATA_DIR", dir.path().join("data"))
        .env("ETCD_NO_SUCH_FLAG", "1")
        .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"));
    if on_postgres() {
        command.env("STRATA_BACKEND", postgres_database(dir.path()));
    }
    let strata = Strata::start_command(command);
    let endpoint = format!("http://127.0.0.1:{client}");
    assert_eq!(members(etcdctl(&endpoint))[0].0, "from-env");
    let log = strata.log();
    assert!(
        log.contains("recognized and used environment variable ETCD_NAME=from-env"),
        "{log}"
    );
    assert!(log.contains("unrecognized environment variable ETCD_NO_SUCH_FLAG=1"));
}

/// Environment variables to run a program with.
type Variables<'a> = &'a [(&'a str, &'a str)];

/// What a program printed on standard error and how it exited, for a command line it refuses.
fn refused(program: &str, args: &[&str], vars: Variables) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let data = format!("--data-dir={}", dir.path().join("data").display());
    let client = format!("--listen-client-urls=http://127.0.0.1:{}", free_port());
    let advertise = client.replace("--listen-", "--advertise-");
    let peer = format!("--listen-peer-urls=http://127.0.0.1:{}", free_port());
    let mut command = Command::new(program);
    command.args([data, client, advertise, peer]).args(args);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in vars {
        command.env(k, v);
    }
    let out = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let code = out
        .status
        .code()
        .expect("exited, not killed: it refused to start");
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The reason etcd gave: its first line when Go's flag package refused the command line, or the
/// `error` of its last (JSON) log line when etcd did.
fn etcd_reason(code: i32, stderr: &str) -> String {
    if code == 2 {
        return stderr.lines().next().unwrap_or("").to_owned();
    }
    let last = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("{}");
    let line: serde_json::Value = serde_json::from_str(last).unwrap();
    line["error"]
        .as_str()
        .or_else(|| line["msg"].as_str())
        .unwrap_or("")
        .to_owned()
}

#[test]
fn malformed_flags_are_refused_as_etcd_refuses_them() {
    let cases: &[(&[&str], Variables)] = &[
        (&["--no-such-flag"], &[]),
        (&["--max-txn-ops=abc"], &[]),
        (&["--max-txn-ops=-1"], &[]),
        (&["--client-cert-auth=maybe"], &[]),
        (&["--initial-cluster-state=bogus"], &[]),
        (&["--grpc-keepalive-min-time=xyz"], &[]),
        (&["--max-concurrent-streams=x"], &[]),
        (&["--initial-advertise-peer-urls=foo"], &[]),
        (&["--initial-advertise-peer-urls=http://1.2.3.4"], &[]),
        (&["--listen-metrics-urls=http://127.0.0.1:1/metrics"], &[]),
        (&["--client-cert-auth", "false"], &[]),
        (&["---name"], &[]),
        (&["--name"], &[]),
        (&["--logger=bogus"], &[]),
        (&["--auto-compaction-mode=bogus"], &[]),
        (&["--election-timeout=1"], &[]),
        (&[], &[("ETCD_MAX_TXN_OPS", "abc")]),
        (
            &["--name=x", "--initial-cluster=y=http://localhost:2380"],
            &[],
        ),
        (&["--experimental-enable-lease-checkpoint-persist"], &[]),
        (
            &[],
            &[("ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT_PERSIST", "true")],
        ),
        (&["--enable-log-rotation"], &[]),
        (&["--enable-log-rotation", "--log-outputs=stderr"], &[]),
        (&["--log-outputs=default,/tmp/strata-never.log"], &[]),
        (
            &[
                "--enable-log-rotation",
                "--log-outputs=/tmp/strata-never.log",
                r#"--log-rotation-config-json={"maxsize": "1"}"#,
            ],
            &[],
        ),
        (
            &[
                "--enable-log-rotation",
                "--log-outputs=/tmp/strata-never.log",
                "--log-rotation-config-json=[]",
            ],
            &[],
        ),
        (
            &[
                "--name=x",
                // One URL missing: etcd lists several in Go's random map order.
                "--initial-cluster=x=http://127.0.0.1:2390,x=http://127.0.0.1:2391",
                "--initial-advertise-peer-urls=http://127.0.0.1:2391",
            ],
            &[],
        ),
    ];
    for (args, vars) in cases {
        let (etcd_code, etcd_stderr) = refused(&etcd_binary(), args, vars);
        let (code, stderr) = refused(env!("CARGO_BIN_EXE_strata"), args, vars);
        assert_eq!(
            code, etcd_code,
            "{args:?} {vars:?}: {stderr}\netcd: {etcd_stderr}"
        );
        let reason = etcd_reason(etcd_code, &etcd_stderr);
        assert_eq!(
            stderr.lines().next().unwrap_or(""),
            reason,
            "{args:?} {vars:?}: etcd said {etcd_stderr}"
        );
    }
    // A variable and a flag for the same setting: etcd stops (its log line carries no error).
    let (code, stderr) = refused(
        env!("CARGO_BIN_EXE_strata"),
        &["--name=b"],
        &[("ETCD_NAME", "a")],
    );
    assert_eq!(code, 1);
    assert!(stderr.starts_with("conflicting environment variable is shadowed"));
}

#[test]
fn version_and_help() {
    let version = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("-version")
        .output()
        .unwrap();
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("etcd Version: 3.5."));
    let help = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("--listen-peer-urls (accepted, no effect)")
    );
}

#[test]
fn unix_sockets_serve_clients_as_etcd_does() {
    let dir = tempfile::tempdir().unwrap();
    crate::tls::certificates(dir.path());
    let plain = dir.path().join("client.sock");
    let secure = dir.path().join("secure.sock");
    let file = |name: &str| dir.path().join(name).display().to_string();
    let mut strata = Strata::start_with(&[
        &format!(
            "--listen-client-urls=http://127.0.0.1:0,unix://{},unixs://{}",
            plain.display(),
            secure.display()
        ),
        &format!("--cert-file={}", file("server.pem")),
        &format!("--key-file={}", file("server-key.pem")),
    ]);
    let over_socket = format!("unix://{}", plain.display());
    let put = etcdctl(&over_socket)
        .args(["put", "k", "v"])
        .output()
        .unwrap();
    assert!(put.status.success(), "{put:?}");
    let get = etcdctl(&strata.endpoint())
        .args(["get", "k", "--print-value-only"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&get.stdout), "v\n");
    let list = members(etcdctl(&over_socket));
    assert_eq!(
        list[0].2,
        vec![
            strata.endpoint(),
            over_socket.clone(),
            format!("unixs://{}", secure.display())
        ]
    );
    let handshake = Command::new("openssl")
        .current_dir(dir.path())
        .arg("s_client")
        .arg("-unix")
        .arg(&secure)
        .args(["-CAfile", "ca.pem", "-servername", "localhost"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&handshake.stdout).contains("Verify return code: 0 (ok)"),
        "{handshake:?}"
    );
    assert!(strata.terminate().success());
    assert!(!plain.exists() && !secure.exists(), "sockets left behind");
}

/// A server's (cluster id, member id, first member's id), and the first member's peer URL.
async fn ids(server: &crate::support::Process) -> ((u64, u64, u64), String) {
    use strata::proto::etcdserverpb::cluster_client::ClusterClient;
    use strata::proto::etcdserverpb::MemberListRequest;
    let list = ClusterClient::new(server.channel().await)
        .member_list(MemberListRequest::default())
        .await
        .unwrap()
        .into_inner();
    let header = list.header.unwrap();
    let first = &list.members[0];
    (
        (header.cluster_id, header.member_id, first.id),
        first.peer_ur_ls.first().cloned().unwrap_or_default(),
    )
}

/// A new member takes the ids etcd derives from its command line (`--initial-cluster`,
/// `--initial-advertise-peer-urls`, `--initial-cluster-token`), and keeps them for life.
#[tokio::test]
async fn a_new_member_has_the_ids_etcd_gives_it() {
    let etcd = crate::support::Etcd::start_with(&["--initial-cluster-token=tok1"]);
    let (theirs, peer) = ids(&etcd).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flags = [
        "--name=diff".to_owned(),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=diff={peer}"),
    ];
    let args = |token: &'static str| {
        let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
        args.push(token);
        embedded(&data, &args)
    };
    let mut strata = Strata::start_command(args("--initial-cluster-token=tok1"));
    assert_eq!(ids(&strata).await.0, theirs);
    assert!(strata.terminate().success());
    let strata = Strata::start_command(args("--initial-cluster-token=other"));
    assert_eq!(ids(&strata).await.0, theirs, "the store keeps its ids");
}

/// On PostgreSQL a new database takes the cluster id etcd derives from the command line of the
/// frontend that creates it (each frontend has a member id of its own): a kubeadm-style command
/// line shows etcd's cluster id there too, and the database keeps it.
#[tokio::test]
async fn a_new_database_has_the_cluster_id_etcd_gives_it() {
    let etcd = crate::support::Etcd::start_with(&["--initial-cluster-token=tok1"]);
    let ((cluster, _, _), peer) = ids(&etcd).await;
    let dir = tempfile::tempdir().unwrap();
    let backend = crate::support::postgres_database(dir.path());
    let frontend = |token: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
        command.args([
            "--name=diff",
            &format!("--initial-advertise-peer-urls={peer}"),
            &format!("--initial-cluster=diff={peer}"),
            token,
            "--backend",
            &backend,
        ]);
        Strata::start_command(command)
    };
    let mut strata = frontend("--initial-cluster-token=tok1");
    assert_eq!(ids(&strata).await.0 .0, cluster);
    assert!(strata.terminate().success());
    let strata = frontend("--initial-cluster-token=other");
    assert_eq!(
        ids(&strata).await.0 .0,
        cluster,
        "the database keeps its id"
    );
}

/// strata on the embedded store in `data`, whatever backend the tests run on, with `args`.
fn embedded(data: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
    command
        .arg("--data-dir")
        .arg(data)
        .args(["--backend", "embedded"])
        .args(args);
    command
}

/// Puts keys `k0`, `k1`, ... of `value` through etcdctl, `count` of them.
fn puts(strata: &Strata, count: usize, value: &str) {
    for i in 0..count {
        let put = etcdctl(&strata.endpoint())
            .args(["put", &format!("k{i}"), value])
            .output()
            .unwrap();
        assert!(put.status.success(), "{put:?}");
    }
}

/// `--experimental-initial-corrupt-check` (and `--feature-gates=InitialCorruptCheck=true`, as
/// kubeadm passes it) checks every page of the embedded store's file before serving it, and
/// refuses to serve one that fails; the store itself (not the test's backend) is what is checked.
#[test]
fn the_initial_corruption_check_refuses_a_damaged_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = |args: &[&str]| embedded(&data, args);
    {
        let mut strata = Strata::start_command(run(&["--feature-gates=InitialCorruptCheck=true"]));
        puts(&strata, 200, &"v".repeat(100));
        assert!(strata
            .log()
            .contains("initial corruption checking passed; no corruption"));
        assert!(strata.terminate().success());
    }
    let file = data.join("strata.redb");
    // Damage inside every page past the file's header, so that the pages in use are hit.
    let mut bytes = std::fs::read(&file).unwrap();
    for page in (2 * 4096..bytes.len()).step_by(4096) {
        for byte in &mut bytes[page + 64..page + 96] {
            *byte ^= 0xff;
        }
    }
    std::fs::write(&file, bytes).unwrap();
    let refused = run(&[
        "--experimental-initial-corrupt-check",
        "--listen-client-urls=http://127.0.0.1:0",
    ])
    .output()
    .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("failed the initial corruption check")
    );
    // Without the check the store is refused too, with the way to check it, not by a crash.
    let refused = run(&["--listen-client-urls=http://127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is damaged"));
}

#[test]
fn flags_for_the_gateway_sockets_and_slow_requests() {
    // --enable-grpc-gateway=false: etcd's /v3/ JSON paths answer 404; the probes stay.
    let strata = Strata::start_with(&["--enable-grpc-gateway=false"]);
    let range = crate::http::post_json(strata.address, "/v3/kv/range", r#"{"key":"YQ=="}"#);
    assert_eq!(range.0, 404);
    assert_eq!(get_from(strata.address, "/health").0, 200);

    // --warning-apply-duration: a request slower than it is logged and counted as etcd's.
    let strata = Strata::start_with(&["--warning-apply-duration=1ns"]);
    puts(&strata, 1, "v");
    let (_, metrics) = get_from(strata.address, "/metrics");
    assert!(
        metrics.contains("etcd_server_slow_apply_total 1"),
        "{metrics}"
    );
    assert!(strata.log().contains("apply request took too long"));
    assert!(!strata.log().contains("request stats"), "past 300 ms only");

    // --warning-unary-request-duration (etcd 3.6; 3.5's fixed 300 ms otherwise): a unary request
    // slower than it is logged as etcd's "request stats", with the method and the client.
    let strata = Strata::start_with(&["--warning-unary-request-duration=1ns"]);
    puts(&strata, 1, "v");
    let log = strata.log();
    let stats = log
        .lines()
        .find(|l| l.contains("request stats") && l.contains("/etcdserverpb.KV/Put"))
        .unwrap_or_else(|| panic!("no request stats for the put: {log}"));
    assert!(stats.contains("remote=127.0.0.1:"), "{stats}");

    // --socket-reuse-port: a second server may take the same port.
    let port = free_port();
    let url = format!("--listen-client-urls=http://127.0.0.1:{port}");
    let first = Strata::start_with(&[&url, "--socket-reuse-port"]);
    let second = Strata::start_with(&[&url, "--socket-reuse-port=true"]);
    assert_eq!(first.address, second.address);
}

/// `--unsafe-no-fsync`: the embedded store acknowledges writes without syncing its write-ahead log
/// (none is counted in etcd's fsync histogram), and still keeps them across a clean restart.
#[test]
fn unsafe_no_fsync_skips_the_log_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let run = || Strata::start_command(embedded(&dir.path().join("data"), &["--unsafe-no-fsync"]));
    let mut strata = run();
    puts(&strata, 20, "v");
    let (_, metrics) = get_from(strata.address, "/metrics");
    assert!(
        metrics.contains("etcd_disk_wal_fsync_duration_seconds_count 0\n"),
        "{metrics}"
    );
    assert!(strata.terminate().success());
    let strata = run();
    let got = etcdctl(&strata.endpoint())
        .args(["get", "k", "--prefix", "--keys-only", "-w", "json"])
        .output()
        .unwrap();
    let got: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(got["count"], 20);
}
