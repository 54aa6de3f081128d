//! Connecting as libpq does to a connection string that names several hosts (an HA pair behind
//! `target_session_attrs=read-write`): each host in turn, each with a deadline of its own for its
//! whole attempt (`connect_timeout`, else [`STATEMENT_DEADLINE`]). tokio-postgres bounds only the
//! TCP connect of each host, so a primary that hangs (its kernel still accepts connections, nothing
//! answers them) would hold the attempt, and every later host, for as long as the caller waits.
//!
//! Unlike libpq, the host that last took a connection as asked is tried first: after a failover
//! that is the new primary, so the connections that follow do not each wait out the deadline of
//! an old primary that hangs before the host list reaches it.

use super::tls::Connection;
use super::{db_error, Result, STATEMENT_DEADLINE};
use crate::backend::BackendError;
use std::sync::atomic::Ordering;
use tokio_postgres::config::{Host, LoadBalanceHosts};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The connection task tokio-postgres hands back with a client.
pub type Task =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// A client connected to the first host of `config` that answers as asked within its deadline,
/// and which host of the connection string it is.
pub async fn connect(config: &Connection) -> Result<(Client, Task, usize)> {
    let hosts = config.config.get_hosts().len();
    let limit = config
        .config
        .get_connect_timeout()
        .copied()
        .unwrap_or(STATEMENT_DEADLINE);
    // One host, or hosts tried in a random order, as tokio-postgres does it: one deadline.
    if hosts <= 1 || config.config.get_load_balance_hosts() == LoadBalanceHosts::Random {
        let (client, task) = attempt(&config.config, config, limit).await?;
        return Ok((client, task, 0));
    }
    let mut failure = None;
    let first = config.last_good.load(Ordering::Relaxed) % hosts;
    for i in (first..hosts).chain(0..first) {
        match attempt(&one_host(&config.config, i), config, limit).await {
            Ok((client, task)) => {
                config.last_good.store(i, Ordering::Relaxed);
                return Ok((client, task, i));
            }
            Err(e) => {
                tracing::debug!(host = ?config.config.get_hosts()[i], error = %e, "postgres host passed over");
                failure = Some(e);
            }
        }
    }
    Err(failure.expect("at least one host was tried"))
}

async fn attempt(
    one: &Config,
    config: &Connection,
    limit: std::time::Duration,
) -> Result<(Client, Task)> {
    match tokio::time::timeout(limit, one.connect(config.tls.clone())).await {
        Ok(connected) => connected.map_err(db_error),
        Err(_) => Err(BackendError::storage(format!(
            "postgres: {:?} did not answer within {}s",
            one.get_hosts().first(),
            limit.as_secs()
        ))),
    }
}

/// `config` with its `i`th host (and that host's address and port) alone.
fn one_host(config: &Config, i: usize) -> Config {
    let mut one = Config::new();
    if let Some(user) = config.get_user() {
        one.user(user);
    }
    if let Some(password) = config.get_password() {
        one.password(password);
    }
    if let Some(dbname) = config.get_dbname() {
        one.dbname(dbname);
    }
    if let Some(options) = config.get_options() {
        one.options(options);
    }
    if let Some(name) = config.get_application_name() {
        one.application_name(name);
    }
    match &config.get_hosts()[i] {
        Host::Tcp(host) => one.host(host),
        Host::Unix(path) => one.host_path(path),
    };
    if let Some(address) = config.get_hostaddrs().get(i) {
        one.hostaddr(*address);
    }
    // One port for every host, or one each.
    let ports = config.get_ports();
    if let Some(port) = ports.get(i).or(ports.first()) {
        one.port(*port);
    }
    if let Some(timeout) = config.get_connect_timeout() {
        one.connect_timeout(*timeout);
    }
    if let Some(timeout) = config.get_tcp_user_timeout() {
        one.tcp_user_timeout(*timeout);
    }
    one.keepalives(config.get_keepalives())
        .keepalives_idle(config.get_keepalives_idle());
    if let Some(interval) = config.get_keepalives_interval() {
        one.keepalives_interval(interval);
    }
    if let Some(retries) = config.get_keepalives_retries() {
        one.keepalives_retries(retries);
    }
    one.ssl_mode(config.get_ssl_mode())
        .ssl_negotiation(config.get_ssl_negotiation())
        .target_session_attrs(config.get_target_session_attrs())
        .channel_binding(config.get_channel_binding());
    one
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_host_keeps_every_other_setting() {
        let config: Config = "host=a,b port=5432,5433 user=u password=p dbname=d \
             target_session_attrs=read-write connect_timeout=3 sslmode=disable"
            .parse()
            .unwrap();
        let second = one_host(&config, 1);
        assert_eq!(second.get_hosts(), &[Host::Tcp("b".to_owned())]);
        assert_eq!(second.get_ports(), &[5433]);
        assert_eq!(second.get_user(), Some("u"));
        assert_eq!(second.get_password(), Some(&b"p"[..]));
        assert_eq!(second.get_dbname(), Some("d"));
        assert_eq!(
            second.get_target_session_attrs(),
            config.get_target_session_attrs()
        );
        assert_eq!(
            second.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        let shared_port: Config = "host=a,b port=5432".parse().unwrap();
        assert_eq!(one_host(&shared_port, 1).get_ports(), &[5432]);
    }
}
