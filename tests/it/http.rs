//! The plain HTTP endpoints on the client port, over HTTP/1.1 as probes and scrapers speak it.

use crate::support::{start_both, Etcd, Process, Strata};
use std::io::{Read, Write};
use std::net::TcpStream;

/// The status code and body of `GET path` from the server's client address.
fn get(server: &Process, path: &str) -> (u16, String) {
    get_from(server.address, path)
}

/// The status code and body of a JSON `POST` of `body` to `path` at `address`.
pub fn post_json(address: std::net::SocketAddr, path: &str, body: &str) -> (u16, String) {
    request(
        address,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// The status code and body of `GET path` from `address`.
pub fn get_from(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    request(
        address,
        &format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"),
    )
}

/// A counter of `server`'s `/metrics`.
pub fn counter(server: &Strata, name: &str) -> u64 {
    let (status, metrics) = get_from(server.address, "/metrics");
    assert_eq!(status, 200);
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Sends one HTTP/1.1 request and reads the status and body of its answer.
fn request(address: std::net::SocketAddr, text: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.write_all(text.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

#[test]
fn health_version_and_metrics_answer_as_etcd_does() {
    let (etcd, strata) = start_both();
    for path in [
        "/health",
        "/health?serializable=true",
        "/version",
        "/metrics",
        "/nothing",
    ] {
        assert_eq!(get(&strata, path).0, get(&etcd, path).0, "status of {path}");
    }
    // etcd 3.5 added the reason (Debian's 3.4 has only the health).
    assert_eq!(
        get(&strata, "/health").1,
        r#"{"health":"true","reason":""}"#
    );
    let version = get(&strata, "/version").1;
    assert!(version.starts_with(r#"{"etcdserver":"3.5."#), "{version}");
    assert!(version.ends_with(r#","etcdcluster":"3.5.0"}"#), "{version}");
    for gauge in [
        "etcd_server_has_leader 1",
        "etcd_server_is_leader 1",
        "etcd_debugging_mvcc_current_revision 1",
        "etcd_server_quota_backend_bytes 2147483648",
    ] {
        assert!(get(&strata, "/metrics").1.contains(gauge), "{gauge}");
        assert!(get(&etcd, "/metrics")
            .1
            .contains(&gauge.replace("2147483648", "2.147483648e+09")));
    }
}

/// etcd 3.5's /livez and /readyz (Debian's 3.4 has neither).
#[test]
fn livez_and_readyz() {
    let strata = Strata::start();
    assert_eq!(get(&strata, "/livez"), (200, "ok\n".to_owned()));
    assert_eq!(
        get(&strata, "/readyz/linearizable_read"),
        (200, "ok\n".to_owned())
    );
    assert_eq!(
        get(&strata, "/readyz?verbose&exclude=non_learner").1,
        "[+]data_corruption ok\n[+]linearizable_read ok\n[+]serializable_read ok\nok\n"
    );
    // The gateway takes POST only (etcd's answers GET with 405).
    assert_eq!(get(&strata, "/v3/kv/range").0, 405);
    assert_eq!(get(&strata, "/v3/watch").0, 405);
}

/// `--log-format json`: one JSON object per log line, fields included.
#[test]
fn json_logs() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--listen-client-urls",
            "http://127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (found, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let line = stderr
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("ready to serve client requests"));
        let _ = found.send(line);
    });
    // Bounds a failing test only: the server logs its ready line at once.
    let ready = ready.recv_timeout(std::time::Duration::from_secs(30));
    let _ = child.kill();
    let _ = child.wait();
    let ready = ready.ok().flatten().expect("a ready line");
    let line: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(line["level"], "INFO");
    assert!(line["fields"]["address"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
}

/// A scrape as (series → value), series being the name with its labels. Asked in HTTP/1.0, so
/// that the body comes whole rather than in chunks.
fn scrape(server: &Process) -> std::collections::BTreeMap<String, f64> {
    let mut stream = TcpStream::connect(server.address).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_once("\r\n\r\n")
        .expect("a body")
        .1
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The counters move with the requests, as etcd's do: the same requests to both give the same
/// gRPC call counts by method and code, KV operation counts and watcher gauges; every etcd_ and
/// grpc_ family Strata exports, etcd exports too.
#[tokio::test]
async fn metrics_count_what_happened() {
    use crate::requests::{put, txn};
    use crate::watch::create;
    use strata::proto::etcdserverpb::request_op::Request;
    use strata::proto::etcdserverpb::watch_client::WatchClient;
    use strata::proto::etcdserverpb::watch_request::RequestUnion;
    use strata::proto::etcdserverpb::*;
    let (etcd, strata) = start_both();
    let mut watches = Vec::new();
    for server in [&*etcd, &*strata] {
        let mut kv = server.kv().await;
        for i in 0..3 {
            kv.put(put("k", &i.to_string())).await.unwrap();
        }
        let key = crate::requests::get("k");
        kv.range(key.clone()).await.unwrap();
        let future = kv
            .range(RangeRequest {
                revision: 99,
                ..key.clone()
            })
            .await;
        assert_eq!(future.unwrap_err().code(), tonic::Code::OutOfRange);
        kv.txn(txn(
            Vec::new(),
            vec![
                Request::RequestPut(put("t", "1")),
                Request::RequestRange(key),
            ],
            Vec::new(),
        ))
        .await
        .unwrap();
        kv.delete_range(DeleteRangeRequest {
            key: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let (send, requests) = tokio::sync::mpsc::channel(4);
        for key in ["a", "b"] {
            let request = WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(create(key, "", 0))),
            };
            send.send(request).await.unwrap();
        }
        let mut stream = WatchClient::new(server.channel().await)
            .watch(tokio_stream::wrappers::ReceiverStream::new(requests))
            .await
            .unwrap()
            .into_inner();
        for _ in 0..2 {
            assert!(stream.message().await.unwrap().unwrap().created);
        }
        watches.push((send, stream));
    }

    let (want, got) = (scrape(&etcd), scrape(&strata));
    let families = |scraped: &std::collections::BTreeMap<String, f64>| {
        scraped
            .keys()
            .map(|s| s.split(['{', ' ']).next().unwrap().to_owned())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let etcds = families(&want);
    for family in families(&got) {
        let base = family
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        if base.starts_with("etcd_") || base.starts_with("grpc_") {
            assert!(
                etcds.iter().any(|f| f.starts_with(base)),
                "etcd has no {family}"
            );
        }
    }
    let kv = "grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"";
    for series in [
        format!("grpc_server_started_total{{grpc_method=\"Put\",{kv}}}"),
        format!("grpc_server_handled_total{{grpc_code=\"OK\",grpc_method=\"Put\",{kv}}}"),
        format!("grpc_server_handled_total{{grpc_code=\"OK\",grpc_method=\"Range\",{kv}}}"),
        format!("grpc_server_handled_total{{grpc_code=\"OutOfRange\",grpc_method=\"Range\",{kv}}}"),
        format!("grpc_server_handled_total{{grpc_code=\"OK\",grpc_method=\"Txn\",{kv}}}"),
        "etcd_mvcc_put_total".to_owned(),
        "etcd_mvcc_delete_total".to_owned(),
        "etcd_mvcc_txn_total".to_owned(),
        "etcd_debugging_mvcc_watcher_total".to_owned(),
        "etcd_debugging_mvcc_watch_stream_total".to_owned(),
    ] {
        assert_eq!(got.get(&series), want.get(&series), "{series}");
        assert!(got.get(&series).is_some_and(|v| *v > 0.0), "{series}");
    }
    for series in [
        "etcd_disk_backend_commit_duration_seconds_count",
        "etcd_network_client_grpc_received_bytes_total",
        "etcd_network_client_grpc_sent_bytes_total",
        "strata_backend_append_revisions_count",
    ] {
        assert!(got.get(series).is_some_and(|v| *v > 0.0), "{series}");
    }
    // The embedded store syncs a write-ahead log; on PostgreSQL the database does.
    let syncs = got.get("etcd_disk_wal_fsync_duration_seconds_count");
    if crate::support::on_postgres() {
        assert_eq!(syncs, Some(&0.0));
    } else {
        assert!(syncs.is_some_and(|v| *v > 0.0), "{syncs:?}");
    }
    drop(watches);
}

/// An HTTP/1.1 request of the browser kind: `method path`, naming `host` (the server's address if
/// None) and `origin`. Returns the status, the `Access-Control-*` headers (sorted, names in lower
/// case), and the body.
fn browser(
    server: &Process,
    method: &str,
    path: &str,
    host: Option<&str>,
    origin: Option<&str>,
) -> (u16, Vec<String>, String) {
    let host = host.map_or_else(|| server.address.to_string(), str::to_owned);
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(origin) = origin {
        text.push_str(&format!("Origin: {origin}\r\n"));
    }
    if method == "POST" {
        text.push_str("Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
    } else {
        text.push_str("\r\n");
    }
    let mut stream = TcpStream::connect(server.address).unwrap();
    stream.write_all(text.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let mut cors: Vec<String> = lines
        .map(str::to_ascii_lowercase)
        .filter(|l| l.starts_with("access-control-"))
        .collect();
    cors.sort();
    (status, cors, body.to_owned())
}

/// etcd's access controller on the client URLs: CORS headers for the origins of `--cors` (all,
/// by default) and OPTIONS answered on any path, and on plain HTTP the Host checked against
/// `--host-whitelist` (a refusal is etcd's 421 and text). Each answer compared with etcd's.
#[test]
fn cors_and_the_host_whitelist_answer_as_etcd_does() {
    let configured: &[&str] = &[
        "--cors=http://a.example:80,http://b.example:8080",
        "--host-whitelist=localhost,127.0.0.1",
    ];
    for flags in [&[][..], configured] {
        let etcd = Etcd::start_with(flags);
        let strata = Strata::start_with(flags);
        let cases: &[(&str, &str, Option<&str>, Option<&str>)] = &[
            ("GET", "/version", None, None),
            ("GET", "/version", None, Some("http://a.example:80")),
            ("GET", "/health", None, Some("http://a.example")),
            ("GET", "/health", None, Some("http://evil.example")),
            ("POST", "/v3/kv/range", None, Some("http://b.example:8080")),
            ("OPTIONS", "/v3/kv/range", None, Some("http://a.example:80")),
            ("OPTIONS", "/v3/kv/range", None, Some("http://evil.example")),
            ("OPTIONS", "/anything", None, None),
            ("GET", "/version", Some("localhost"), None),
            ("GET", "/version", Some("evil.example:2379"), None),
            (
                "GET",
                "/health",
                Some("LOCALHOST"),
                Some("http://a.example:80"),
            ),
            (
                "OPTIONS",
                "/v3/kv/range",
                Some("evil.example"),
                Some("http://a.example:80"),
            ),
            ("POST", "/v3/kv/put", Some("[::1]:2379"), None),
        ];
        for &(method, path, host, origin) in cases {
            let (status, cors, body) = browser(&strata, method, path, host, origin);
            let (etcd_status, etcd_cors, etcd_body) = browser(&etcd, method, path, host, origin);
            let case = format!("{flags:?} {method} {path} host {host:?} origin {origin:?}");
            assert_eq!((status, &cors), (etcd_status, &etcd_cors), "{case}");
            if status == 421 || method == "OPTIONS" {
                assert_eq!(body, etcd_body, "{case}");
            }
        }
    }
}
