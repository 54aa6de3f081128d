//! `strata`: serve etcd's v3 API from a data directory or a PostgreSQL database.

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
    let backend: Arc<dyn Backend> = match config.backend.as_str() {
        "embedded" => {
            let dir = config.data_dir();
            tracing::info!(data_dir = %dir.display(), "opening the embedded store");
            Arc::new(Embedded::open(&dir)?)
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
            let member = format!(
                "{} {} {}",
                config.name,
                config.listen_client_urls.join(","),
                config.advertise_client_urls.join(",")
            );
            Arc::new(Postgres::open(postgres, &member).await?)
        }
    };
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
