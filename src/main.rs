//! `strata`: serve etcd's v3 API from a data directory or a PostgreSQL database; `strata snapshot`
//! moves data in and out as etcd snapshots.

use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use strata::api::Server;
use strata::auth::AuthStore;
use strata::backend::embedded::Embedded;
use strata::backend::postgres::Postgres;
use strata::backend::Backend;
use strata::config::Config;
use strata::mvcc::Store;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("snapshot") {
        tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("warn"))
            .with_writer(std::io::stderr)
            .init();
        return snapshot(SnapshotCommand::parse_from(std::env::args().skip(1))).await;
    }
    let config = Config::parse_etcd_style(std::env::args());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("STRATA_LOG")
                .unwrap_or_else(|_| EnvFilter::new(&config.log_level)),
        )
        .with_writer(std::io::stderr);
    if config.log_format == "json" {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }

    let auto_compaction = config.auto_compaction().map_err(anyhow::Error::msg)?;
    let member = format!(
        "{} {} {}",
        config.name,
        config.listen_client_urls.join(","),
        config.advertise_client_urls.join(",")
    );
    let backend = open_backend(&config.backend, config.data_dir(), &member).await?;
    let auth = AuthStore::open(
        backend.clone(),
        config.bcrypt_cost,
        std::time::Duration::from_secs(config.auth_token_ttl),
    )
    .await?;
    let store = Store::open(backend).await?;
    if let Some(policy) = auto_compaction {
        tracing::info!(?policy, "automatic compaction");
        tokio::spawn(strata::mvcc::compactor::run(store.clone(), policy));
    }
    let server = Server::start(&config, store, auth, shutdown_signal()).await?;
    server.wait().await?;
    tracing::info!("stopped");
    Ok(())
}

/// The embedded store in `data_dir`, or the PostgreSQL database `backend` names; `member` tells
/// a frontend on PostgreSQL apart from the others.
async fn open_backend(
    backend: &str,
    data_dir: PathBuf,
    member: &str,
) -> anyhow::Result<Arc<dyn Backend>> {
    Ok(match backend {
        "embedded" => {
            tracing::info!(data_dir = %data_dir.display(), "opening the embedded store");
            Arc::new(Embedded::open(&data_dir)?)
        }
        connection => {
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
            Arc::new(Postgres::open(postgres, member).await?)
        }
    })
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
        /// The embedded store to create [default: <name>.strata].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// `embedded`, or the connection string of a PostgreSQL database no frontend serves yet.
        #[arg(long, default_value = "embedded")]
        backend: String,
        /// Names the default data directory, as for the server.
        #[arg(long, default_value = "default")]
        name: String,
        /// Restore a database that has no SHA-256 at its end (a copy of etcd's member/snap/db).
        #[arg(long)]
        skip_hash_check: bool,
    },
    /// Saves a snapshot of a running etcd or Strata, as `etcdctl snapshot save` does.
    Save {
        /// Where to write it.
        file: PathBuf,
        /// The server's client URL (http://).
        #[arg(long, default_value = "http://127.0.0.1:2379")]
        endpoints: String,
    },
}

async fn snapshot(command: SnapshotCommand) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::Restore {
            file,
            data_dir,
            backend,
            name,
            skip_hash_check,
        } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let database = strata::snapshot::database_of(&bytes, skip_hash_check)?;
            let contents = strata::snapshot::contents(database)?;
            let summary = format!(
                "{} revisions up to {} (compacted at {}), {} leases, {} users, {} roles",
                contents.log.len(),
                contents.head(),
                contents.compacted,
                contents.leases.len(),
                contents.auth.users.len(),
                contents.auth.roles.len()
            );
            let data_dir = data_dir.unwrap_or_else(|| PathBuf::from(format!("{name}.strata")));
            let target = open_backend(&backend, data_dir.clone(), &name).await?;
            strata::snapshot::restore(target.as_ref(), contents).await?;
            let place = match backend.as_str() {
                "embedded" => data_dir.display().to_string(),
                _ => "the PostgreSQL database".to_owned(),
            };
            println!("restored {summary} into {place}");
            Ok(())
        }
        SnapshotCommand::Save { file, endpoints } => save(&file, &endpoints).await,
    }
}

/// Streams a server's snapshot into `file` (through `file.part`), checking its SHA-256.
async fn save(file: &std::path::Path, endpoint: &str) -> anyhow::Result<()> {
    use strata::proto::etcdserverpb::maintenance_client::MaintenanceClient;
    use strata::proto::etcdserverpb::SnapshotRequest;
    let mut client = MaintenanceClient::connect(endpoint.to_owned())
        .await?
        .max_decoding_message_size(usize::MAX);
    let mut stream = client.snapshot(SnapshotRequest {}).await?.into_inner();
    let mut bytes = Vec::new();
    while let Some(message) = stream.message().await? {
        bytes.extend_from_slice(&message.blob);
    }
    strata::snapshot::database_of(&bytes, false)?;
    let partial = file.with_extension("part");
    let mut out = std::fs::File::create(&partial)?;
    std::io::Write::write_all(&mut out, &bytes)?;
    out.sync_all()?;
    std::fs::rename(&partial, file)?;
    println!("Snapshot saved at {}", file.display());
    Ok(())
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
