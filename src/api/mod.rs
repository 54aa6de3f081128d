//! The gRPC face of Strata: decode, check, call mvcc, encode. No semantics live here.
//!
//! One file per etcd service; every RPC of etcd 3.5's is served. A path that names none answers
//! `Unimplemented`.

mod access;
mod auth;
mod authority;
mod cluster;
mod election;
mod gateway;
mod health;
mod http;
mod http_guard;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod observe;
mod ping_policy;
mod status;
mod tls;
pub mod validation;
mod watch;

use crate::auth::AuthStore;
use crate::backend::MemberRecord;
use crate::config::{Config, GRPC_OVERHEAD_BYTES};
use crate::error::Result;
use crate::mvcc::Store;
use crate::proto::etcdserverpb::auth_server::AuthServer;
use crate::proto::etcdserverpb::cluster_server::ClusterServer;
use crate::proto::etcdserverpb::kv_server::KvServer;
use crate::proto::etcdserverpb::lease_server::LeaseServer;
use crate::proto::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::proto::etcdserverpb::watch_server::WatchServer;
use crate::proto::etcdserverpb::ResponseHeader;
use crate::proto::v3electionpb::election_server::ElectionServer;
use crate::proto::v3lockpb::lock_server::LockServer;
use crate::tasks::Tasks;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

/// etcd 3.5 release whose behaviour Strata reproduces; kube-apiserver reads it from Status.
pub const ETCD_VERSION: &str = "3.5.33";

/// The cluster version etcd reports: the server's major.minor with patch 0.
fn cluster_version() -> String {
    format!("{}.0", minor_version())
}

/// The server's major.minor version, as etcd's `etcd_cluster_version` metric labels it.
fn minor_version() -> String {
    let mut parts = ETCD_VERSION.split('.');
    let (major, minor) = (parts.next().unwrap_or("3"), parts.next().unwrap_or("5"));
    format!("{major}.{minor}")
}

/// A single-member cluster never changes leader, so its raft term never moves from the one a
/// fresh etcd member reports once it has elected itself.
const RAFT_TERM: u64 = 2;

/// How long a shutdown waits for open streams and connections before closing them: etcd's request
/// timeout (5 s plus twice its 1 s election timeout), which bounds its graceful stop the same way.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(7);

/// Idle time before TCP probes a client connection, and the time between probes.
const TCP_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// What every service needs: the store, who may do what, the limits, and how to fill a response
/// header.
#[derive(Clone)]
struct Context {
    store: Arc<Store>,
    auth: Arc<AuthStore>,
    limits: validation::Limits,
    quota_bytes: u64,
    /// This frontend, as the member list shows it.
    member: MemberRecord,
    watch_progress_interval: std::time::Duration,
}

impl Context {
    /// Fills a top-level response header as etcd does: ids and term always, revision if mvcc left
    /// it at zero.
    fn fill(&self, header: &mut Option<ResponseHeader>) {
        let identity = self.store.identity();
        let h = header.get_or_insert_with(Default::default);
        h.cluster_id = identity.cluster_id;
        h.member_id = identity.member_id;
        h.raft_term = RAFT_TERM;
        if h.revision == 0 {
            h.revision = self.store.revision();
        }
    }

    /// Refuses a request adding `cost` bytes once the backend quota is reached, as etcd does.
    async fn check_quota(&self, cost: u64) -> Result<()> {
        self.store.check_space(cost, self.quota_bytes).await
    }
}

/// How often a frontend tells the others sharing its backend that it is alive.
const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Announces this frontend for as long as the store lives, so the member list shows it.
async fn heartbeat(store: std::sync::Weak<Store>, member: MemberRecord) {
    loop {
        tokio::time::sleep(HEARTBEAT_INTERVAL).await;
        let Some(store) = store.upgrade() else {
            return;
        };
        if let Err(e) = store.heartbeat(&member).await {
            tracing::warn!(error = %e, "could not announce this frontend");
        }
    }
}

/// A running server: the addresses it listens on, and its tasks.
pub struct Server {
    pub addresses: Vec<SocketAddr>,
    listeners: Vec<tokio::task::JoinHandle<std::result::Result<(), tonic::transport::Error>>>,
    stopped: tokio::sync::watch::Receiver<bool>,
    /// The heartbeat, and the wait for the shutdown signal.
    background: Tasks,
}

impl Server {
    /// Binds every `--listen-client-urls`, `--listen-client-http-urls` and `--listen-metrics-urls`
    /// address and serves until `shutdown` completes.
    pub async fn start(
        config: &Config,
        store: Arc<Store>,
        auth: Arc<AuthStore>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Server> {
        let sockets = Sockets {
            reuse_port: config.socket_reuse_port,
        };
        let client = bind_all(&config.listen_client_urls, sockets).await?;
        let client_http = bind_all(&config.listen_client_http_urls, sockets).await?;
        let metrics = bind_all(&config.listen_metrics_urls, sockets).await?;
        let tls = if client
            .iter()
            .chain(&client_http)
            .chain(&metrics)
            .any(|(_, secure)| *secure)
        {
            Some(tls::acceptor(config)?)
        } else {
            None
        };
        let addresses: Vec<SocketAddr> = client
            .iter()
            .filter_map(|(l, _)| match l {
                Bound::Tcp(l) => Some(l.local_addr()),
                Bound::Unix(..) => None,
            })
            .collect::<std::io::Result<_>>()?;
        let client_urls = if config.advertise_client_urls.is_empty() {
            client.iter().map(|(l, secure)| l.url(*secure)).collect()
        } else {
            config.advertise_client_urls.clone()
        };
        let member = MemberRecord {
            id: store.identity().member_id,
            name: config.name.clone(),
            client_urls,
            peer_urls: config.peer_urls.clone(),
        };
        store.heartbeat(&member).await?;
        let background = Tasks::default();
        background.spawn(heartbeat(Arc::downgrade(&store), member.clone()));
        let context = Context {
            store,
            auth,
            limits: validation::Limits {
                max_request_bytes: config.max_request_bytes,
                max_txn_ops: config.max_txn_ops,
            },
            quota_bytes: config.quota_backend_bytes,
            member,
            watch_progress_interval: config.watch_progress_notify_interval,
        };
        let grpc = grpc_routes(config, &context);
        // HTTP beside gRPC on the client URLs, unless URLs of its own serve it (as etcd splits them).
        let http = || {
            let routes = http::routes(context.clone());
            tonic::service::Routes::from(if config.enable_grpc_gateway {
                routes.merge(gateway::routes(grpc.clone()))
            } else {
                routes
            })
        };
        let mut client_routes = grpc.clone();
        if client_http.is_empty() {
            *client_routes.axum_router_mut() =
                std::mem::take(client_routes.axum_router_mut()).merge(http().into_axum_router());
        }
        let metrics_routes =
            tonic::service::Routes::from(http::probes_and_metrics(context.clone()));

        let (stop, stopped) = tokio::sync::watch::channel(false);
        background.spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });
        let mut serving = Vec::new();
        let grpc_only = !client_http.is_empty();
        // On client URLs, HTTP passes etcd's access controller (--host-whitelist, --cors).
        let mut serve = |listeners: Vec<(Bound, bool)>,
                         routes: &tonic::service::Routes,
                         guarded: bool,
                         paced: bool,
                         what| {
            for (listener, secure) in listeners {
                let routes = if guarded {
                    let guard =
                        http_guard::Guard::new(&config.host_whitelist, &config.cors, !secure);
                    tonic::service::Routes::from(
                        routes
                            .clone()
                            .into_axum_router()
                            .layer(http_guard::GuardLayer(guard)),
                    )
                } else {
                    routes.clone()
                };
                match &listener {
                    Bound::Tcp(l) => {
                        if let Ok(address) = l.local_addr() {
                            tracing::info!(%address, "ready to serve {what}");
                        }
                    }
                    Bound::Unix(_, path) => {
                        tracing::info!(path = %path.display(), "ready to serve {what} on a unix socket");
                    }
                }
                // etcd's gRPC server holds clients to --grpc-keepalive-min-time where it serves
                // their connections itself (see ping_policy).
                let pings =
                    (paced && (!secure || grpc_only)).then_some(config.grpc_keepalive_min_time);
                serving.push(serve_listener(
                    config,
                    listener,
                    secure.then(|| tls.clone()).flatten(),
                    routes,
                    pings,
                    stopped.clone(),
                ));
            }
        };
        serve(
            metrics,
            &metrics_routes,
            false,
            false,
            "metrics and health probes",
        );
        serve(client_http, &http(), true, false, "client HTTP requests");
        serve(client, &client_routes, true, true, "client requests");
        Ok(Server {
            addresses,
            listeners: serving,
            stopped,
            background,
        })
    }

    /// Waits until every listener has stopped, or until the shutdown grace period has passed
    /// with connections still open (a client that never goes away must not hold the server up);
    /// then stops the heartbeat.
    pub async fn wait(self) -> anyhow::Result<()> {
        let Server {
            listeners,
            mut stopped,
            background,
            ..
        } = self;
        let served = async {
            for listener in listeners {
                listener.await??;
            }
            anyhow::Ok(())
        };
        let grace = async {
            let _ = stopped.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        let done = tokio::select! {
            done = served => done,
            () = grace => {
                tracing::warn!("closing connections still open after the shutdown grace period");
                Ok(())
            }
        };
        background.stop().await;
        done
    }
}

/// The gRPC services, with the routes etcd answers beside them: `Unimplemented` for a method it
/// does not have, the client-certificate user, and the calls' metrics.
fn grpc_routes(config: &Config, context: &Context) -> tonic::service::Routes {
    let max_message = config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    // Every service takes requests up to the limit (etcd's gRPC layer allows a little more than
    // --max-request-bytes, which the handlers then check) and answers of any size.
    macro_rules! limited {
        ($server:ident, $service:expr) => {
            $server::new($service)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(usize::MAX)
        };
    }
    let mut routes = tonic::service::Routes::builder();
    routes
        .add_service(limited!(KvServer, kv::KvService(context.clone())))
        .add_service(limited!(
            MaintenanceServer,
            maintenance::MaintenanceService(context.clone())
        ))
        .add_service(limited!(LeaseServer, lease::LeaseService(context.clone())))
        .add_service(limited!(
            ElectionServer,
            election::ElectionService(context.clone())
        ))
        .add_service(limited!(LockServer, lock::LockService(context.clone())))
        .add_service(limited!(WatchServer, watch::WatchService(context.clone())))
        .add_service(limited!(AuthServer, auth::AuthService(context.clone())))
        .add_service(limited!(
            ClusterServer,
            cluster::ClusterService(context.clone())
        ))
        .add_service(health::server());
    let mut routes = routes.routes();
    *routes.axum_router_mut() = std::mem::take(routes.axum_router_mut())
        .fallback(not_built)
        .layer(axum::middleware::from_fn_with_state(
            config.client_cert_auth,
            access::certificate_user,
        ))
        .layer(axum::middleware::from_fn(observe::grpc));
    routes
}

/// A listener bound for a listen URL: a TCP port, or a unix socket (`unix://` and `unixs://`
/// URLs, the socket at the URL's host and path, as etcd places it).
enum Bound {
    Tcp(TcpListener),
    Unix(tokio::net::UnixListener, std::path::PathBuf),
}

impl Bound {
    /// The URL clients reach it at.
    fn url(&self, secure: bool) -> String {
        match self {
            Bound::Tcp(l) => {
                let scheme = if secure { "https" } else { "http" };
                let address = l
                    .local_addr()
                    .map_or_else(|e| e.to_string(), |a| a.to_string());
                format!("{scheme}://{address}")
            }
            Bound::Unix(_, path) => {
                let scheme = if secure { "unixs" } else { "unix" };
                format!("{scheme}://{}", path.display())
            }
        }
    }
}

/// Serves `routes` on `listener` (through `tls` if given, holding clients to `pings` if given: see
/// [`ping_policy`]) until `stopped` turns true; a unix socket's file is removed when it stops, as
/// etcd removes it.
fn serve_listener(
    config: &Config,
    listener: Bound,
    tls: Option<tokio_rustls::TlsAcceptor>,
    routes: tonic::service::Routes,
    pings: Option<std::time::Duration>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::result::Result<(), tonic::transport::Error>> {
    // HTTP/1.1 too: health probes and metrics scrapers rarely speak HTTP/2.
    // 0 turns the pings off, and leaves the timeout at its default.
    let set = |d: std::time::Duration| Some(d).filter(|d| !d.is_zero());
    let server = tonic::transport::Server::builder()
        .accept_http1(true)
        .max_concurrent_streams(config.max_concurrent_streams)
        .http2_keepalive_interval(set(config.grpc_keepalive_interval))
        .http2_keepalive_timeout(set(config.grpc_keepalive_timeout))
        .add_routes(routes);
    let stop = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    match (listener, tls) {
        (Bound::Tcp(listener), tls) => {
            let incoming = TcpListenerStream::new(listener).map(|stream| {
                if let Ok(s) = &stream {
                    // Replies are small and latency-bound: Nagle's algorithm would hold each
                    // one back until the client's delayed acknowledgement (tens of
                    // milliseconds).
                    let _ = s.set_nodelay(true);
                    // A client whose machine went away is found by TCP in a few minutes, as by
                    // etcd (Go's listeners probe every 15 s).
                    let keepalive = socket2::TcpKeepalive::new()
                        .with_time(TCP_KEEPALIVE)
                        .with_interval(TCP_KEEPALIVE);
                    let _ = socket2::SockRef::from(s).set_tcp_keepalive(&keepalive);
                }
                stream
            });
            match tls {
                Some(tls) => {
                    let incoming = tls::accept(incoming, tls).map(client(pings));
                    tokio::spawn(server.serve_with_incoming_shutdown(incoming, stop))
                }
                None => tokio::spawn(
                    server.serve_with_incoming_shutdown(incoming.map(client(pings)), stop),
                ),
            }
        }
        (Bound::Unix(listener, path), tls) => {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            tokio::spawn(async move {
                let served = match tls {
                    Some(tls) => {
                        let incoming = tls::accept(incoming, tls).map(client(pings));
                        server.serve_with_incoming_shutdown(incoming, stop).await
                    }
                    None => {
                        server
                            .serve_with_incoming_shutdown(incoming.map(client(pings)), stop)
                            .await
                    }
                };
                let _ = std::fs::remove_file(&path);
                served
            })
        }
    }
}

/// A client connection whose requests may name any authority, as etcd takes them, held to
/// `pings`.
fn client<T>(
    pings: Option<std::time::Duration>,
) -> impl Fn(std::io::Result<T>) -> std::io::Result<ping_policy::Paced<authority::Lenient<T>>> {
    move |connection| connection.map(|c| ping_policy::Paced::new(authority::Lenient::new(c), pings))
}

/// Binds every URL of a list, each with whether it is secure (https, unixs).
async fn bind_all(urls: &[String], sockets: Sockets) -> anyhow::Result<Vec<(Bound, bool)>> {
    let mut listeners = Vec::new();
    for url in urls {
        let secure = url.starts_with("https://") || url.starts_with("unixs://");
        if let Some(path) = url
            .strip_prefix("unix://")
            .or_else(|| url.strip_prefix("unixs://"))
        {
            // etcd removes a socket left by an earlier run before listening.
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    anyhow::bail!("cannot listen on {url}: {e}")
                }
                _ => {}
            }
            let listener = tokio::net::UnixListener::bind(path)
                .map_err(|e| anyhow::anyhow!("cannot listen on {url}: {e}"))?;
            listeners.push((Bound::Unix(listener, path.into()), secure));
            continue;
        }
        listeners.extend(
            bind(url, sockets)
                .await?
                .into_iter()
                .map(|l| (Bound::Tcp(l), secure)),
        );
    }
    Ok(listeners)
}

/// Socket options of TCP listeners: etcd's `--socket-reuse-port`.
#[derive(Clone, Copy)]
struct Sockets {
    reuse_port: bool,
}

impl Sockets {
    fn bind(self, address: SocketAddr) -> std::io::Result<TcpListener> {
        let socket = if address.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As Go's listeners do on Linux whatever --socket-reuse-address says: a restarted server
        // takes its port back at once.
        socket.set_reuseaddr(true)?;
        if self.reuse_port {
            socket.set_reuseport(true)?;
        }
        socket.bind(address)?;
        socket.listen(1024)
    }
}

/// Binds an `http://host:port` or `https://host:port` URL: every address the host resolves to.
async fn bind(url: &str, sockets: Sockets) -> anyhow::Result<Vec<TcpListener>> {
    let Some(authority) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        anyhow::bail!(
            "cannot listen on {url}: listen URLs are http://, https://, unix:// or unixs://"
        );
    };
    let authority = authority.trim_end_matches('/');
    let mut listeners = Vec::new();
    let mut port = None;
    let mut failure = None;
    for address in tokio::net::lookup_host(authority).await? {
        // Port 0 picks a free port once; every address of the host then shares it.
        let address = SocketAddr::new(address.ip(), port.unwrap_or(address.port()));
        match sockets.bind(address) {
            Ok(listener) => {
                port = Some(listener.local_addr()?.port());
                listeners.push(listener);
            }
            // localhost may name an IPv6 address on a host without IPv6.
            Err(e) => {
                tracing::warn!(%address, error = %e, "cannot listen on one address of {url}");
                failure = Some(e);
            }
        }
    }
    match failure {
        Some(e) if listeners.is_empty() => anyhow::bail!("cannot listen on {url}: {e}"),
        _ if listeners.is_empty() => anyhow::bail!("{url} resolves to no address"),
        _ => Ok(listeners),
    }
}

/// Answers a gRPC call to a method that is not etcd's with `Unimplemented`; a plain HTTP request for
/// an unknown path gets 404, as from etcd.
async fn not_built(request: axum::extract::Request) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = request.uri().path().to_owned();
    let is_grpc = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    if is_grpc {
        return tonic::Status::unimplemented(format!(
            "strata: {} is not a method of etcd's API",
            path.trim_start_matches('/')
        ))
        .into_http();
    }
    (axum::http::StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}
