//! `strata`: serve etcd's v3 API from a data directory or a PostgreSQL database; `strata snapshot`
//! moves data in and out as etcd snapshots;
//! `strata migrate` copies a running etcd, revisions and all, and follows it until the cut-over.

use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use strata::api::Server;
use strata::auth::{AuthStore, TokenProvider};
use strata::backend::embedded::{Embedded, Options as EmbeddedOptions};
use strata::backend::postgres::Postgres;
use strata::backend::{Backend, Identity};
use strata::config::{Config, MetricsLevel, Request};
use strata::migrate::{Connection, Source, Step};
use strata::mvcc::Store;
use strata::tasks::Tasks;
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
use tracing_subscriber::EnvFilter;

/// A request allocates and frees many small objects, in batches as its writes are; glibc's
/// allocator took a fifth of a frontend's CPU on them (BENCHMARKS.md, 2026-12-03 night).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let command = std::env::args().nth(1);
    if matches!(command.as_deref(), Some("snapshot" | "migrate")) {
        tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("warn"))
            .with_writer(std::io::stderr)
            .init();
        let args = std::env::args().skip(1);
        let runtime = runtime(None)?;
        return match command.as_deref() {
            Some("snapshot") => runtime.block_on(snapshot(SnapshotCommand::parse_from(args))),
            _ => runtime.block_on(migrate(MigrateCommand::parse_from(args))),
        };
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match Config::from_command_line(&args) {
        Ok(Request::Run(settings)) => Config::new(settings).unwrap_or_else(|e| refuse(&e, 1)),
        Ok(Request::Help) => {
            print!("{}", strata::config::help());
            return Ok(());
        }
        Ok(Request::Version) => {
            println!("etcd Version: {}", strata::api::ETCD_VERSION);
            println!("Strata Version: {}", env!("CARGO_PKG_VERSION"));
            println!("Git SHA: Not provided");
            println!(
                "OS/Arch: {}/{}",
                std::env::consts::OS,
                std::env::consts::ARCH
            );
            return Ok(());
        }
        Err(refusal) => refuse(&refusal.message, refusal.status),
    };
    // A member's first start: etcd checks it is in its initial cluster and derives its ids.
    let identity =
        (config.backend == "embedded" && !Embedded::exists(&config.data_dir)).then(|| {
            let ids = config.bootstrap_ids().unwrap_or_else(|e| refuse(&e, 1));
            Identity {
                cluster_id: ids.cluster,
                member_id: ids.member,
            }
        });
    runtime(config.worker_threads)?.block_on(serve(config, identity))
}

/// Ends the process as etcd does on a command line it refuses: the reason on standard error, and
/// etcd's exit status.
fn refuse(message: &str, status: i32) -> ! {
    eprintln!("{message}");
    if status == 2 {
        eprintln!("Usage: strata [flags]; `strata --help` lists them");
    }
    std::process::exit(status)
}

/// The scheduler everything runs on: a pool of `threads` workers (by default one for each CPU this
/// process may use), or with one, the single-threaded scheduler.
fn runtime(threads: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        usize::from,
    );
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut pool = tokio::runtime::Builder::new_multi_thread();
        pool.worker_threads(threads);
        pool
    };
    builder.enable_all().build()
}

/// Serves as `config` says; a new embedded store takes `identity`.
async fn serve(config: Config, identity: Option<Identity>) -> anyhow::Result<()> {
    let (writer, terminal) = log_writer(&config.log_outputs, config.log_rotation)?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("STRATA_LOG")
                .unwrap_or_else(|_| EnvFilter::new(&config.log_level)),
        )
        .with_writer(writer);
    if config.log_format == "json" {
        logs.json().init();
    } else {
        logs.with_ansi(terminal).init();
    }
    for notice in &config.settings.notices {
        tracing::info!("{notice}");
    }
    for notice in config.notices() {
        tracing::warn!("{notice}");
    }
    strata::metrics::set_slow_request(config.warning_apply_duration);
    strata::metrics::set_unary_request_warning(config.warning_unary_request_duration);
    if config.metrics == MetricsLevel::Extensive {
        strata::metrics::export_handling_times();
    }

    let member = format!(
        "{} {} {}",
        config.name,
        config.listen_client_urls.join(","),
        config.advertise_client_urls.join(",")
    );
    let options = Opening {
        verify: config.initial_corrupt_check,
        embedded: EmbeddedOptions {
            fsync: !config.unsafe_no_fsync,
            identity,
        },
        read_from: config.read_from.clone(),
        cluster_id: config.bootstrap_ids().ok().map(|ids| ids.cluster),
    };
    let backend = open_backend(&config.backend, config.data_dir.clone(), &member, options).await?;
    let tokens = TokenProvider::new(
        &config.auth_token,
        std::time::Duration::from_secs(config.auth_token_ttl),
    )
    .map_err(anyhow::Error::msg)?;
    let store = Store::open(backend.clone()).await?;
    let auth = AuthStore::open(backend, config.bcrypt_cost, tokens, store.auth_installed()).await?;
    if let Some(every) = config.lease_checkpoints {
        store.checkpoint_leases(every);
    }
    let compaction = Tasks::default();
    if let Some(policy) = config.auto_compaction {
        tracing::info!(?policy, "automatic compaction");
        compaction.spawn(strata::compactor::run(store.clone(), policy));
    }
    let server = Server::start(&config, store.clone(), auth.clone(), shutdown_signal()).await?;
    // Requests in flight are answered first, then the writes they queued; then the store closes.
    let served = server.wait().await;
    compaction.stop().await;
    auth.close().await;
    store.close().await;
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// Where the logs go, as etcd's `--log-outputs` names them: `default` and `stderr` (also for
/// `systemd/journal`: a unit's standard error goes to the journal), `stdout`, or files, appended
/// to; and whether that is a terminal (for colours).
fn log_writer(
    outputs: &[String],
    rotation: Option<strata::log_rotation::Rotation>,
) -> anyhow::Result<(BoxMakeWriter, bool)> {
    let mut writer: Option<BoxMakeWriter> = None;
    let mut terminal = true;
    for output in outputs {
        let (next, is_terminal) = match output.as_str() {
            "default" | "stderr" | "systemd/journal" => (
                BoxMakeWriter::new(std::io::stderr),
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
            ),
            "stdout" => (
                BoxMakeWriter::new(std::io::stdout),
                std::io::IsTerminal::is_terminal(&std::io::stdout()),
            ),
            path => {
                let cannot = |e| anyhow::anyhow!("cannot open log output {path}: {e}");
                let writer = match rotation {
                    Some(rotation) => BoxMakeWriter::new(std::sync::Mutex::new(
                        strata::log_rotation::RotatingFile::open(path.as_ref(), rotation)
                            .map_err(cannot)?,
                    )),
                    None => BoxMakeWriter::new(std::sync::Mutex::new(
                        std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(path)
                            .map_err(cannot)?,
                    )),
                };
                (writer, false)
            }
        };
        terminal &= is_terminal;
        writer = Some(match writer {
            None => next,
            Some(before) => BoxMakeWriter::new(before.and(next)),
        });
    }
    Ok((
        writer.unwrap_or_else(|| BoxMakeWriter::new(std::io::stderr)),
        terminal,
    ))
}

/// How the embedded store is opened: checked first (etcd's initial corruption check), and as
/// the store's own options say (`--unsafe-no-fsync`, the ids of a new store).
#[derive(Clone, Default)]
struct Opening {
    verify: bool,
    embedded: EmbeddedOptions,
    /// A hot standby of the PostgreSQL database, to read the log from (`--read-from`).
    read_from: Option<String>,
    /// The cluster id a new PostgreSQL database takes: etcd's for this member's command line.
    cluster_id: Option<u64>,
}

/// The embedded store in `data_dir`, or the PostgreSQL database `backend` names; `member` tells a
/// frontend on PostgreSQL apart from the others.
async fn open_backend(
    backend: &str,
    data_dir: PathBuf,
    member: &str,
    options: Opening,
) -> anyhow::Result<Arc<dyn Backend>> {
    Ok(match backend {
        "embedded" => {
            if options.read_from.is_some() {
                anyhow::bail!("--read-from names a standby of a PostgreSQL --backend");
            }
            if options.verify {
                match Embedded::verify(&data_dir) {
                    Ok(()) => tracing::info!("initial corruption checking passed; no corruption"),
                    Err(e) => anyhow::bail!(
                        "the store in {} failed the initial corruption check: {e}",
                        data_dir.display()
                    ),
                }
            }
            tracing::info!(data_dir = %data_dir.display(), "opening the embedded store");
            if !options.embedded.fsync {
                tracing::warn!(
                    "--unsafe-no-fsync: acknowledged writes may be lost in a crash of the machine"
                );
            }
            Arc::new(Embedded::open_with(&data_dir, options.embedded)?)
        }
        connection => {
            if !options.embedded.fsync {
                tracing::warn!(
                    "--unsafe-no-fsync has no effect on PostgreSQL: its synchronous_commit decides"
                );
            }
            if options.verify {
                tracing::warn!(
                    "the initial corruption check has no effect on PostgreSQL, which checks its \
                     own pages (initdb --data-checksums)"
                );
            }
            let postgres = strata::backend::postgres::tls::parse(connection).map_err(|e| {
                anyhow::anyhow!(
                    "--backend is neither `embedded` nor a PostgreSQL connection string: {e}"
                )
            })?;
            tracing::info!(
                hosts = ?postgres.config.get_hosts(),
                dbname = ?postgres.config.get_dbname(),
                sslmode = ?postgres.config.get_ssl_mode(),
                "connecting to PostgreSQL"
            );
            let standby = match &options.read_from {
                Some(standby) => {
                    let standby = strata::backend::postgres::tls::parse(standby).map_err(|e| {
                        anyhow::anyhow!("--read-from is not a PostgreSQL connection string: {e}")
                    })?;
                    tracing::info!(
                        hosts = ?standby.config.get_hosts(),
                        dbname = ?standby.config.get_dbname(),
                        "reading the log from a standby first"
                    );
                    Some(standby)
                }
                None => None,
            };
            let options = strata::backend::postgres::Options {
                standby,
                cluster_id: options.cluster_id,
            };
            Arc::new(Postgres::open(postgres, member, options).await?)
        }
    })
}

/// The new store a restore or a migration fills.
#[derive(clap::Args)]
struct Target {
    /// The embedded store to create [default: <name>.strata].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// `embedded`, or the connection string of a PostgreSQL database no frontend serves yet.
    #[arg(long, default_value = "embedded")]
    backend: String,
    /// Names the default data directory, as for the server.
    #[arg(long, default_value = "default")]
    name: String,
}

impl Target {
    async fn open(&self) -> anyhow::Result<Arc<dyn Backend>> {
        open_backend(
            &self.backend,
            self.data_dir(),
            &self.name,
            Opening::default(),
        )
        .await
    }

    fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| strata::config::default_data_dir(&self.name))
    }

    /// Where the data went, for the operator.
    fn place(&self) -> String {
        match self.backend.as_str() {
            "embedded" => self.data_dir().display().to_string(),
            _ => "the PostgreSQL database".to_owned(),
        }
    }
}

/// `strata snapshot`: etcd snapshots in and out.
#[derive(clap::Parser)]
#[command(name = "strata snapshot")]
enum SnapshotCommand {
    /// Fills a new store with an etcd snapshot (from `etcdctl snapshot save`, or `strata snapshot
    /// save`), every revision, lease, user and role as it was.
    Restore {
        /// The snapshot file.
        file: PathBuf,
        #[command(flatten)]
        target: Target,
        /// Restore a database that has no SHA-256 at its end (a copy of etcd's member/snap/db).
        #[arg(long)]
        skip_hash_check: bool,
    },
    /// Saves a snapshot of a running etcd or Strata, as `etcdctl snapshot save` does.
    Save {
        /// Where to write it.
        file: PathBuf,
        /// The server's client URL.
        #[arg(long, default_value = "http://127.0.0.1:2379")]
        endpoints: String,
        /// The CA that signed the server's certificate (for https).
        #[arg(long)]
        cacert: Option<PathBuf>,
        /// A client certificate, for a server that asks for one.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// The client certificate's key.
        #[arg(long)]
        key: Option<PathBuf>,
        /// `name:password`, for a server with auth on.
        #[arg(long)]
        user: Option<String>,
    },
}

async fn snapshot(command: SnapshotCommand) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::Restore {
            file,
            target,
            skip_hash_check,
        } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let database = strata::snapshot::database_of(&bytes, skip_hash_check)?;
            let snapshot = strata::snapshot::open(database)?;
            let backend = target.open().await?;
            let mut progress = ProgressLine::new();
            let restored = strata::snapshot::restore(backend.as_ref(), &snapshot, &mut |r| {
                progress.show(Step::Restoring(*r))
            })
            .await?;
            progress.done();
            println!(
                "restored {} into {}",
                restored.summary(&snapshot),
                target.place()
            );
            Ok(())
        }
        SnapshotCommand::Save {
            file,
            endpoints,
            cacert,
            cert,
            key,
            user,
        } => {
            let source = Source::connect(&Connection {
                url: endpoints,
                ca: cacert,
                cert,
                key,
                user,
            })
            .await?;
            save(&file, &source.snapshot(|_| {}).await?)
        }
    }
}

/// Writes a snapshot into `file` (through `file.part`), once its SHA-256 checks.
fn save(file: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    strata::snapshot::database_of(bytes, false)?;
    let partial = file.with_extension("part");
    let mut out = std::fs::File::create(&partial)?;
    std::io::Write::write_all(&mut out, bytes)?;
    out.sync_all()?;
    std::fs::rename(&partial, file)?;
    println!("Snapshot saved at {}", file.display());
    Ok(())
}

/// `strata migrate`: copies a running etcd into a new store, every revision at its own number,
/// and follows it until told to cut over.
#[derive(clap::Parser)]
#[command(name = "strata migrate")]
struct MigrateCommand {
    /// The source's client URL (etcd's, or another Strata's).
    #[arg(long)]
    from: String,
    /// The CA that signed the source's certificate (for https).
    #[arg(long)]
    from_cacert: Option<PathBuf>,
    /// A client certificate, for a source that asks for one (etcd's --client-cert-auth).
    #[arg(long)]
    from_cert: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long)]
    from_key: Option<PathBuf>,
    /// `name:password`, for a source with auth on (root: the copy reads everything).
    #[arg(long)]
    from_user: Option<String>,
    #[command(flatten)]
    target: Target,
    /// Stop as soon as the copy has caught up, instead of following the source until SIGINT or
    /// SIGTERM.
    #[arg(long)]
    cutover: bool,
}

async fn migrate(command: MigrateCommand) -> anyhow::Result<()> {
    let source = Source::connect(&Connection {
        url: command.from.clone(),
        ca: command.from_cacert,
        cert: command.from_cert,
        key: command.from_key,
        user: command.from_user,
    })
    .await?;
    let target = command.target.open().await?;
    let stop: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> = if command.cutover {
        Box::pin(std::future::ready(()))
    } else {
        Box::pin(shutdown_signal())
    };
    let mut progress = ProgressLine::new();
    let finished = strata::migrate::migrate(&source, target.as_ref(), stop, &mut |step| {
        progress.show(step)
    })
    .await?;
    progress.done();
    println!(
        "copied {} up to revision {} into {}, with {} leases",
        command.from,
        finished.revision,
        command.target.place(),
        finished.leases
    );
    if finished.missed > 0 {
        println!(
            "warning: the source wrote {} more revisions after the cut-over point; they are not in \
             the copy (stop every writer before cutting over)",
            finished.missed
        );
    }
    Ok(())
}

/// The migration's progress on standard error: one line redrawn in place on a terminal, a line
/// every ten seconds otherwise.
struct ProgressLine {
    terminal: bool,
    from: Option<i64>,
    last: Option<(std::time::Instant, i64)>,
    printed: Option<std::time::Instant>,
}

impl ProgressLine {
    fn new() -> ProgressLine {
        ProgressLine {
            terminal: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            from: None,
            last: None,
            printed: None,
        }
    }

    fn show(&mut self, step: Step) {
        let line = match step {
            Step::Receiving(bytes) => {
                if !self.due() {
                    return;
                }
                format!("receiving the snapshot: {} MiB", bytes >> 20)
            }
            Step::Restoring(restored) => {
                if !self.due() {
                    return;
                }
                format!(
                    "restoring: {} revisions, up to revision {}",
                    restored.revisions, restored.head
                )
            }
            Step::Restored { revision, summary } => {
                self.from = Some(revision);
                return self.say(&format!("restored {summary}; now at revision {revision}"));
            }
            Step::Following(from) => {
                return self.say(&format!("following the source from revision {from}"));
            }
            Step::Lag { applied, head } => {
                let now = std::time::Instant::now();
                let rate = self.last.map_or(0.0, |(then, at)| {
                    (applied - at) as f64 / now.duration_since(then).as_secs_f64()
                });
                self.last = Some((now, applied));
                if !self.due() {
                    return;
                }
                let from = self.from.unwrap_or(applied);
                let done = if head > from {
                    (applied - from) as f64 / (head - from) as f64
                } else {
                    1.0
                };
                let filled = (done.clamp(0.0, 1.0) * 30.0).round() as usize;
                format!(
                    "[{}{}] at revision {applied} of {head}, {} behind, {rate:.0} revisions/s",
                    "#".repeat(filled),
                    ".".repeat(30 - filled),
                    (head - applied).max(0)
                )
            }
            Step::CuttingOver(head) => {
                return self.say(&format!(
                    "cutting over: the copy stops once it has the source's revision {head}"
                ));
            }
            Step::AuthRetaken => {
                return self.say("users or roles changed during the migration: taken again");
            }
            Step::AuthUnknown => {
                return self.say(
                    "warning: the source (etcd 3.4?) cannot tell whether users or roles changed \
                     during the migration; the copy has them as of its start",
                );
            }
        };
        if self.terminal {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }

    /// Whether a redrawn line is due: ten times a second on a terminal, every ten seconds
    /// elsewhere.
    fn due(&mut self) -> bool {
        let now = std::time::Instant::now();
        let every = if self.terminal { 100 } else { 10_000 };
        if self
            .printed
            .is_none_or(|t| now.duration_since(t).as_millis() >= every)
        {
            self.printed = Some(now);
            return true;
        }
        false
    }

    /// A line of its own.
    fn say(&mut self, line: &str) {
        self.done();
        eprintln!("{line}");
    }

    /// Ends a line redrawn in place.
    fn done(&mut self) {
        if self.terminal && self.printed.take().is_some() {
            eprintln!();
        }
    }
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
