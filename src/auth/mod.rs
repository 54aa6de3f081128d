//! etcd's authentication and role-based access control: users with bcrypt-hashed passwords, roles
//! holding key permissions, simple or JWT tokens, and the answer to "may this user do that?".
//!
//! The state is small and changes rarely, so it is kept whole in memory and stored whole in the
//! backend, each change replacing it only from the generation it was made from: frontends sharing
//! a backend never lose each other's changes. Each frontend picks up the others' changes before
//! it answers a request that comes after them: a linearizable read learns the stored generation
//! with its read index, and a write under the append right, and either is allowed again under the
//! newer state (see [`crate::mvcc::Store::put`]); auth administration and refusals reload
//! it first ([`AuthStore::reload`]). Other requests (serializable reads, watches, leases) use the
//! state as this frontend has it, refreshed every [`REFRESH_INTERVAL`], as an etcd member uses its
//! own. Changes that etcd counts move the auth revision on, as etcd's do.

mod jwt;
pub mod permissions;
mod tokens;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::proto::authpb::{Permission, Role, User, UserAddOptions};
use crate::tasks::Tasks;
use bytes::Bytes;
use permissions::Permissions;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tokens::Tokens;

/// How tokens are made and checked (`--auth-token`).
pub enum TokenProvider {
    /// etcd's simple tokens, kept by the frontend that issued them.
    Simple(Mutex<Tokens>),
    /// Signed tokens, checked by any frontend that has the key.
    Jwt(Box<jwt::Jwt>),
}

/// Whether `--auth-token` names a provider etcd has: `simple`, or `jwt,` and its options (those
/// are checked when the provider is made, as the key files are read). Answers `option`.
pub fn check_token_provider(option: &str) -> std::result::Result<String, String> {
    match option.split(',').next() {
        Some("simple" | "jwt") => Ok(option.to_owned()),
        _ => Err(format!(
            "unknown token provider {option:?}: use simple, or jwt,priv-key=…,sign-method=…"
        )),
    }
}

impl TokenProvider {
    /// The provider `--auth-token` names; simple tokens expire after `ttl` of disuse.
    pub fn new(option: &str, ttl: Duration) -> std::result::Result<TokenProvider, String> {
        check_token_provider(option)?;
        Ok(if option.split(',').next() == Some("simple") {
            TokenProvider::Simple(Mutex::new(Tokens::new(ttl)))
        } else {
            TokenProvider::Jwt(Box::new(jwt::Jwt::from_options(option)?))
        })
    }

    /// A token for `user`, at auth revision `revision`.
    fn assign(&self, user: &str, revision: u64) -> Result<String> {
        match self {
            TokenProvider::Simple(tokens) => tokens
                .lock()
                .expect("tokens lock")
                .assign(user, Instant::now())
                .map_err(|e| Error::storage(format!("no randomness for a token: {e}"))),
            TokenProvider::Jwt(jwt) => jwt
                .assign(user, revision, SystemTime::now())
                .map_err(Error::storage),
        }
    }

    /// Who a token stands for, and at which auth revision (a simple token: the current one).
    fn info(&self, token: &str, current: u64) -> Option<AuthInfo> {
        let (user, revision) = match self {
            TokenProvider::Simple(tokens) => {
                let user = tokens
                    .lock()
                    .expect("tokens lock")
                    .user(token, Instant::now())?;
                (user, current)
            }
            TokenProvider::Jwt(jwt) => jwt.verify(token, SystemTime::now())?,
        };
        Some(AuthInfo { user, revision })
    }

    /// Drops a user's simple tokens (a JWT token lives until it expires, or the auth revision
    /// moves past it).
    fn forget_user(&self, user: &str) {
        if let TokenProvider::Simple(tokens) = self {
            tokens.lock().expect("tokens lock").forget_user(user);
        }
    }

    fn forget_all(&self) {
        if let TokenProvider::Simple(tokens) = self {
            tokens.lock().expect("tokens lock").forget_all();
        }
    }
}

const ROOT_USER: &str = "root";
const ROOT_ROLE: &str = "root";

/// How often a frontend on a shared backend looks for auth changes made through the others.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// etcd's default bcrypt cost, used when `--bcrypt-cost` is out of bcrypt's range.
pub const DEFAULT_BCRYPT_COST: u32 = 10;

/// Who a request comes from, and the auth revision its permissions were looked up at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthInfo {
    pub user: String,
    pub revision: u64,
}

/// The auth state as the backend stores it and a snapshot carries it: whether auth is on, its
/// revision, and the users and roles as etcd's own messages.
#[derive(Clone, PartialEq, Message)]
pub struct AuthRecord {
    #[prost(bool, tag = "1")]
    pub enabled: bool,
    #[prost(uint64, tag = "2")]
    pub revision: u64,
    #[prost(message, repeated, tag = "3")]
    pub users: Vec<User>,
    #[prost(message, repeated, tag = "4")]
    pub roles: Vec<Role>,
}

#[derive(Clone, Debug)]
struct State {
    /// The backend's generation of this state (0: never stored).
    generation: u64,
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    /// Each user's permissions merged over its roles (etcd's range permission cache).
    permissions: HashMap<String, Permissions>,
}

impl State {
    /// A store that never changed auth: disabled, at revision 1 as etcd starts.
    fn initial() -> State {
        State {
            generation: 0,
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
            permissions: HashMap::new(),
        }
    }

    fn decode(generation: u64, bytes: &[u8]) -> Result<State> {
        let stored = AuthRecord::decode(bytes)
            .map_err(|e| Error::storage_caused_by(format!("unreadable auth state: {e}"), e))?;
        let name = |n: &Bytes| String::from_utf8_lossy(n).into_owned();
        let mut state = State {
            generation,
            enabled: stored.enabled,
            revision: stored.revision,
            users: stored
                .users
                .into_iter()
                .map(|u| (name(&u.name), u))
                .collect(),
            roles: stored
                .roles
                .into_iter()
                .map(|r| (name(&r.name), r))
                .collect(),
            permissions: HashMap::new(),
        };
        state.merge_permissions();
        Ok(state)
    }

    fn record(&self) -> AuthRecord {
        AuthRecord {
            enabled: self.enabled,
            revision: self.revision,
            users: self.users.values().cloned().collect(),
            roles: self.roles.values().cloned().collect(),
        }
    }

    fn merge_permissions(&mut self) {
        self.permissions = self
            .users
            .iter()
            .map(|(name, user)| {
                let roles = user.roles.iter().filter_map(|r| self.roles.get(r));
                (name.clone(), Permissions::merge(roles))
            })
            .collect();
    }

    fn user(&self, name: &str) -> Result<&User> {
        self.users.get(name).ok_or(Error::UserNotFound)
    }

    fn user_mut(&mut self, name: &str) -> Result<&mut User> {
        self.users.get_mut(name).ok_or(Error::UserNotFound)
    }

    fn role_mut(&mut self, name: &str) -> Result<&mut Role> {
        self.roles.get_mut(name).ok_or(Error::RoleNotFound)
    }
}

fn has_root_role(user: &User) -> bool {
    user.roles.iter().any(|r| r == ROOT_ROLE)
}

/// What a change did to the state.
enum Change {
    /// Nothing: the state stays as it was.
    None,
    /// A change etcd does not count in the auth revision (enabling auth).
    Uncounted,
    /// A change that moves the auth revision on.
    Counted,
}

pub struct AuthStore {
    backend: Arc<dyn Backend>,
    state: RwLock<Arc<State>>,
    tokens: TokenProvider,
    bcrypt_cost: u32,
    /// This frontend's changes, one at a time.
    changes: tokio::sync::Mutex<()>,
    /// On a shared backend, the task picking up other frontends' changes.
    tasks: Tasks,
    /// The newest generation installed, also told to whoever gave it (the key-value store, which
    /// refuses writes allowed under an older one).
    installed: Arc<AtomicU64>,
}

impl AuthStore {
    /// Loads the auth state; on a shared backend, keeps it fresh for as long as the store lives.
    /// Each state installed from then on raises `installed` to its generation at once.
    pub async fn open(
        backend: Arc<dyn Backend>,
        bcrypt_cost: u32,
        tokens: TokenProvider,
        installed: Arc<AtomicU64>,
    ) -> Result<Arc<AuthStore>> {
        let state = match backend.auth().await? {
            Some((generation, bytes)) => State::decode(generation, &bytes)?,
            None => State::initial(),
        };
        let shared = backend.shared().is_some();
        let store = Arc::new(AuthStore {
            backend,
            state: RwLock::new(Arc::new(state)),
            tokens,
            bcrypt_cost: if (4..=31).contains(&bcrypt_cost) {
                bcrypt_cost
            } else {
                DEFAULT_BCRYPT_COST
            },
            changes: tokio::sync::Mutex::new(()),
            tasks: Tasks::default(),
            installed,
        });
        if shared {
            store.tasks.spawn(refresh(Arc::downgrade(&store)));
        }
        Ok(store)
    }

    /// Stops picking up other frontends' changes.
    pub async fn close(&self) {
        self.tasks.stop().await;
    }

    fn current(&self) -> Arc<State> {
        self.state.read().expect("auth state lock").clone()
    }

    fn install(&self, state: State) {
        let mut current = self.state.write().expect("auth state lock");
        if state.generation >= current.generation {
            self.installed.fetch_max(state.generation, Ordering::SeqCst);
            *current = Arc::new(state);
        }
    }

    /// The newest state: the backend's on a shared backend, where other frontends change it too.
    async fn fresh(&self) -> Result<Arc<State>> {
        if self.backend.shared().is_some() {
            if let Some((generation, bytes)) = self.backend.auth().await? {
                if generation != self.current().generation {
                    self.install(State::decode(generation, &bytes)?);
                }
            }
        }
        Ok(self.current())
    }

    /// Applies `apply` to the newest state and stores the result, again from the newer state if
    /// another frontend changed it meanwhile.
    async fn change(&self, apply: impl Fn(&mut State) -> Result<Change>) -> Result<()> {
        let _one_at_a_time = self.changes.lock().await;
        loop {
            let mut next = (*self.fresh().await?).clone();
            match apply(&mut next)? {
                Change::None => return Ok(()),
                Change::Uncounted => {}
                Change::Counted => next.revision += 1,
            }
            next.merge_permissions();
            if self
                .backend
                .put_auth(next.generation, &next.record().encode_to_vec())
                .await?
            {
                next.generation += 1;
                self.install(next);
                return Ok(());
            }
        }
    }

    pub fn enabled(&self) -> bool {
        self.current().enabled
    }

    /// The generation of the state requests are allowed under now (see
    /// [`crate::mvcc::Store::put`]).
    pub fn generation(&self) -> u64 {
        self.current().generation
    }

    /// On a shared backend, loads the stored state if another frontend changed it. A refusal is
    /// checked again against it before it is answered: auth may have been turned off, or the
    /// permission granted, through another frontend.
    pub async fn reload(&self) -> Result<()> {
        let Some(shared) = self.backend.shared() else {
            return Ok(());
        };
        // The generation alone first: most refusals stand, and the state is read only if it moved.
        let stored = shared.read_index().await?.auth;
        self.catch_up(stored).await
    }

    /// Loads the stored state if it is newer than generation `seen`, which the backend has shown
    /// (on a shared backend, another frontend may have changed it).
    pub async fn catch_up(&self, seen: u64) -> Result<()> {
        if self.generation() < seen {
            self.fresh().await?;
        }
        Ok(())
    }

    pub fn revision(&self) -> u64 {
        self.current().revision
    }

    /// Who a request's token names (etcd's AuthInfoFromCtx): None when auth is off or the request
    /// carries no token; an error for a token that is unknown or expired.
    /// With auth on, the sender of a request with no token may be the user its verified client
    /// certificate names (its common name), as etcd takes it under --client-cert-auth.
    pub fn auth_info(
        &self,
        token: Option<&str>,
        certificate_user: Option<&str>,
    ) -> Result<Option<AuthInfo>> {
        let state = self.current();
        let token = match (state.enabled, token, certificate_user) {
            (false, _, _) => return Ok(None),
            (true, Some(token), _) => token,
            (true, None, user) => {
                return Ok(user.map(|user| AuthInfo {
                    user: user.to_owned(),
                    revision: state.revision,
                }))
            }
        };
        let token = token.strip_prefix("Bearer ").unwrap_or(token);
        let info = self
            .tokens
            .info(token, state.revision)
            .ok_or(Error::InvalidAuthToken)?;
        Ok(Some(info))
    }

    /// That a request names its user when auth is on (etcd's requireAuthInfo).
    pub fn require(&self, info: Option<&AuthInfo>) -> Result<()> {
        match (self.enabled(), info) {
            (true, None) => Err(Error::UserEmpty),
            _ => Ok(()),
        }
    }

    pub fn check_read(&self, info: Option<&AuthInfo>, key: &[u8], range_end: &[u8]) -> Result<()> {
        self.check(info, |p| p.may_read(key, range_end))
    }

    pub fn check_write(&self, info: Option<&AuthInfo>, key: &[u8], range_end: &[u8]) -> Result<()> {
        self.check(info, |p| p.may_write(key, range_end))
    }

    fn check(&self, info: Option<&AuthInfo>, allows: impl Fn(&Permissions) -> bool) -> Result<()> {
        let state = self.current();
        if !state.enabled {
            return Ok(());
        }
        let Some(info) = info.filter(|i| i.revision != 0) else {
            return Err(Error::UserEmpty);
        };
        if info.revision < state.revision {
            return Err(Error::AuthOldRevision);
        }
        let Some(user) = state.users.get(&info.user) else {
            return Err(Error::PermissionDenied);
        };
        if has_root_role(user) || state.permissions.get(&info.user).is_some_and(allows) {
            return Ok(());
        }
        Err(Error::PermissionDenied)
    }

    /// That the request's user has the root role, when auth is on (etcd's IsAdminPermitted).
    pub fn check_admin(&self, info: Option<&AuthInfo>) -> Result<()> {
        let state = self.current();
        if !state.enabled {
            return Ok(());
        }
        let Some(info) = info.filter(|i| !i.user.is_empty()) else {
            return Err(Error::UserEmpty);
        };
        if has_root_role(state.user(&info.user)?) {
            return Ok(());
        }
        Err(Error::PermissionDenied)
    }

    /// That `info` was looked up at the current auth revision (a request that ran while auth
    /// changed is refused, as etcd refuses it).
    pub fn check_unchanged(&self, info: Option<&AuthInfo>) -> Result<()> {
        match info {
            Some(info) if info.revision != 0 && info.revision != self.revision() => {
                Err(Error::AuthOldRevision)
            }
            _ => Ok(()),
        }
    }

    pub async fn enable(&self) -> Result<()> {
        self.change(|state| {
            if state.enabled {
                return Ok(Change::None);
            }
            let root = state.users.get(ROOT_USER).ok_or(Error::RootUserNotExist)?;
            if !has_root_role(root) {
                return Err(Error::RootRoleNotExist);
            }
            state.enabled = true;
            Ok(Change::Uncounted)
        })
        .await
    }

    pub async fn disable(&self) -> Result<()> {
        self.change(|state| {
            if !state.enabled {
                return Ok(Change::None);
            }
            state.enabled = false;
            Ok(Change::Counted)
        })
        .await?;
        self.tokens.forget_all();
        Ok(())
    }

    /// Whether auth is on, and the auth revision.
    pub fn status(&self) -> (bool, u64) {
        let state = self.current();
        (state.enabled, state.revision)
    }

    /// Whether auth is on, its revision, every user and every role: what a snapshot keeps.
    pub fn export(&self) -> AuthRecord {
        self.current().record()
    }

    /// Checks a user's password and hands out a token for it.
    pub async fn authenticate(&self, name: &str, password: &str) -> Result<String> {
        let state = self.fresh().await?;
        if !state.enabled {
            return Err(Error::AuthNotEnabled);
        }
        let user = state.users.get(name).ok_or(Error::AuthFailed)?;
        if user.options.as_ref().is_some_and(|o| o.no_password) {
            return Err(Error::NoPasswordUser);
        }
        let hash = user.password.clone();
        let password = password.to_owned();
        let matches = tokio::task::spawn_blocking(move || {
            std::str::from_utf8(&hash)
                .ok()
                .and_then(|hash| bcrypt::verify(password, hash).ok())
                .unwrap_or(false)
        })
        .await
        .map_err(|_| Error::Stopped)?;
        if !matches {
            return Err(Error::AuthFailed);
        }
        self.tokens.assign(name, state.revision)
    }

    /// A bcrypt hash of `password` in the form etcd stores ("$2a$…").
    async fn hash(&self, password: &str) -> Result<Bytes> {
        let (password, cost) = (password.to_owned(), self.bcrypt_cost);
        tokio::task::spawn_blocking(move || bcrypt::hash_with_result(password, cost))
            .await
            .map_err(|_| Error::Stopped)?
            .map(|h| Bytes::from(h.format_for_version(bcrypt::Version::TwoA)))
            .map_err(|e| Error::storage_caused_by(format!("cannot hash the password: {e}"), e))
    }

    pub async fn user_add(
        &self,
        name: &str,
        password: &str,
        options: Option<UserAddOptions>,
    ) -> Result<()> {
        if name.is_empty() {
            return Err(Error::UserEmpty);
        }
        let options = options.unwrap_or_default();
        let password = if options.no_password {
            Bytes::new()
        } else {
            self.hash(password).await?
        };
        self.change(|state| {
            if state.users.contains_key(name) {
                return Err(Error::UserAlreadyExist);
            }
            let user = User {
                name: Bytes::copy_from_slice(name.as_bytes()),
                password: password.clone(),
                roles: Vec::new(),
                options: Some(options),
            };
            state.users.insert(name.to_owned(), user);
            Ok(Change::Counted)
        })
        .await
    }

    pub async fn user_delete(&self, name: &str) -> Result<()> {
        if self.enabled() && name == ROOT_USER {
            return Err(Error::InvalidAuthMgmt);
        }
        self.change(|state| {
            state.users.remove(name).ok_or(Error::UserNotFound)?;
            Ok(Change::Counted)
        })
        .await?;
        self.tokens.forget_user(name);
        Ok(())
    }

    /// Sets a user's password: `password` hashed, or else `hashed_password` (base64 of a bcrypt
    /// hash), as etcd takes either.
    pub async fn user_change_password(
        &self,
        name: &str,
        password: &str,
        hashed_password: &str,
    ) -> Result<()> {
        let hashed = if password.is_empty() {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(hashed_password)
                .map(Bytes::from)
                .map_err(|_| Error::NoPasswordUser)
        } else {
            Ok(self.hash(password).await?)
        };
        self.change(|state| {
            let user = state.user_mut(name)?;
            if !user.options.as_ref().is_some_and(|o| o.no_password) {
                user.password = hashed.clone()?;
            }
            Ok(Change::Counted)
        })
        .await?;
        self.tokens.forget_user(name);
        Ok(())
    }

    pub async fn user_grant_role(&self, name: &str, role: &str) -> Result<()> {
        self.change(|state| {
            state.user(name)?;
            if role != ROOT_ROLE && !state.roles.contains_key(role) {
                return Err(Error::RoleNotFound);
            }
            let user = state.user_mut(name)?;
            let Err(at) = user.roles.binary_search_by(|r| r.as_str().cmp(role)) else {
                return Ok(Change::None);
            };
            user.roles.insert(at, role.to_owned());
            Ok(Change::Counted)
        })
        .await
    }

    /// A user's roles, for root or for the user itself.
    pub fn user_get(&self, info: Option<&AuthInfo>, name: &str) -> Result<Vec<String>> {
        if let Err(e) = self.check_admin(info) {
            if info.is_none_or(|i| i.user != name) {
                return Err(e);
            }
        }
        Ok(self.current().user(name)?.roles.clone())
    }

    pub fn user_list(&self) -> Vec<String> {
        self.current().users.keys().cloned().collect()
    }

    pub async fn user_revoke_role(&self, name: &str, role: &str) -> Result<()> {
        if self.enabled() && name == ROOT_USER && role == ROOT_ROLE {
            return Err(Error::InvalidAuthMgmt);
        }
        self.change(|state| {
            let user = state.user_mut(name)?;
            let before = user.roles.len();
            user.roles.retain(|r| r != role);
            if user.roles.len() == before {
                return Err(Error::RoleNotGranted);
            }
            Ok(Change::Counted)
        })
        .await
    }

    pub async fn role_add(&self, name: &str) -> Result<()> {
        if name.is_empty() {
            return Err(Error::RoleEmpty);
        }
        self.change(|state| {
            if state.roles.contains_key(name) {
                return Err(Error::RoleAlreadyExist);
            }
            let role = Role {
                name: Bytes::copy_from_slice(name.as_bytes()),
                key_permission: Vec::new(),
            };
            state.roles.insert(name.to_owned(), role);
            Ok(Change::Counted)
        })
        .await
    }

    /// A role's permissions, for root or for a user who has the role.
    pub fn role_get(&self, info: Option<&AuthInfo>, name: &str) -> Result<Vec<Permission>> {
        let state = self.current();
        if let Err(e) = self.check_admin(info) {
            let has_role = |user: &User| user.roles.iter().any(|r| r == name);
            if info.is_none_or(|i| !state.users.get(&i.user).is_some_and(has_role)) {
                return Err(e);
            }
        }
        let role = state.roles.get(name).ok_or(Error::RoleNotFound)?;
        Ok(role.key_permission.clone())
    }

    pub fn role_list(&self) -> Vec<String> {
        self.current().roles.keys().cloned().collect()
    }

    pub async fn role_delete(&self, name: &str) -> Result<()> {
        if self.enabled() && name == ROOT_ROLE {
            return Err(Error::InvalidAuthMgmt);
        }
        self.change(|state| {
            state.roles.remove(name).ok_or(Error::RoleNotFound)?;
            for user in state.users.values_mut() {
                user.roles.retain(|r| r != name);
            }
            Ok(Change::Counted)
        })
        .await
    }

    /// Grants a permission to a role, or changes the type of one it has on the same range.
    pub async fn role_grant_permission(&self, name: &str, perm: Option<Permission>) -> Result<()> {
        let perm = perm.ok_or(Error::PermissionNotGiven)?;
        if !permissions::is_valid_range(&perm.key, &perm.range_end) {
            return Err(Error::InvalidAuthMgmt);
        }
        self.change(|state| {
            let role = state.role_mut(name)?;
            let same = role
                .key_permission
                .iter_mut()
                .find(|p| p.key == perm.key && p.range_end == perm.range_end);
            match same {
                Some(existing) => existing.perm_type = perm.perm_type,
                None => {
                    role.key_permission.push(perm.clone());
                    role.key_permission.sort_by(|a, b| a.key.cmp(&b.key));
                }
            }
            Ok(Change::Counted)
        })
        .await
    }

    pub async fn role_revoke_permission(
        &self,
        name: &str,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<()> {
        self.change(|state| {
            let role = state.role_mut(name)?;
            let before = role.key_permission.len();
            role.key_permission
                .retain(|p| p.key != key || p.range_end != range_end);
            if role.key_permission.len() == before {
                return Err(Error::PermissionNotGranted);
            }
            Ok(Change::Counted)
        })
        .await
    }
}

/// Picks up the auth changes other frontends make, for as long as the store lives.
async fn refresh(store: std::sync::Weak<AuthStore>) {
    loop {
        tokio::time::sleep(REFRESH_INTERVAL).await;
        let Some(store) = store.upgrade() else {
            return;
        };
        if let Err(e) = store.fresh().await {
            tracing::warn!(error = %e, "could not read the auth state");
        }
    }
}

#[cfg(test)]
mod tests;
