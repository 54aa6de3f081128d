//! The JSON gateway: the same JSON requests POSTed to etcd's grpc-gateway and to Strata's get the
//! same status and the same body, ids and term aside.

use crate::support::{start_both, Process};
use std::io::{Read, Write};
use std::net::TcpStream;

/// The status and body of a POST of `body` to `path`.
fn post(server: &Process, path: &str, body: &str) -> (u16, String) {
    post_as(server, None, path, body)
}

/// A POST carrying an auth token in its Authorization header, if given.
fn post_as(server: &Process, token: Option<&str>, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(server.address).unwrap();
    let authorization = token
        .map(|t| format!("Authorization: {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         {authorization}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        server.address,
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, blank_ids(&body))
}

/// The body of a chunked HTTP/1.1 response (etcd's gateway sends its errors so, with trailers).
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    body
}

/// A JSON body with the values of the id and term fields blanked (they differ between any two
/// servers), written compactly: etcd 3.5's gateway writes JSON through Go's protojson, which spaces
/// its output differently from build to build so that nobody compares it byte for byte. A body
/// that is not JSON is left as it is.
fn blank_ids(body: &str) -> String {
    fn blank(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(fields) => {
                for (name, field) in fields.iter_mut() {
                    if matches!(name.as_str(), "cluster_id" | "member_id" | "raft_term") {
                        *field = serde_json::Value::String(String::new());
                    } else {
                        blank(field);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(blank),
            _ => {}
        }
    }
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(mut value) => {
            blank(&mut value);
            value.to_string()
        }
        Err(_) => body.to_owned(),
    }
}

/// An answer of the reference etcd as etcd's own release builds give it: their gateway's error
/// bodies carry `error` beside `message` (etcd's tests/e2e/v3_curl_test.go expects
/// `{"error":...,"code":2,"message":...}`), which Debian's build, made with Debian's grpc-gateway,
/// leaves out.
fn as_upstream((status, body): (u16, String)) -> (u16, String) {
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_str(&body) else {
        return (status, body);
    };
    if let (Some(message), None) = (fields.get("message").cloned(), fields.get("error")) {
        if fields.contains_key("code") {
            fields.insert("error".to_owned(), message);
        }
    }
    (status, serde_json::Value::Object(fields).to_string())
}

#[test]
fn unary_calls_answer_as_etcds_gateway() {
    let (etcd, strata) = start_both();
    // Keys and values are base64: "a" is YQ==, "b" Yg==, "1" MQ==, "2" Mg==.
    let calls = [
        ("/v3/kv/put", r#"{"key":"YQ==","value":"MQ=="}"#),
        (
            "/v3/kv/put",
            r#"{"key":"Yg==","value":"Mg==","prev_kv":true}"#,
        ),
        (
            "/v3/kv/put",
            r#"{"key":"Yg==","value":"MQ==","prev_kv":true}"#,
        ),
        ("/v3/kv/range", r#"{"key":"YQ=="}"#),
        (
            "/v3/kv/range",
            r#"{"key":"YQ==","range_end":"Yw==","sort_order":"DESCEND","limit":"1"}"#,
        ),
        (
            "/v3/kv/range",
            r#"{"key":"YQ==","range_end":"Yw==","count_only":true}"#,
        ),
        ("/v3/kv/range", r#"{"key":""}"#),
        ("/v3/kv/range", r#"{"key":"YQ==","revision":"99"}"#),
        (
            "/v3/kv/txn",
            r#"{"compare":[{"key":"YQ==","result":"EQUAL","target":"VALUE","value":"MQ=="}],
                "success":[{"request_put":{"key":"YQ==","value":"Mg=="}},{"request_range":{"key":"YQ=="}}],
                "failure":[{"request_range":{"key":"Yg=="}}]}"#,
        ),
        (
            "/v3/kv/txn",
            r#"{"compare":[{"key":"YQ==","result":"GREATER","target":"MOD","mod_revision":"100"}],
                "failure":[{"request_delete_range":{"key":"Yg==","prev_kv":true}}]}"#,
        ),
        ("/v3/kv/deleterange", r#"{"key":"YQ==","range_end":"AA=="}"#),
        ("/v3/kv/compaction", r#"{"revision":"3","physical":true}"#),
        ("/v3/kv/range", r#"{"key":"YQ==","revision":"2"}"#),
        ("/v3/lease/grant", r#"{"TTL":"60","ID":"77"}"#),
        ("/v3/lease/grant", r#"{"TTL":"60","ID":"77"}"#),
        (
            "/v3/kv/put",
            r#"{"key":"bA==","value":"MQ==","lease":"77"}"#,
        ),
        ("/v3/lease/leases", "{}"),
        ("/v3/lease/revoke", r#"{"ID":"77"}"#),
        ("/v3/lease/revoke", r#"{"ID":"77"}"#),
        ("/v3/kv/range", r#"{"key":"AA==","range_end":"AA=="}"#),
    ];
    for (path, body) in calls {
        assert_eq!(
            post(&strata, path, body),
            as_upstream(post(&etcd, path, body)),
            "POST {path} {body}"
        );
    }
}

/// Auth through the gateway: a token from /v3/auth/authenticate, passed in the Authorization
/// header, as etcd's grpc-gateway takes it.
#[test]
fn auth_tokens_in_the_authorization_header() {
    let (etcd, strata) = start_both();
    // "root" is cm9vdA==, "a" YQ==, "1" MQ==.
    let setup = [
        ("/v3/auth/user/add", r#"{"name":"root","password":"pw"}"#),
        ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
        ("/v3/auth/role/add", r#"{"name":"r"}"#),
        (
            "/v3/auth/role/grant",
            r#"{"name":"r","perm":{"permType":"READ","key":"YQ=="}}"#,
        ),
        ("/v3/kv/put", r#"{"key":"YQ==","value":"MQ=="}"#),
        ("/v3/auth/enable", "{}"),
        ("/v3/kv/range", r#"{"key":"YQ=="}"#),
        (
            "/v3/auth/authenticate",
            r#"{"name":"root","password":"no"}"#,
        ),
    ];
    for (path, body) in setup {
        assert_eq!(
            post(&strata, path, body),
            as_upstream(post(&etcd, path, body)),
            "POST {path} {body}"
        );
    }
    let token = |server: &Process| {
        let (status, body) = post(
            server,
            "/v3/auth/authenticate",
            r#"{"name":"root","password":"pw"}"#,
        );
        assert_eq!(status, 200, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        answer["token"].as_str().unwrap().to_owned()
    };
    let (etcd_token, strata_token) = (token(&etcd), token(&strata));
    let calls = [
        ("/v3/kv/range", r#"{"key":"YQ=="}"#),
        ("/v3/auth/role/get", r#"{"role":"r"}"#),
        ("/v3/auth/user/list", "{}"),
        ("/v3/auth/disable", "{}"),
    ];
    for (path, body) in calls {
        assert_eq!(
            post_as(&strata, Some(&strata_token), path, body),
            as_upstream(post_as(&etcd, Some(&etcd_token), path, body)),
            "POST {path} {body}"
        );
    }
}

/// The first `n` lines of a streaming POST's answer (the request body sent whole).
fn stream_lines(server: &Process, path: &str, body: &str, n: usize) -> Vec<String> {
    use std::io::BufRead;
    let mut stream = TcpStream::connect(server.address).unwrap();
    // Bounds a failing test only.
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        server.address,
        body.len()
    )
    .unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 2 {
        line.clear();
    }
    // Chunked: a size line, the data, CRLF; lines of the body may span chunks.
    let mut body = Vec::new();
    while body.iter().filter(|&&b| b == b'\n').count() < n {
        let mut size = String::new();
        reader.read_line(&mut size).unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).unwrap();
        body.extend_from_slice(&chunk[..size]);
    }
    String::from_utf8(body)
        .unwrap()
        .lines()
        .take(n)
        .map(blank_ids)
        .collect()
}

#[test]
fn streams_answer_as_etcds_gateway() {
    let (etcd, strata) = start_both();
    let mut seen = Vec::new();
    for server in [&etcd.process, &strata.process] {
        post(server, "/v3/kv/put", r#"{"key":"YQ==","value":"MQ=="}"#);
        post(server, "/v3/kv/put", r#"{"key":"YQ==","value":"Mg=="}"#);
        post(server, "/v3/lease/grant", r#"{"TTL":"60","ID":"77"}"#);
        let watch = r#"{"create_request":{"key":"YQ==","start_revision":"1","prev_kv":true}}"#;
        // Created, then the history in one response.
        let mut lines = stream_lines(server, "/v3/watch", watch, 2);
        lines.extend(stream_lines(
            server,
            "/v3/lease/keepalive",
            r#"{"ID":"77"} {"ID":"5"}"#,
            2,
        ));
        seen.push(lines);
    }
    assert_eq!(seen[1], seen[0]);
}
