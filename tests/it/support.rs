//! Servers for the tests: the `strata` binary and Debian's etcd, each on free loopback ports in a
//! temporary directory, ready once its log says "ready to serve client requests".

pub mod power_cut_fs;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strata::proto::etcdserverpb::kv_client::KvClient;
use tempfile::TempDir;
use tonic::transport::Channel;

/// How long a server may take to say it is ready before the test fails.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a server may take to stop after SIGTERM: etcd's graceful stop is bounded by its
/// request timeout (7 s), Strata's too, and the store then closes.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A server process that is killed when dropped.
pub struct Process {
    child: Child,
    pub address: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Process {
    /// Starts `command` and waits for a log line containing `ready`; the client address is read
    /// from its `address=` field, or is `fixed`.
    pub fn start(
        mut command: Command,
        ready_line: &'static str,
        fixed: Option<SocketAddr>,
    ) -> Process {
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("server starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (ready, is_ready) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            // Keep draining after the ready line, so the server never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(ready_line) {
                    let address = line
                        .split("address=")
                        .nth(1)
                        .and_then(|a| a.split_whitespace().next())
                        .and_then(|a| a.parse::<SocketAddr>().ok());
                    let _ = ready.send(address);
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let address = match is_ready.recv_timeout(READY_TIMEOUT) {
            Ok(address) => address.or(fixed).expect("the ready line names the address"),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "server did not become ready; its log:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        Process {
            child,
            address,
            log,
        }
    }

    /// The process's resident memory, in bytes.
    pub fn resident_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    /// What the process has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    pub async fn kv(&self) -> KvClient<Channel> {
        KvClient::connect(self.endpoint())
            .await
            .expect("connect")
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint())
            .unwrap()
            .connect()
            .await
            .expect("connect")
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the process to exit; fails the test if it has not within
    /// [`STOP_TIMEOUT`].
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        let asked = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("server status") {
                return status;
            }
            if asked.elapsed() > STOP_TIMEOUT {
                self.kill();
                panic!(
                    "server still running {STOP_TIMEOUT:?} after SIGTERM; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Strata server with its own data directory.
pub struct Strata {
    pub process: Process,
    _dir: Option<TempDir>,
}

impl Strata {
    pub fn start() -> Strata {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Strata::start_in(dir.path(), &[]);
        s._dir = Some(dir);
        s
    }

    pub fn start_with(args: &[&str]) -> Strata {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Strata::start_in(dir.path(), args);
        s._dir = Some(dir);
        s
    }

    /// Starts on `dir` (kept by the caller, so that a restart finds the same data). With
    /// `STRATA_TEST_BACKEND=postgres` the data is in a database of its own on the PostgreSQL that
    /// `STRATA_TEST_POSTGRES` names, the same one for every start on `dir`.
    pub fn start_in(dir: &Path, args: &[&str]) -> Strata {
        let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
        command.arg("--data-dir").arg(dir.join("data"));
        if on_postgres() {
            command.arg("--backend").arg(postgres_database(dir));
        }
        command.args(args);
        Strata::start_command(command)
    }

    /// Runs `command` (the strata binary with its arguments), on a free loopback port unless its
    /// arguments name the client URLs.
    pub fn start_command(mut command: Command) -> Strata {
        let names_client_urls = |a: &std::ffi::OsStr| {
            a.to_str()
                .is_some_and(|a| a.trim_start_matches('-').starts_with("listen-client-urls"))
        };
        if !command.get_args().any(names_client_urls) {
            command.args(["--listen-client-urls", "http://127.0.0.1:0"]);
        }
        command.env("STRATA_LOG", "info");
        Strata {
            process: Process::start(command, "ready to serve client requests", None),
            _dir: None,
        }
    }
}

impl std::ops::Deref for Strata {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for Strata {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl Strata {
    /// A frontend named `name` on the PostgreSQL database kept for `dir`, whatever
    /// `STRATA_TEST_BACKEND` says: frontends started on one `dir` serve one cluster.
    pub fn frontend(dir: &Path, name: &str) -> Strata {
        let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
        command.args(["--name", name, "--backend", &postgres_database(dir)]);
        Strata::start_command(command)
    }
}

/// Whether the servers the tests start keep their data in PostgreSQL.
pub fn on_postgres() -> bool {
    std::env::var("STRATA_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// The PostgreSQL the tests make their databases on (`STRATA_TEST_POSTGRES`).
pub fn admin_postgres() -> String {
    std::env::var("STRATA_TEST_POSTGRES")
        .expect("STRATA_TEST_POSTGRES names the PostgreSQL to test on (scripts/test starts one)")
}

/// Runs `statement` with psql on the server at `url`; whether it succeeded.
pub fn psql(url: &str, statement: &str) -> bool {
    Command::new("psql")
        .args([url, "-q", "-c", statement])
        .status()
        .is_ok_and(|s| s.success())
}

/// The connection string of the database kept for `dir`, created on first use.
pub fn postgres_database(dir: &Path) -> String {
    let admin = admin_postgres();
    let marker = dir.join("postgres-database");
    let name = match std::fs::read_to_string(&marker) {
        Ok(name) => name,
        Err(_) => {
            let unique = {
                use std::hash::{BuildHasher, Hasher};
                std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish()
            };
            let name = format!("strata_it_{unique:x}");
            let created = psql(&admin, &format!("CREATE DATABASE {name}"));
            assert!(created, "CREATE DATABASE {name} failed");
            std::fs::write(&marker, &name).unwrap();
            name
        }
    };
    let (server, _) = admin.rsplit_once('/').expect("a postgres:// URL");
    format!("{server}/{name}")
}

/// A loopback port free now, and never handed out before in this process: the kernel may give a
/// port just released again, and two of one server's URLs must not share one.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<std::collections::BTreeSet<u16>> =
        Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// What `scripts/NAME ARGS` printed, trimmed; fails the test if it failed.
pub fn project_script(name: &str, args: &[&str]) -> String {
    let script = format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("scripts/{name} runs: {e}"));
    assert!(
        out.status.success(),
        "scripts/{name} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A throwaway single-member etcd (Debian's etcd-server) on loopback.
pub struct Etcd {
    pub process: Process,
    _dir: TempDir,
}

impl Etcd {
    pub fn start() -> Etcd {
        Etcd::start_with(&[])
    }

    /// An etcd started with `args` besides those that make it a throwaway member on loopback.
    pub fn start_with(args: &[&str]) -> Etcd {
        let peer = format!("http://127.0.0.1:{}", free_port());
        Etcd::start_in(tempfile::tempdir().unwrap(), peer, args)
    }

    /// An etcd on the data that `etcdctl snapshot restore` makes of `snapshot`.
    pub fn restored(snapshot: &Path) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let peer = format!("http://127.0.0.1:{}", free_port());
        let restore = Command::new(etcdctl_binary())
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(snapshot)
            .arg("--data-dir")
            .arg(dir.path().join("etcd"))
            .args([
                "--name",
                "diff",
                "--initial-cluster",
                &format!("diff={peer}"),
            ])
            .args(["--initial-advertise-peer-urls", &peer])
            .output()
            .expect("etcdctl runs");
        assert!(
            restore.status.success(),
            "etcdctl snapshot restore failed: {}",
            String::from_utf8_lossy(&restore.stderr)
        );
        Etcd::start_in(dir, peer, &[])
    }

    fn start_in(dir: TempDir, peer: String, args: &[&str]) -> Etcd {
        let client = format!("http://127.0.0.1:{}", free_port());
        let mut command = Command::new(etcd_binary());
        command
            .args([
                "--name",
                "diff",
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
            ])
            .arg("--data-dir")
            .arg(dir.path().join("etcd"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("diff={peer}")])
            .args(args);
        let address = client.trim_start_matches("http://").parse().unwrap();
        Etcd {
            // etcd 3.4 logging with zap has no "ready to serve" line; this one comes right after it.
            process: Process::start(command, "serving client traffic", Some(address)),
            _dir: dir,
        }
    }
}

impl std::ops::Deref for Etcd {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

/// A PostgreSQL of a test's own (scripts/postgres), for tests that stop and start the database;
/// stopped when dropped.
pub struct OwnPostgres {
    dir: TempDir,
    pub url: String,
}

impl OwnPostgres {
    pub fn start() -> OwnPostgres {
        let dir = tempfile::tempdir().unwrap();
        let url = OwnPostgres::script("start", dir.path());
        OwnPostgres { dir, url }
    }

    /// A server that takes TLS connections only, with a certificate for the name `localhost` signed
    /// by the CA at [`OwnPostgres::ca`].
    pub fn start_tls() -> OwnPostgres {
        let dir = tempfile::tempdir().unwrap();
        let url = OwnPostgres::script("start-tls", dir.path());
        OwnPostgres { dir, url }
    }

    pub fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Stops the server the hard way: no shutdown checkpoint, crash recovery at the next start.
    pub fn kill(&self) {
        OwnPostgres::script("kill", self.dir.path());
    }

    /// Freezes the server (SIGSTOP to its postmaster): its kernel still accepts connections, and
    /// nothing answers them, as from a primary that hangs.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// Stops the whole server (SIGSTOP to its postmaster and every process it started): open
    /// connections hang too.
    pub fn hang(&self) {
        self.signal("-STOP");
        self.signal_children("-STOP");
    }

    /// Lets a hung server go on.
    pub fn resume(&self) {
        self.signal_children("-CONT");
        self.signal("-CONT");
    }

    fn signal_children(&self, signal: &str) {
        let sent = Command::new("pkill")
            .args([signal, "-P", &self.postmaster()])
            .status()
            .unwrap();
        assert!(sent.success(), "pkill {signal}");
    }

    fn postmaster(&self) -> String {
        let pid = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid")).unwrap();
        pid.lines().next().unwrap().trim().to_owned()
    }

    fn signal(&self, signal: &str) {
        let pid = self.postmaster();
        let sent = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(sent.success(), "kill {signal} {pid}");
    }

    /// Starts it again on the same port.
    pub fn restart(&self) {
        let url = OwnPostgres::script("start", self.dir.path());
        assert_eq!(url, self.url, "restarted on another port");
    }

    /// A streaming replica of this server, made its synchronous standby.
    pub fn standby(&self) -> OwnPostgres {
        self.replica("standby")
    }

    /// A streaming replica of this server that its commits do not wait for.
    pub fn standby_async(&self) -> OwnPostgres {
        self.replica("standby-async")
    }

    fn replica(&self, kind: &str) -> OwnPostgres {
        let dir = tempfile::tempdir().unwrap();
        let primary = self.dir.path().display().to_string();
        let url = OwnPostgres::script_with(&[kind, &primary], dir.path());
        OwnPostgres { dir, url }
    }

    /// Turns a standby into a primary.
    pub fn promote(&self) {
        OwnPostgres::script("promote", self.dir.path());
    }

    /// A connection string naming this server, then `standby`, for whichever of them takes
    /// writes (`target_session_attrs=read-write`): it follows a failover.
    pub fn and_then(&self, standby: &OwnPostgres) -> String {
        format!(
            "host=127.0.0.1,127.0.0.1 port={},{} user=strata dbname=postgres \
             target_session_attrs=read-write connect_timeout=5",
            self.port(),
            standby.port()
        )
    }

    pub fn port(&self) -> u16 {
        let address = self.url.rsplit('@').next().unwrap();
        let port = address.split(['/', ':']).nth(1).unwrap();
        port.parse().unwrap()
    }

    fn script(action: &str, dir: &Path) -> String {
        OwnPostgres::script_with(&[action], dir)
    }

    fn script_with(args: &[&str], dir: &Path) -> String {
        let dir = dir.display().to_string();
        let args: Vec<&str> = args.iter().copied().chain([dir.as_str()]).collect();
        project_script("postgres", &args)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        // A server a failed test left stopped (SIGSTOP) goes on first, so that it can stop.
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid")) {
            let pid = pid.lines().next().unwrap_or_default().trim().to_owned();
            let _ = Command::new("pkill").args(["-CONT", "-P", &pid]).status();
            let _ = Command::new("kill").args(["-CONT", &pid]).status();
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres");
        let _ = Command::new(script)
            .args(["stop", &self.dir.path().display().to_string()])
            .output();
    }
}

pub fn etcd_binary() -> String {
    std::env::var("STRATA_TEST_ETCD").unwrap_or_else(|_| "etcd".to_owned())
}

pub fn etcdctl_binary() -> String {
    std::env::var("STRATA_TEST_ETCDCTL").unwrap_or_else(|_| "etcdctl".to_owned())
}

/// etcdctl 3.4 (Debian 12's etcd-client, which scripts/test installs), for what its clients do
/// differently.
pub fn etcdctl_34_binary() -> String {
    std::env::var("STRATA_TEST_ETCDCTL_34").unwrap_or_else(|_| "/usr/bin/etcdctl".to_owned())
}

/// A fresh etcd and a fresh Strata, started side by side.
pub fn start_both() -> (Etcd, Strata) {
    std::thread::scope(|s| {
        let etcd = s.spawn(Etcd::start);
        let strata = s.spawn(Strata::start);
        (etcd.join().unwrap(), strata.join().unwrap())
    })
}

/// Adds user `root` (password `rootpw`) with the root role to `server`, then turns auth on.
pub async fn enable_auth(server: &Process) {
    use strata::proto::etcdserverpb::auth_client::AuthClient;
    use strata::proto::etcdserverpb::{
        AuthEnableRequest, AuthUserAddRequest, AuthUserGrantRoleRequest,
    };
    let mut auth = AuthClient::new(server.channel().await);
    auth.user_add(AuthUserAddRequest {
        name: "root".into(),
        password: "rootpw".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    auth.user_grant_role(AuthUserGrantRoleRequest {
        user: "root".into(),
        role: "root".into(),
    })
    .await
    .unwrap();
    auth.auth_enable(AuthEnableRequest {}).await.unwrap();
}

/// A token for the root user [`enable_auth`] made.
pub async fn root_token(server: &Process) -> String {
    use strata::proto::etcdserverpb::auth_client::AuthClient;
    use strata::proto::etcdserverpb::AuthenticateRequest;
    AuthClient::new(server.channel().await)
        .authenticate(AuthenticateRequest {
            name: "root".into(),
            password: "rootpw".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

/// A request stream that sends `first` and stays open.
pub fn open_ended<T: Send + 'static>(first: T) -> impl tokio_stream::Stream<Item = T> {
    use tokio_stream::StreamExt;
    tokio_stream::once(first).chain(tokio_stream::pending())
}
