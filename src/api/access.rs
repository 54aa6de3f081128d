//! What each request needs to be allowed when auth is on, as etcd 3.5 checks it: a read needs READ
//! on its range, a write WRITE (and READ too if it asks for the previous key-values), a txn
//! everything its compares and operations touch, and a put or revoke naming a lease WRITE on every
//! key attached to that lease, unless the user has the root role. Locks and elections need what
//! their recipes do, over the whole queue of their name: READ to wait and observe, READ and WRITE
//! to join it.

use super::Context;
use crate::auth::AuthInfo;
use crate::error::{Error, Result};
use crate::proto::etcdserverpb::request_op::Request as Op;
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use tonic::metadata::MetadataMap;

/// The header that carries the common name of the sender's verified client certificate from
/// [`certificate_user`] to the services. One a client sends is dropped first.
const CERTIFICATE_USER: &str = "strata-certificate-user";

/// How often a write is allowed again after auth changed under it, before it is refused as etcd
/// refuses a request checked at an old auth revision.
const AUTH_ATTEMPTS: usize = 8;

/// Under --client-cert-auth (`enabled`), names the sender of a gRPC call by its verified client
/// certificate's common name, for auth to take when the call has no token, as etcd does.
pub(super) async fn certificate_user(
    axum::extract::State(enabled): axum::extract::State<bool>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};
    request.headers_mut().remove(CERTIFICATE_USER);
    let extensions = request.extensions();
    let certificates = extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<UdsConnectInfo>>()
                .and_then(TlsConnectInfo::peer_certs)
        });
    let name = enabled
        .then_some(certificates)
        .flatten()
        .and_then(|chain| chain.first().and_then(|leaf| super::tls::common_name(leaf)))
        .and_then(|name| axum::http::HeaderValue::from_str(&name).ok());
    if let Some(name) = name {
        request.headers_mut().insert(CERTIFICATE_USER, name);
    }
    next.run(request).await
}

/// What a request says of its sender: its token (gRPC metadata `token`, or `authorization` as
/// the JSON gateway passes it on), and the user its client certificate names.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    token: Option<String>,
    certificate_user: Option<String>,
}

impl Credentials {
    pub fn of(metadata: &MetadataMap) -> Credentials {
        let text = |name: &str| {
            metadata
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Credentials {
            token: text("token").or_else(|| text("authorization")),
            certificate_user: text(CERTIFICATE_USER),
        }
    }
}

impl Context {
    /// Who sent a request, from its token or else its client certificate; an unknown or expired
    /// token is refused.
    pub(super) async fn auth_info(&self, metadata: &MetadataMap) -> Result<Option<AuthInfo>> {
        self.identify(&Credentials::of(metadata)).await
    }

    /// Who `credentials` say sent a request. On a shared backend an unknown token is refused only
    /// if this frontend's auth state is the stored one: another frontend may have turned auth off,
    /// and etcd ignores tokens then.
    pub(super) async fn identify(&self, credentials: &Credentials) -> Result<Option<AuthInfo>> {
        let generation = self.auth.generation();
        match self.sender(credentials) {
            Err(Error::InvalidAuthToken) if self.reloaded_since(generation).await? => {
                self.sender(credentials)
            }
            identified => identified,
        }
    }

    /// Whether the auth state is newer than generation `seen` once the stored one is loaded: a
    /// refusal under `seen` is then checked again. Another request, or the periodic refresh, may
    /// have loaded it meanwhile.
    async fn reloaded_since(&self, seen: u64) -> Result<bool> {
        self.auth.reload().await?;
        Ok(self.auth.generation() != seen)
    }

    /// Who `credentials` say sent a request, by this frontend's auth state (a watch stream's,
    /// checked again for each of its requests, as an etcd member checks them).
    pub(super) fn sender(&self, credentials: &Credentials) -> Result<Option<AuthInfo>> {
        self.auth.auth_info(
            credentials.token.as_deref(),
            credentials.certificate_user.as_deref(),
        )
    }

    /// Makes a client's write, `write`, allowed by `allow`. On a shared backend another frontend
    /// may change the auth state before the write is appended; the writer then refuses it
    /// ([`Error::AuthStale`]) and it is allowed again under the new state, as etcd checks a write
    /// again when it applies it: a token of an older auth revision, auth just turned on, a
    /// permission just taken away are refused then.
    pub(super) async fn checked_write<T, F>(
        &self,
        allow: impl Fn() -> Result<()>,
        write: impl Fn(u64) -> F,
    ) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        for _ in 0..AUTH_ATTEMPTS {
            let generation = self.allow_fresh(&allow).await?;
            match write(generation).await {
                Err(Error::AuthStale) => {
                    self.auth.catch_up(self.store.auth_seen()).await?;
                }
                done => return done,
            }
        }
        Err(Error::AuthOldRevision)
    }

    /// Runs `allow`, and answers the generation of the auth state it allowed under. On a shared
    /// backend a refusal stands only if this frontend's state is the stored one (another frontend
    /// may have turned auth off or granted the permission).
    pub(super) async fn allow_fresh(&self, allow: &impl Fn() -> Result<()>) -> Result<u64> {
        // Read first: a state installed meanwhile is newer, and the write or read is only checked
        // again.
        let generation = self.auth.generation();
        match allow() {
            Err(
                e @ (Error::PermissionDenied
                | Error::UserEmpty
                | Error::UserNotFound
                | Error::AuthOldRevision),
            ) => {
                if !self.reloaded_since(generation).await? {
                    return Err(e);
                }
                let generation = self.auth.generation();
                allow()?;
                Ok(generation)
            }
            allowed => allowed.map(|()| generation),
        }
    }

    /// After a linearizable read allowed under auth generation `allowed`: if its read index showed
    /// a newer state, the read is allowed again under that state, so that no read answers under
    /// permissions another frontend had already changed when it began.
    pub(super) async fn recheck_read(
        &self,
        allowed: u64,
        allow: impl Fn() -> Result<()>,
    ) -> Result<()> {
        let seen = self.store.auth_seen();
        if seen > allowed {
            self.auth.catch_up(seen).await?;
            allow()?;
        }
        Ok(())
    }

    /// That the sender has the root role, when auth is on.
    pub(super) async fn allow_admin(&self, metadata: &MetadataMap) -> Result<()> {
        let info = self.auth_info(metadata).await?;
        self.allow_fresh(&|| self.auth.check_admin(info.as_ref()))
            .await
            .map(drop)
    }

    pub(super) fn allow_range(&self, info: Option<&AuthInfo>, r: &RangeRequest) -> Result<()> {
        self.auth.check_read(info, &r.key, &r.range_end)
    }

    pub(super) fn allow_put(&self, info: Option<&AuthInfo>, r: &PutRequest) -> Result<()> {
        self.auth.check_write(info, &r.key, b"")?;
        self.allow_lease_keys(info, r.lease)?;
        if r.prev_kv {
            self.auth.check_read(info, &r.key, b"")?;
        }
        Ok(())
    }

    pub(super) fn allow_delete_range(
        &self,
        info: Option<&AuthInfo>,
        r: &DeleteRangeRequest,
    ) -> Result<()> {
        self.auth.check_write(info, &r.key, &r.range_end)?;
        if r.prev_kv {
            self.auth.check_read(info, &r.key, &r.range_end)?;
        }
        Ok(())
    }

    pub(super) fn allow_txn(&self, info: Option<&AuthInfo>, r: &TxnRequest) -> Result<()> {
        for compare in &r.compare {
            self.auth
                .check_read(info, &compare.key, &compare.range_end)?;
        }
        self.allow_ops(info, &r.success)?;
        self.allow_ops(info, &r.failure)
    }

    fn allow_ops(&self, info: Option<&AuthInfo>, ops: &[RequestOp]) -> Result<()> {
        for op in ops {
            match &op.request {
                Some(Op::RequestRange(r)) => self.allow_range(info, r)?,
                Some(Op::RequestPut(r)) => self.allow_put(info, r)?,
                Some(Op::RequestDeleteRange(r)) => self.allow_delete_range(info, r)?,
                Some(Op::RequestTxn(r)) => self.allow_txn(info, r)?,
                None => {}
            }
        }
        Ok(())
    }

    /// May the sender read (and, if `write`, also join) the queue of the lock or election `name`?
    pub(super) fn allow_queue(
        &self,
        info: Option<&AuthInfo>,
        name: &[u8],
        write: bool,
    ) -> Result<()> {
        let (key, range_end) = crate::concurrency::queue_range(name);
        self.auth.check_read(info, &key, &range_end)?;
        if write {
            self.auth.check_write(info, &key, &range_end)?;
        }
        Ok(())
    }

    /// Writing through a lease (attaching a key, revoking, renewing) needs WRITE on every key
    /// already attached to it; root may do it anyway.
    pub(super) fn allow_lease_keys(&self, info: Option<&AuthInfo>, lease: i64) -> Result<()> {
        if lease == 0 || self.auth.check_admin(info).is_ok() {
            return Ok(());
        }
        for key in self.store.lease_keys(lease) {
            self.auth.check_write(info, &key, b"")?;
        }
        Ok(())
    }

    /// Reading about a lease's keys (time-to-live with keys, the lease list) needs READ on each.
    pub(super) fn allow_lease_reads(&self, info: Option<&AuthInfo>, leases: &[i64]) -> Result<()> {
        if self.auth.check_admin(info).is_ok() {
            return Ok(());
        }
        self.auth.require(info)?;
        for lease in leases {
            for key in self.store.lease_keys(*lease) {
                self.auth.check_read(info, &key, b"")?;
            }
        }
        Ok(())
    }
}
