use super::*;
use crate::backend::embedded::Embedded;
use crate::proto::authpb::permission::Type;

async fn store(backend: Arc<dyn Backend>) -> Arc<AuthStore> {
    let tokens = TokenProvider::new("simple", Duration::from_secs(300)).unwrap();
    AuthStore::open(backend, 4, tokens, Default::default())
        .await
        .unwrap()
}

fn perm(t: Type, key: &str, end: &str) -> Option<Permission> {
    Some(Permission {
        perm_type: t as i32,
        key: Bytes::copy_from_slice(key.as_bytes()),
        range_end: Bytes::copy_from_slice(end.as_bytes()),
    })
}

#[tokio::test]
async fn enabling_needs_a_root_user_with_the_root_role() {
    let auth = store(Arc::new(Embedded::in_memory().unwrap())).await;
    assert_eq!(auth.status(), (false, 1));
    assert_eq!(auth.enable().await, Err(Error::RootUserNotExist));
    auth.user_add("root", "pw", None).await.unwrap();
    assert_eq!(auth.enable().await, Err(Error::RootRoleNotExist));
    auth.user_grant_role("root", "root").await.unwrap();
    auth.enable().await.unwrap();
    // Adding the user and granting the role count; enabling does not.
    assert_eq!(auth.status(), (true, 3));
    assert_eq!(auth.user_delete("root").await, Err(Error::InvalidAuthMgmt));
    assert_eq!(
        auth.user_revoke_role("root", "root").await,
        Err(Error::InvalidAuthMgmt)
    );
}

#[tokio::test]
async fn tokens_carry_a_users_permissions() {
    let auth = store(Arc::new(Embedded::in_memory().unwrap())).await;
    auth.user_add("root", "rootpw", None).await.unwrap();
    auth.user_grant_role("root", "root").await.unwrap();
    auth.user_add("alice", "secret", None).await.unwrap();
    auth.role_add("reader").await.unwrap();
    auth.role_grant_permission("reader", perm(Type::Read, "a", "b"))
        .await
        .unwrap();
    auth.user_grant_role("alice", "reader").await.unwrap();
    assert_eq!(
        auth.authenticate("alice", "secret").await,
        Err(Error::AuthNotEnabled)
    );
    auth.enable().await.unwrap();
    assert_eq!(
        auth.authenticate("alice", "wrong").await,
        Err(Error::AuthFailed)
    );
    assert_eq!(
        auth.authenticate("nobody", "secret").await,
        Err(Error::AuthFailed)
    );
    let token = auth.authenticate("alice", "secret").await.unwrap();
    let alice = auth.auth_info(Some(&token), None).unwrap();
    let alice = alice.as_ref();
    assert!(auth.check_read(alice, b"a", b"").is_ok());
    assert!(auth.check_read(alice, b"a", b"b").is_ok());
    assert_eq!(
        auth.check_read(alice, b"b", b""),
        Err(Error::PermissionDenied)
    );
    assert_eq!(
        auth.check_write(alice, b"a", b""),
        Err(Error::PermissionDenied)
    );
    assert_eq!(auth.check_admin(alice), Err(Error::PermissionDenied));
    assert_eq!(auth.check_read(None, b"a", b""), Err(Error::UserEmpty));
    assert_eq!(
        auth.auth_info(Some("forged.1"), None),
        Err(Error::InvalidAuthToken)
    );

    // A change to auth makes the looked-up revision old, and the user's next lookup sees it.
    auth.role_revoke_permission("reader", b"a", b"b")
        .await
        .unwrap();
    assert_eq!(
        auth.check_read(alice, b"a", b""),
        Err(Error::AuthOldRevision)
    );
    let alice = auth.auth_info(Some(&token), None).unwrap();
    assert_eq!(
        auth.check_read(alice.as_ref(), b"a", b""),
        Err(Error::PermissionDenied)
    );

    auth.user_change_password("alice", "new", "").await.unwrap();
    assert_eq!(
        auth.auth_info(Some(&token), None),
        Err(Error::InvalidAuthToken)
    );
    assert!(auth.authenticate("alice", "new").await.is_ok());
}

#[tokio::test]
async fn users_and_roles_are_managed_as_in_etcd() {
    let auth = store(Arc::new(Embedded::in_memory().unwrap())).await;
    assert_eq!(auth.user_add("", "pw", None).await, Err(Error::UserEmpty));
    auth.user_add("u", "pw", None).await.unwrap();
    assert_eq!(
        auth.user_add("u", "pw", None).await,
        Err(Error::UserAlreadyExist)
    );
    assert_eq!(
        auth.user_grant_role("u", "r").await,
        Err(Error::RoleNotFound)
    );
    assert_eq!(auth.role_add("").await, Err(Error::RoleEmpty));
    auth.role_add("r").await.unwrap();
    assert_eq!(auth.role_add("r").await, Err(Error::RoleAlreadyExist));
    let before = auth.revision();
    auth.user_grant_role("u", "r").await.unwrap();
    auth.user_grant_role("u", "r").await.unwrap();
    assert_eq!(
        auth.revision(),
        before + 1,
        "a repeated grant changes nothing"
    );
    assert_eq!(auth.user_get(None, "u").unwrap(), vec!["r".to_owned()]);
    assert_eq!(
        auth.role_grant_permission("r", None).await,
        Err(Error::PermissionNotGiven)
    );
    assert_eq!(
        auth.role_grant_permission("r", perm(Type::Read, "b", "a"))
            .await,
        Err(Error::InvalidAuthMgmt)
    );
    auth.role_grant_permission("r", perm(Type::Read, "k", ""))
        .await
        .unwrap();
    auth.role_grant_permission("r", perm(Type::Readwrite, "k", ""))
        .await
        .unwrap();
    auth.role_grant_permission("r", perm(Type::Write, "a", "\0"))
        .await
        .unwrap();
    let perms = auth.role_get(None, "r").unwrap();
    assert_eq!(perms.len(), 2);
    assert_eq!(perms[0].key.as_ref(), b"a");
    assert_eq!(perms[1].perm_type, Type::Readwrite as i32);
    assert_eq!(
        auth.role_revoke_permission("r", b"k", b"z").await,
        Err(Error::PermissionNotGranted)
    );
    auth.role_delete("r").await.unwrap();
    assert_eq!(auth.user_get(None, "u").unwrap(), Vec::<String>::new());
    assert_eq!(
        auth.user_revoke_role("u", "r").await,
        Err(Error::RoleNotGranted)
    );
    assert_eq!(auth.user_delete("x").await, Err(Error::UserNotFound));
    auth.user_add("nopw", "", Some(UserAddOptions { no_password: true }))
        .await
        .unwrap();
    assert_eq!(auth.user_list(), vec!["nopw".to_owned(), "u".to_owned()]);
}

#[tokio::test]
async fn the_state_survives_a_restart() {
    let backend: Arc<dyn Backend> = Arc::new(Embedded::in_memory().unwrap());
    let auth = store(backend.clone()).await;
    auth.user_add("root", "pw", None).await.unwrap();
    auth.user_grant_role("root", "root").await.unwrap();
    auth.enable().await.unwrap();
    drop(auth);
    let again = store(backend).await;
    assert_eq!(again.status(), (true, 3));
    // Tokens are not kept: clients authenticate again, as after an etcd restart.
    let token = again.authenticate("root", "pw").await;
    assert!(token.is_ok());
    let root = again.auth_info(token.ok().as_deref(), None).unwrap();
    assert_eq!(
        again.user_get(root.as_ref(), "root").unwrap(),
        vec!["root".to_owned()]
    );
}

/// Each state installed raises the generation the key-value store is given, before the change is
/// answered, so that no write allowed under the state before it is appended after it.
#[tokio::test]
async fn each_change_raises_the_generation_given_at_open() {
    let installed = Arc::new(AtomicU64::new(0));
    let tokens = TokenProvider::new("simple", Duration::from_secs(300)).unwrap();
    let backend = Arc::new(Embedded::in_memory().unwrap());
    let auth = AuthStore::open(backend, 4, tokens, installed.clone())
        .await
        .unwrap();
    auth.user_add("root", "pw", None).await.unwrap();
    let after_one = installed.load(Ordering::SeqCst);
    assert_eq!(after_one, auth.generation());
    auth.user_grant_role("root", "root").await.unwrap();
    assert_eq!(installed.load(Ordering::SeqCst), after_one + 1);
}
