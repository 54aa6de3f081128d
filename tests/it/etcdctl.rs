//! etcdctl (Debian's etcd-client) against Strata: the same command lines run against a fresh etcd and
//! a fresh Strata must print the same thing and exit the same way.

use crate::support::{etcdctl_binary, start_both, Process, Strata};
use std::io::Write;
use std::process::{Command, Stdio};

/// One etcdctl invocation: its arguments, and what it reads on standard input.
struct Call {
    args: Vec<String>,
    stdin: String,
}

/// Splits `args` on spaces; `''` stands for an empty argument, as in a shell.
fn call(args: &str) -> Call {
    Call {
        args: args
            .split_whitespace()
            .map(|a| if a == "''" { "" } else { a }.to_owned())
            .collect(),
        stdin: String::new(),
    }
}

fn call_with_stdin(args: &str, stdin: &str) -> Call {
    Call {
        stdin: stdin.to_owned(),
        ..call(args)
    }
}

/// What etcdctl printed and how it exited, with the server's identity and address blanked out.
#[derive(Debug, PartialEq)]
struct Printed {
    success: bool,
    stdout: String,
    stderr: String,
}

fn etcdctl(server: &Process, c: &Call) -> Printed {
    etcdctl_at(&etcdctl_binary(), &server.address.to_string(), server, c)
}

/// `etcdctl` (the binary at `program`) run with `--endpoints endpoint` against `server`.
fn etcdctl_at(program: &str, endpoint: &str, server: &Process, c: &Call) -> Printed {
    let mut child = Command::new(program)
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .args(&c.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl runs (scripts/test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(c.stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let blank = |bytes: Vec<u8>| normalise(&String::from_utf8_lossy(&bytes), server);
    // The client's own JSON log lines carry timestamps and connection ids; what the user reads is
    // the rest.
    let stderr: String = blank(out.stderr)
        .lines()
        .filter(|l| !l.starts_with('{'))
        .map(|l| format!("{l}\n"))
        .collect();
    Printed {
        success: out.status.success(),
        stdout: blank(out.stdout),
        stderr,
    }
}

/// Blanks what differs between two servers by nature: ids, term and the address.
fn normalise(text: &str, server: &Process) -> String {
    let mut out = text.replace(&server.address.to_string(), "ENDPOINT");
    // As `-w json` and `-w fields` print them.
    for pattern in [
        "\"cluster_id\":",
        "\"member_id\":",
        "\"raft_term\":",
        "\"ClusterID\" : ",
        "\"MemberID\" : ",
        "\"RaftTerm\" : ",
    ] {
        let mut rest = out.as_str();
        let mut replaced = String::new();
        while let Some(at) = rest.find(pattern) {
            let (before, after) = rest.split_at(at + pattern.len());
            replaced.push_str(before);
            replaced.push('0');
            rest = after.trim_start_matches(|c: char| c.is_ascii_digit());
        }
        replaced.push_str(rest);
        out = replaced;
    }
    out
}

fn same_output(calls: Vec<Call>) {
    let (etcd, strata) = start_both();
    for c in &calls {
        let want = etcdctl(&etcd, c);
        let got = etcdctl(&strata, c);
        assert_eq!(got, want, "etcdctl {}", c.args.join(" "));
    }
}

#[test]
fn put_get_del_with_their_options() {
    same_output(vec![
        call("put a 1"),
        call("put a 2 --prev-kv"),
        call("put b 1"),
        call("put b2 1"),
        call("put c 3"),
        call("put --ignore-value a"),
        call("put --ignore-value missing"),
        call("put --ignore-lease a 4"),
        call("put --lease=1234 a 5"),
        call("get a"),
        call("get a -w json"),
        call("get --prefix b"),
        call("get --prefix b --keys-only"),
        call("get --prefix b --print-value-only"),
        call("get --from-key b"),
        call("get --from-key '' --limit 2"),
        call("get a --rev 2"),
        call("get a --rev 99"),
        call("get --prefix '' --sort-by=MODIFY --order=DESCEND"),
        call("get --from-key a --sort-by=VALUE --order=ASCEND -w json"),
        call("get --from-key a --sort-by=VERSION --order=DESCEND --limit 1"),
        call("get --from-key a --sort-by=CREATE"),
        call("get a --consistency=s"),
        call("get a -w fields"),
        call("get a -w table"),
        call("get --hex a"),
        call("del missing"),
        call("del a --prev-kv"),
        call("del --prefix b"),
        call("put x 1"),
        call("del --from-key c --prev-kv -w json"),
        call("get --from-key ''"),
    ]);
}

#[test]
fn txn_from_standard_input() {
    same_output(vec![
        call("put k v1"),
        call_with_stdin(
            "txn",
            "value(\"k\") = \"v1\"\n\nput k v2\nget k\n\nput k failed\n\n",
        ),
        call_with_stdin(
            "txn -w json",
            "mod(\"k\") > \"100\"\n\nput k v3\n\nget k\ndel k\n\n",
        ),
        call_with_stdin("txn", "version(\"k\") = \"0\"\n\nput k fresh\n\n\n"),
        call_with_stdin(
            "txn",
            "create(\"k\") < \"99\"\nversion(\"k\") != \"7\"\n\nput a 1\nput a 2\n\n\n",
        ),
        call("get --from-key ''"),
    ]);
}

#[test]
fn compaction_and_reads_around_it() {
    let mut calls: Vec<Call> = (0..6).map(|i| call(&format!("put k {i}"))).collect();
    calls.extend([
        call("compaction 3"),
        call("compaction 3"),
        call("compaction 2"),
        call("compaction 99"),
        call("get k --rev 2"),
        call("get k --rev 3"),
        call("compaction --physical 5"),
        call("get k --rev 4"),
        call("get k --rev 5"),
        call("get k"),
    ]);
    same_output(calls);
}

#[test]
fn auth_users_roles_and_permissions() {
    let root = "--user root:rootpw";
    let alice = "--user alice:alicepw";
    let calls = [
        "auth enable",
        "user add root:rootpw",
        "user add root:again",
        "auth enable",
        "user grant-role root root",
        "role add reader",
        "role add reader",
        "role grant-permission reader read a b",
        "role grant-permission reader --prefix readwrite p/",
        "role grant-permission reader write k",
        "role grant-permission missing read a",
        "role get reader",
        "role list",
        "user add alice:alicepw",
        "user grant-role alice reader",
        "user grant-role alice missing",
        "user get alice",
        "user get nobody",
        "user list",
        "put a 1",
        "put p/1 1",
        "auth enable",
        "get a",
        "put a 2",
        &format!("{alice} get a"),
        &format!("{alice} get a b"),
        &format!("{alice} get a c"),
        &format!("{alice} get --prefix p/"),
        &format!("{alice} put p/2 2"),
        &format!("{alice} put a 3"),
        &format!("{alice} put k v"),
        &format!("{alice} get k"),
        &format!("{alice} del a"),
        &format!("{alice} del p/1 --prev-kv"),
        &format!("{alice} get --prefix ''"),
        "--user alice:wrong get a",
        "--user nobody:pw get a",
        &format!("{root} put a 3"),
        &format!("{root} get --prefix ''"),
        &format!("{alice} user get alice"),
        &format!("{alice} user list"),
        &format!("{alice} role get reader"),
        &format!("{alice} role list"),
        &format!("{alice} user add eve:pw"),
        &format!("{root} role revoke-permission reader a b"),
        &format!("{root} role revoke-permission reader a b"),
        &format!("{alice} get a"),
        &format!("{root} user revoke-role alice reader"),
        &format!("{root} user revoke-role alice reader"),
        &format!("{alice} get --prefix p/"),
        &format!("{root} user delete root"),
        &format!("{root} user revoke-role root root"),
        &format!("{root} role delete root"),
        &format!("{root} user passwd alice --interactive=false"),
        &format!("{root} role delete reader"),
        &format!("{root} user get alice"),
        &format!("{root} user delete alice"),
        &format!("{alice} get a"),
        &format!("{root} auth disable"),
        "get a",
        "user list",
        "role list",
    ];
    let mut calls: Vec<Call> = calls.iter().map(|c| call(c)).collect();
    // The new password for `user passwd`, read from standard input.
    let passwd = calls
        .iter_mut()
        .find(|c| c.args.contains(&"passwd".to_owned()))
        .unwrap();
    passwd.stdin = "newpw\n".to_owned();
    same_output(calls);
}

#[test]
fn endpoint_status_and_health() {
    let strata = Strata::start();
    let health = etcdctl(&strata, &call("endpoint health"));
    assert!(health.success, "{health:?}");
    assert!(
        health.stderr.contains("ENDPOINT is healthy")
            || health.stdout.contains("ENDPOINT is healthy"),
        "{health:?}"
    );
    let status = etcdctl(&strata, &call("endpoint status -w json"));
    assert!(status.success, "{status:?}");
    assert!(status.stdout.contains("\"version\":\"3.5."), "{status:?}");
    let members = etcdctl(&strata, &call("member list"));
    assert!(members.success, "{members:?}");
    assert!(members.stdout.contains("http://ENDPOINT"), "{members:?}");
}

/// Go clients of etcd 3.4 send a whole `http://` endpoint as the HTTP/2 authority (3.5's for some
/// calls too); etcd takes it, and so must Strata: etcdctl 3.4 (Debian 12's) and 3.5 with
/// `http://` endpoints answer as they do against etcd.
#[test]
fn both_etcdctls_with_http_endpoints() {
    let (etcd, strata) = start_both();
    for program in [etcdctl_binary(), crate::support::etcdctl_34_binary()] {
        for args in [
            "put k v",
            "get k",
            "endpoint health",
            "endpoint status",
            "endpoint hashkv",
        ] {
            let c = call(args);
            let want = etcdctl_at(&program, &etcd.endpoint(), &etcd, &c);
            let got = etcdctl_at(&program, &strata.endpoint(), &strata, &c);
            assert!(want.success, "{program} {args} against etcd: {want:?}");
            assert_eq!(got.success, want.success, "{program} {args}: {got:?}");
            if args.starts_with("put") || args.starts_with("get") {
                assert_eq!(got, want, "{program} {args}");
            }
        }
    }
}

/// The lines a child process prints, as they come.
fn lines_of(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (line, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.send(l).is_err() {
                return;
            }
        }
    });
    printed
}

/// The first `lines` lines `etcdctl watch <args>` prints, after which it is stopped.
fn watch_lines(server: &Process, args: &str, lines: usize) -> Vec<String> {
    let mut child = Command::new(etcdctl_binary())
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(server.address.to_string())
        .arg("watch")
        .args(args.split_whitespace())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl runs");
    let printed = lines_of(child.stdout.take().unwrap());
    let mut out = Vec::new();
    while out.len() < lines {
        match printed.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(l) => out.push(l),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        out.len(),
        lines,
        "etcdctl watch {args} printed only {out:?}"
    );
    out
}

#[test]
fn watch_replays_history_with_its_options() {
    let (etcd, strata) = start_both();
    let history = [
        "put k1 a",
        "put k2 b",
        "put k1 c",
        "del k2",
        "put other x",
        "del --prefix k",
    ];
    for server in [&etcd.process, &strata.process] {
        for c in history {
            assert!(etcdctl(server, &call(c)).success, "{c}");
        }
    }
    // Each event prints its type, key and value; with --prev-kv the previous pair comes between.
    for (args, lines) in [
        ("--prefix k --rev 1", 15),
        ("--prefix k --rev 3 --prev-kv", 18),
        ("k1 --rev 2 --prev-kv", 13),
        ("--rev 4 -w json other", 1),
        ("--rev 1 k k3", 15),
    ] {
        let want = watch_lines(&etcd, args, lines);
        let got = watch_lines(&strata, args, lines);
        let blank = |lines: Vec<String>, server: &Process| -> Vec<String> {
            lines.iter().map(|l| normalise(l, server)).collect()
        };
        assert_eq!(
            blank(got, &strata),
            blank(want, &etcd),
            "etcdctl watch {args}"
        );
    }
}

/// `etcdctl watch -i`: watch commands and progress requests typed in. Strata answers a progress
/// request once the watcher has caught up, after its history (etcd 3.5.13 and later; Debian's 3.4
/// answers at once, so this is not compared with it).
#[test]
fn interactive_watch_with_progress() {
    let strata = Strata::start();
    assert!(etcdctl(&strata, &call("put k v1")).success);
    let mut child = Command::new(etcdctl_binary())
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(strata.address.to_string())
        .args(["watch", "-i"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut commands = child.stdin.take().unwrap();
    let printed = lines_of(child.stdout.take().unwrap());
    let next_lines = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                printed
                    .recv_timeout(std::time::Duration::from_secs(10))
                    .expect("etcdctl printed in time")
            })
            .collect()
    };
    commands.write_all(b"watch k --rev 1\n").unwrap();
    commands.flush().unwrap();
    assert_eq!(next_lines(3), ["PUT", "k", "v1"]);
    // Asked before the history is through, it would go unanswered (as etcd 3.5.13 and later).
    commands.write_all(b"progress\n").unwrap();
    commands.flush().unwrap();
    assert_eq!(next_lines(1), ["progress notify: 2"]);
    assert!(etcdctl(&strata, &call("put k v2")).success);
    assert_eq!(next_lines(3), ["PUT", "k", "v2"]);
    let _ = child.kill();
    let _ = child.wait();
}
