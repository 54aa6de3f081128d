//! Auth over gRPC, beyond what etcdctl shows: watches, leases and maintenance calls with and
//! without tokens, the same script against etcd and Strata, outcomes compared.

use crate::support::{start_both, Process};
use strata::proto::authpb::{permission::Type, Permission};
use strata::proto::etcdserverpb::auth_client::AuthClient;
use strata::proto::etcdserverpb::lease_client::LeaseClient;
use strata::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use strata::proto::etcdserverpb::watch_client::WatchClient;
use strata::proto::etcdserverpb::watch_request::RequestUnion;
use strata::proto::etcdserverpb::*;
use tonic::Request;

/// `message` carrying `token`, if any, as etcd's clients send it.
fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("token", token.parse().unwrap());
    }
    request
}

/// What a call came to, as much as two servers must agree on.
fn outcome<T>(
    result: Result<tonic::Response<T>, tonic::Status>,
    seen: impl Fn(T) -> String,
) -> String {
    match result {
        Ok(r) => format!("ok {}", seen(r.into_inner())),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

/// The first answer of a watch created with `token`: created, canceled, and why.
async fn watch_answer(server: &Process, token: Option<&str>, key: &str) -> String {
    let mut client = WatchClient::new(server.channel().await);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.as_bytes().to_vec().into(),
            ..Default::default()
        })),
    };
    let requests = tokio_stream::iter([create]);
    let result = client.watch(with_token(requests, token)).await;
    match result {
        Ok(stream) => {
            let first = stream.into_inner().message().await;
            match first {
                Ok(Some(r)) => format!(
                    "created {} canceled {} id {} reason {:?}",
                    r.created, r.canceled, r.watch_id, r.cancel_reason
                ),
                other => format!("{other:?}"),
            }
        }
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

async fn script(server: &Process) -> Vec<String> {
    let channel = server.channel().await;
    let mut auth = AuthClient::new(channel.clone());
    let mut lease = LeaseClient::new(channel.clone());
    let mut maintenance = MaintenanceClient::new(channel.clone());
    let mut kv = server.kv().await;
    let mut seen = Vec::new();

    let setup = async {
        auth.user_add(AuthUserAddRequest {
            name: "root".into(),
            password: "rootpw".into(),
            ..Default::default()
        })
        .await?;
        auth.user_grant_role(AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        })
        .await?;
        auth.user_add(AuthUserAddRequest {
            name: "alice".into(),
            password: "alicepw".into(),
            ..Default::default()
        })
        .await?;
        auth.role_add(AuthRoleAddRequest { name: "r".into() })
            .await?;
        auth.role_grant_permission(AuthRoleGrantPermissionRequest {
            name: "r".into(),
            perm: Some(Permission {
                perm_type: Type::Read as i32,
                key: "a".into(),
                range_end: Default::default(),
            }),
        })
        .await?;
        auth.user_grant_role(AuthUserGrantRoleRequest {
            user: "alice".into(),
            role: "r".into(),
        })
        .await?;
        lease
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 7 })
            .await?;
        kv.put(PutRequest {
            key: "a".into(),
            value: "1".into(),
            lease: 7,
            ..Default::default()
        })
        .await?;
        auth.auth_enable(AuthEnableRequest {}).await?;
        Ok::<_, tonic::Status>(())
    };
    setup.await.expect("set-up succeeds");
    let token = |name: &str, password: &str| {
        let mut auth = auth.clone();
        let (name, password) = (name.to_owned(), password.to_owned());
        async move {
            auth.authenticate(AuthenticateRequest { name, password })
                .await
                .unwrap()
                .into_inner()
                .token
        }
    };
    let alice = token("alice", "alicepw").await;
    let root = token("root", "rootpw").await;
    let alice = Some(alice.as_str());
    let root = Some(root.as_str());

    for (who, token) in [("nobody", None), ("alice", alice), ("forged", Some("x.1"))] {
        for key in ["a", "b"] {
            let answer = watch_answer(server, token, key).await;
            seen.push(format!("{who} watches {key}: {answer}"));
        }
    }
    for (who, token) in [("nobody", None), ("alice", alice), ("root", root)] {
        let r = lease
            .lease_time_to_live(with_token(
                LeaseTimeToLiveRequest { id: 7, keys: true },
                token,
            ))
            .await;
        seen.push(format!(
            "{who} ttl: {}",
            outcome(r, |r| format!("{:?}", r.keys))
        ));
        let r = lease
            .lease_leases(with_token(LeaseLeasesRequest {}, token))
            .await;
        seen.push(format!(
            "{who} leases: {}",
            outcome(r, |r| format!("{:?}", r.leases))
        ));
        let r = maintenance
            .status(with_token(StatusRequest {}, token))
            .await;
        seen.push(format!("{who} status: {}", outcome(r, |_| String::new())));
        let r = maintenance
            .alarm(with_token(AlarmRequest::default(), token))
            .await;
        seen.push(format!(
            "{who} alarms: {}",
            outcome(r, |r| format!("{:?}", r.alarms))
        ));
        let r = auth
            .user_get(with_token(
                AuthUserGetRequest {
                    name: "alice".into(),
                },
                token,
            ))
            .await;
        seen.push(format!(
            "{who} gets alice: {}",
            outcome(r, |r| format!("{:?}", r.roles))
        ));
        let r = auth
            .role_get(with_token(AuthRoleGetRequest { role: "r".into() }, token))
            .await;
        seen.push(format!(
            "{who} gets r: {}",
            outcome(r, |r| r.perm.len().to_string())
        ));
    }
    for (id, who, token) in [(100, "nobody", None), (101, "alice", alice)] {
        let r = lease
            .lease_grant(with_token(LeaseGrantRequest { ttl: 60, id }, token))
            .await;
        seen.push(format!("{who} grant: {}", outcome(r, |r| r.id.to_string())));
    }
    let r = lease
        .lease_revoke(with_token(LeaseRevokeRequest { id: 7 }, alice))
        .await;
    seen.push(format!("alice revokes: {}", outcome(r, |_| String::new())));
    let r = lease
        .lease_revoke(with_token(LeaseRevokeRequest { id: 7 }, root))
        .await;
    seen.push(format!("root revokes: {}", outcome(r, |_| String::new())));
    seen
}

/// The one answer of the reference etcd (3.5.30) that the etcd release Strata follows
/// ([`strata::api::ETCD_VERSION`], 3.5.33) changed: 3.5.28 to 3.5.30 allowed Status to root only,
/// 3.5.33 to any user again.
const STATUS_BY_A_USER: (&str, &str) = (
    "alice status: PermissionDenied: etcdserver: permission denied",
    "alice status: ok ",
);

#[tokio::test]
async fn watches_leases_and_maintenance_with_tokens() {
    let (etcd, strata) = start_both();
    let want = script(&etcd).await;
    let got = script(&strata).await;
    assert_eq!(got.len(), want.len());
    for (got, want) in got.iter().zip(&want) {
        if want == STATUS_BY_A_USER.0 {
            assert_eq!(got, STATUS_BY_A_USER.1);
        } else {
            assert_eq!(got, want);
        }
    }
}

/// A JWT token of `--auth-token jwt,...` (its key made by openssl with `generate`): it outlives a
/// restart of the server that signed it, and is refused once the auth revision moves past it.
async fn jwt_tokens_with(method: &str, generate: &[&str]) {
    use crate::support::{enable_auth, root_token, Strata};
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("jwt.key");
    let made = std::process::Command::new("openssl")
        .args(generate)
        .arg("-out")
        .arg(&key)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let option = format!(
        "jwt,priv-key={},sign-method={method},ttl=10m",
        key.display()
    );
    let data = tempfile::tempdir().unwrap();
    let mut strata = Strata::start_in(data.path(), &["--auth-token", &option]);
    enable_auth(&strata).await;
    let token = root_token(&strata).await;
    let header = token.split('.').next().unwrap();
    let header = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header);
    let header: serde_json::Value = serde_json::from_slice(&header.unwrap()).unwrap();
    assert_eq!(header["alg"], method);

    strata.kill();
    let strata = Strata::start_in(data.path(), &["--auth-token", &option]);
    let put = |token: &str| {
        let request = with_token(put_request(), Some(token));
        let endpoint = strata.endpoint();
        async move {
            let mut kv = strata::proto::etcdserverpb::kv_client::KvClient::connect(endpoint)
                .await
                .unwrap();
            kv.put(request).await
        }
    };
    put(&token).await.unwrap();
    AuthClient::new(strata.channel().await)
        .role_add(with_token(
            AuthRoleAddRequest { name: "r".into() },
            Some(&token),
        ))
        .await
        .unwrap();
    let old = put(&token).await.unwrap_err();
    assert_eq!(old.message(), "etcdserver: revision of auth store is old");
    // The signature's first character changed.
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let other = if signature.starts_with('A') { "B" } else { "A" };
    let forged = format!("{signed}.{other}{}", &signature[1..]);
    let refused = put(&forged).await.unwrap_err();
    assert_eq!(refused.message(), "etcdserver: invalid auth token");
}

fn put_request() -> PutRequest {
    PutRequest {
        key: "k".into(),
        value: "v".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn jwt_tokens_rs256() {
    let generate = [
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
    ];
    jwt_tokens_with("RS256", &generate).await;
}

#[tokio::test]
async fn jwt_tokens_es256() {
    let generate = [
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
    ];
    jwt_tokens_with("ES256", &generate).await;
}
