//! Live migration: copies a running etcd (or Strata) into a new store while it keeps serving,
//! every revision at its own number, so that kube-apiserver's resourceVersions and watches carry
//! on against the copy.
//!
//! The copy starts from a snapshot taken through the Snapshot RPC and restored as `strata snapshot
//! restore` restores a file. It then follows the source's watch from the snapshot's revision on and
//! appends each revision's events at that revision: an append that does not follow the copy's head
//! by one is refused, so the copy's revision sequence is the source's or the migration stops.
//! Leases and users are not in the watch: a lease a copied key names is looked up when the key
//! arrives, and at the cut-over the leases are made the source's and the users and roles are taken
//! again if the source's auth revision moved.

use crate::backend::{Backend, LogEntry};
use crate::proto::etcdserverpb::auth_client::AuthClient;
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::proto::etcdserverpb::watch_client::WatchClient;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::{
    AuthStatusRequest, AuthenticateRequest, LeaseLeasesRequest, LeaseTimeToLiveRequest,
    RangeRequest, SnapshotRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
use crate::proto::mvccpb::event::EventType;
use crate::proto::mvccpb::{Event, KeyValue};
use anyhow::{anyhow, bail, Context as _};
use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Streaming};

/// How to reach the source, with etcdctl's choices.
#[derive(Clone, Debug, Default)]
pub struct Connection {
    /// A client URL: `http://host:port`, or `https://` with `ca`.
    pub url: String,
    /// The CA that signed the source's certificate.
    pub ca: Option<PathBuf>,
    /// A client certificate and its key, for a source that asks for one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `name:password`, for a source with auth on (root, to read everything).
    pub user: Option<String>,
}

/// A connected source: its channel, and the token its requests carry when it has auth on.
#[derive(Clone)]
pub struct Source {
    channel: Channel,
    token: Option<AsciiMetadataValue>,
}

/// A key and range end that together name every key.
const WATCH_ALL: &[u8] = b"\0";
/// How often the source's head is asked for, to report the lag.
const LAG_EVERY: Duration = Duration::from_secs(1);
/// How many times in a row a lost watch is opened again before the migration gives up.
const RECONNECTS: u32 = 30;
/// Watch responses read ahead while the copy appends.
const READ_AHEAD: usize = 256;
/// Events an append gathers at most, from the responses read ahead (whole responses: one may
/// take it past this).
const APPLY_EVENTS: usize = 10_000;

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

impl Source {
    pub async fn connect(connection: &Connection) -> anyhow::Result<Source> {
        let mut endpoint = Endpoint::from_shared(connection.url.clone())
            .with_context(|| format!("{} is not a URL", connection.url))?;
        if connection.url.starts_with("https://") {
            let Some(ca) = &connection.ca else {
                bail!(
                    "{} is https: name the CA that signed its certificate",
                    connection.url
                );
            };
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
            match (&connection.cert, &connection.key) {
                (Some(cert), Some(key)) => {
                    tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
                }
                (None, None) => {}
                _ => bail!("a client certificate needs its key, and a key its certificate"),
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", connection.url))?;
        let mut source = Source {
            channel,
            token: None,
        };
        if let Some(user) = &connection.user {
            let (name, password) = user
                .split_once(':')
                .ok_or_else(|| anyhow!("the user is to be given as name:password"))?;
            let answer = AuthClient::new(source.channel.clone())
                .authenticate(AuthenticateRequest {
                    name: name.to_owned(),
                    password: password.to_owned(),
                })
                .await
                .map_err(|s| anyhow!("cannot authenticate as {name}: {}", s.message()))?;
            source.token = Some(MetadataValue::try_from(answer.into_inner().token)?);
        }
        Ok(source)
    }

    /// `message`, with the token if there is one.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            request.metadata_mut().insert("token", token.clone());
        }
        request
    }

    /// The source's snapshot: its database and the SHA-256 after it, as `etcdctl snapshot save`
    /// writes it. `received` hears the bytes so far after each message.
    pub async fn snapshot(&self, mut received: impl FnMut(usize)) -> anyhow::Result<Vec<u8>> {
        let mut client =
            MaintenanceClient::new(self.channel.clone()).max_decoding_message_size(usize::MAX);
        let mut stream = client
            .snapshot(self.request(SnapshotRequest {}))
            .await
            .map_err(|s| anyhow!("the source refused a snapshot: {}", s.message()))?
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(message) = stream.message().await? {
            bytes.extend_from_slice(&message.blob);
            received(bytes.len());
        }
        Ok(bytes)
    }

    /// The source's current revision, read linearizably.
    async fn head(&self) -> Result<i64, tonic::Status> {
        let answer = KvClient::new(self.channel.clone())
            .range(self.request(RangeRequest {
                key: WATCH_ALL.to_vec().into(),
                count_only: true,
                ..Default::default()
            }))
            .await?;
        Ok(answer.into_inner().header.unwrap_or_default().revision)
    }

    /// A live lease's granted TTL; None once it is gone.
    async fn lease_ttl(&self, id: i64) -> Result<Option<i64>, tonic::Status> {
        let answer = LeaseClient::new(self.channel.clone())
            .lease_time_to_live(self.request(LeaseTimeToLiveRequest { id, keys: false }))
            .await?
            .into_inner();
        Ok((answer.ttl >= 0).then_some(answer.granted_ttl))
    }

    /// Every live lease, as (id, granted TTL).
    async fn leases(&self) -> Result<Vec<(i64, i64)>, tonic::Status> {
        let ids = LeaseClient::new(self.channel.clone())
            .lease_leases(self.request(LeaseLeasesRequest {}))
            .await?
            .into_inner()
            .leases;
        let mut leases = Vec::with_capacity(ids.len());
        for lease in ids {
            if let Some(ttl) = self.lease_ttl(lease.id).await? {
                leases.push((lease.id, ttl));
            }
        }
        Ok(leases)
    }

    /// The revision of the source's users and roles; None from a source that cannot tell (etcd
    /// 3.4 has no AuthStatus).
    async fn auth_revision(&self) -> Result<Option<u64>, tonic::Status> {
        match AuthClient::new(self.channel.clone())
            .auth_status(self.request(AuthStatusRequest {}))
            .await
        {
            Ok(answer) => Ok(Some(answer.into_inner().auth_revision)),
            Err(status) if status.code() == Code::Unimplemented => Ok(None),
            Err(status) => Err(status),
        }
    }

    /// A watch of every key from `from` on, once the source has created it.
    async fn watch(&self, from: i64) -> anyhow::Result<Streaming<WatchResponse>> {
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: WATCH_ALL.to_vec().into(),
                range_end: WATCH_ALL.to_vec().into(),
                start_revision: from,
                ..Default::default()
            })),
        };
        // The request stream stays open: the source ends a watch stream whose requests end.
        let requests = open_ended(create);
        let mut stream = WatchClient::new(self.channel.clone())
            .max_decoding_message_size(usize::MAX)
            .watch(self.request(requests))
            .await?
            .into_inner();
        match stream.message().await? {
            Some(created) if created.created && !created.canceled => Ok(stream),
            Some(refused) => Err(refusal(&refused, from)),
            None => bail!("the source closed the watch before creating it"),
        }
    }
}

/// A watch read ahead by a task of its own, so that responses arrive while the copy appends; the
/// channel closes after the stream's end or error.
struct Incoming {
    responses: tokio::sync::mpsc::Receiver<Result<WatchResponse, tonic::Status>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Incoming {
    fn new(mut stream: Streaming<WatchResponse>) -> Incoming {
        let (send, responses) = tokio::sync::mpsc::channel(READ_AHEAD);
        let reader = tokio::spawn(async move {
            while let Some(response) = stream.message().await.transpose() {
                let failed = response.is_err();
                if send.send(response).await.is_err() || failed {
                    break;
                }
            }
        });
        Incoming { responses, reader }
    }

    /// The events of the next response and of those received meanwhile (whole responses, up to
    /// about [`APPLY_EVENTS`]), for one append; and how the watch ended, if it did after them.
    /// Only its first step waits, so it can be dropped while waiting without losing anything.
    async fn batch(&mut self) -> (Vec<Event>, Option<Ended>) {
        let mut events = Vec::new();
        let mut next = self.responses.recv().await;
        loop {
            match next {
                Some(Ok(response)) if response.canceled => {
                    return (events, Some(Ended::Canceled(response)))
                }
                Some(Ok(response)) => events.extend(response.events),
                Some(Err(status)) => return (events, Some(Ended::Lost(Some(status)))),
                None => return (events, Some(Ended::Lost(None))),
            }
            if events.len() >= APPLY_EVENTS {
                return (events, None);
            }
            match self.responses.try_recv() {
                Ok(response) => next = Some(response),
                Err(_) => return (events, None),
            }
        }
    }
}

/// How a watch ended.
enum Ended {
    /// The source cancelled it, saying why.
    Canceled(WatchResponse),
    /// The stream broke (with the error, if there was one).
    Lost(Option<tonic::Status>),
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A stream of `first`, then nothing, never ending.
fn open_ended<T: Send + 'static>(first: T) -> impl tokio_stream::Stream<Item = T> {
    use tokio_stream::StreamExt;
    tokio_stream::once(first).chain(tokio_stream::pending())
}

/// Why the source cancelled the watch.
fn refusal(response: &WatchResponse, from: i64) -> anyhow::Error {
    if response.compact_revision > 0 {
        anyhow!(
            "the source compacted its history to revision {} before the migration could follow it \
             from {from}: start the migration again, into a new store",
            response.compact_revision
        )
    } else {
        anyhow!("the source cancelled the watch: {}", response.cancel_reason)
    }
}

/// What the migration tells its operator, as it goes.
#[derive(Clone, Debug)]
pub enum Step {
    /// Bytes of the snapshot received so far.
    Receiving(usize),
    /// The snapshot's history restored so far.
    Restoring(crate::snapshot::Restored),
    /// The snapshot is in the copy, up to `revision`.
    Restored { revision: i64, summary: String },
    /// The copy follows the source from `revision` on.
    Following(i64),
    /// Where the copy and the source stand.
    Lag { applied: i64, head: i64 },
    /// Asked to stop: the copy stops once it has `revision`.
    CuttingOver(i64),
    /// Users or roles changed in the source since the snapshot, and were taken again.
    AuthRetaken,
    /// The source cannot tell whether users or roles changed since the snapshot.
    AuthUnknown,
}

/// How the copy ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// The copy holds the source as of this revision.
    pub revision: i64,
    pub leases: usize,
    /// Revisions the source had after the copy's last one when it stopped: writes that are not in
    /// the copy (0 when every writer was stopped before the cut-over).
    pub missed: i64,
}

/// Copies `source` into `target`, an empty store, then follows it until `stop` completes and the
/// copy has caught up with the source's head as of that moment.
pub async fn migrate(
    source: &Source,
    target: &dyn Backend,
    stop: impl Future<Output = ()>,
    report: &mut dyn FnMut(Step),
) -> anyhow::Result<Finished> {
    let file = source.snapshot(|n| report(Step::Receiving(n))).await?;
    let snapshot = crate::snapshot::open(crate::snapshot::database_of(&file, false)?)?;
    let restored = crate::snapshot::restore(target, &snapshot, &mut |r| {
        report(Step::Restoring(*r));
    })
    .await?;
    let mut copy = Copy {
        source,
        target,
        applied: restored.head.max(snapshot.compacted),
        leases: snapshot.leases.iter().map(|l| l.id).collect(),
    };
    report(Step::Restored {
        revision: copy.applied,
        summary: restored.summary(&snapshot),
    });
    let auth_revision = snapshot.auth.revision;
    drop(snapshot);
    drop(file);

    copy.follow(stop, report).await?;

    let leases = copy.same_leases().await?;
    match source.auth_revision().await? {
        Some(revision) if revision != auth_revision => {
            copy.retake_auth().await?;
            report(Step::AuthRetaken);
        }
        Some(_) => {}
        None => report(Step::AuthUnknown),
    }
    let missed = source.head().await? - copy.applied;
    Ok(Finished {
        revision: copy.applied,
        leases,
        missed: missed.max(0),
    })
}

/// The copy under way.
struct Copy<'a> {
    source: &'a Source,
    target: &'a dyn Backend,
    /// The copy's head: every revision up to it is in the target.
    applied: i64,
    /// The leases the target has, or that the source no longer had when a key named them.
    leases: BTreeSet<i64>,
}

impl Copy<'_> {
    /// Follows the source's watch until `stop`, then until the copy reaches the source's head
    /// as of then.
    async fn follow(
        &mut self,
        stop: impl Future<Output = ()>,
        report: &mut dyn FnMut(Step),
    ) -> anyhow::Result<()> {
        let mut incoming = Incoming::new(self.source.watch(self.applied + 1).await?);
        report(Step::Following(self.applied + 1));
        let mut stop = std::pin::pin!(stop);
        let mut until = None;
        let mut lag = tokio::time::interval(LAG_EVERY);
        let mut lost = 0;
        loop {
            if until.is_some_and(|head| self.applied >= head) {
                return Ok(());
            }
            tokio::select! {
                () = &mut stop, if until.is_none() => {
                    let head = self.source.head().await?;
                    report(Step::CuttingOver(head));
                    until = Some(head);
                }
                (events, ended) = incoming.batch() => {
                    self.apply(events).await?;
                    let failure = match ended {
                        None => {
                            lost = 0;
                            continue;
                        }
                        Some(Ended::Canceled(response)) => {
                            return Err(refusal(&response, self.applied + 1));
                        }
                        Some(Ended::Lost(failure)) => failure,
                    };
                    if lost == RECONNECTS {
                        match failure {
                            Some(status) => bail!("the watch on the source failed: {}", status.message()),
                            None => bail!("the source ended the watch"),
                        }
                    }
                    lost += 1;
                    tracing::warn!(attempt = lost, "the watch on the source was lost; opening it again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match self.source.watch(self.applied + 1).await {
                        Ok(again) => incoming = Incoming::new(again),
                        // The old one, ended, answers at once: another attempt.
                        Err(e) => tracing::warn!(error = %e, "cannot watch the source"),
                    }
                }
                _ = lag.tick() => {
                    if let Ok(head) = self.source.head().await {
                        report(Step::Lag { applied: self.applied, head });
                    }
                }
            }
        }
    }

    /// Appends the revisions of `events` (whole revisions, in order) after the copy's head.
    async fn apply(&mut self, events: Vec<Event>) -> anyhow::Result<()> {
        let mut entries: Vec<LogEntry> = Vec::new();
        for event in events {
            let kv = event.kv.unwrap_or_default();
            let revision = kv.mod_revision;
            if revision <= self.applied {
                // Sent again by a watch opened again after a loss.
                continue;
            }
            let kv = if event.r#type == EventType::Delete as i32 {
                KeyValue {
                    key: kv.key,
                    mod_revision: revision,
                    ..Default::default()
                }
            } else {
                self.know_lease(kv.lease).await?;
                kv
            };
            let event = Event {
                r#type: event.r#type,
                kv: Some(kv),
                prev_kv: None,
            };
            match entries.last_mut() {
                Some(entry) if entry.revision == revision => entry.events.push(event),
                _ => entries.push(LogEntry {
                    revision,
                    events: vec![event],
                }),
            }
        }
        let Some(last) = entries.last().map(|e| e.revision) else {
            return Ok(());
        };
        self.target.append(&entries).await.with_context(|| {
            format!(
                "cannot append revisions {}..={last} after the copy's {}",
                entries[0].revision, self.applied
            )
        })?;
        self.applied = last;
        Ok(())
    }

    /// Records lease `id` in the target, if a key names it and the target lacks it.
    async fn know_lease(&mut self, id: i64) -> anyhow::Result<()> {
        if id == 0 || self.leases.contains(&id) {
            return Ok(());
        }
        if let Some(ttl) = self.source.lease_ttl(id).await? {
            self.target.put_leases(&[(id, ttl)]).await?;
        }
        self.leases.insert(id);
        Ok(())
    }

    /// Makes the target's leases the source's; returns how many there are.
    async fn same_leases(&mut self) -> anyhow::Result<usize> {
        let theirs = self.source.leases().await?;
        let ours: BTreeSet<i64> = self
            .target
            .leases()
            .await?
            .into_iter()
            .map(|l| l.0)
            .collect();
        let missing: Vec<(i64, i64)> = theirs
            .iter()
            .copied()
            .filter(|(id, _)| !ours.contains(id))
            .collect();
        self.target.put_leases(&missing).await?;
        let live: BTreeSet<i64> = theirs.iter().map(|l| l.0).collect();
        for gone in ours.difference(&live) {
            self.target.remove_lease(*gone).await?;
        }
        self.leases = live;
        Ok(theirs.len())
    }

    /// Replaces the target's users and roles with those of a new snapshot of the source.
    async fn retake_auth(&self) -> anyhow::Result<()> {
        let file = self.source.snapshot(|_| {}).await?;
        let snapshot = crate::snapshot::open(crate::snapshot::database_of(&file, false)?)?;
        let generation = self.target.auth().await?.map_or(0, |(g, _)| g);
        if !self
            .target
            .put_auth(generation, &prost::Message::encode_to_vec(&snapshot.auth))
            .await?
        {
            bail!(
                "the copy's users and roles changed while the migration ran: is a server using it?"
            );
        }
        Ok(())
    }
}
