//! gRPC's health service, as etcd registers it: the server ("") SERVING, other names unknown, and
//! List naming what Check answers for.

use crate::support::start_both;
use strata::proto::health::health_client::HealthClient;
use strata::proto::health::{HealthCheckRequest, HealthListRequest};

fn named(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

#[tokio::test]
async fn health_checks_answer_as_etcds() {
    let (etcd, strata) = start_both();
    let mut answers = Vec::new();
    for server in [&etcd.process, &strata.process] {
        let mut health = HealthClient::new(server.channel().await);
        let whole = health.check(named("")).await.unwrap().into_inner();
        let unknown = health.check(named("etcdserverpb.KV")).await.unwrap_err();
        let mut watched = health.watch(named("")).await.unwrap().into_inner();
        let first = watched.message().await.unwrap().unwrap();
        let mut other = health.watch(named("nope")).await.unwrap().into_inner();
        let unknown_watched = other.message().await.unwrap().unwrap();
        let listed = health
            .list(HealthListRequest {})
            .await
            .unwrap()
            .into_inner();
        let mut listed: Vec<(String, i32)> = listed
            .statuses
            .into_iter()
            .map(|(name, status)| (name, status.status))
            .collect();
        listed.sort();
        answers.push((
            whole.status,
            unknown.code(),
            unknown.message().to_owned(),
            first.status,
            unknown_watched.status,
            listed,
        ));
    }
    assert_eq!(answers[1], answers[0], "Strata's answers, then etcd's");
    assert_eq!(answers[0].0, 1, "SERVING");
}
