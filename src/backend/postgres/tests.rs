use super::super::conformance;
use super::*;

/// A fresh, empty database on the PostgreSQL that `STRATA_TEST_POSTGRES` (a connection string
/// with rights to create databases) names; `scripts/test` starts one and sets it.
pub async fn fresh_database() -> Connection {
    let url = std::env::var("STRATA_TEST_POSTGRES").expect(
        "STRATA_TEST_POSTGRES is not set: run the tests with scripts/test, which starts a \
         throwaway PostgreSQL",
    );
    let admin = tls::parse(&url).expect("STRATA_TEST_POSTGRES parses");
    let conn = Conn::open(&admin)
        .await
        .expect("connect to the test PostgreSQL");
    let name = format!("strata_unit_{:x}", super::super::random_id());
    conn.client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    let mut connection = admin;
    connection.config.dbname(&name);
    connection
}

async fn fresh() -> Postgres {
    Postgres::open(fresh_database().await, "test", Default::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn conformance() {
    conformance::append_and_read_back(&fresh().await).await;
    conformance::append_out_of_order_is_refused(&fresh().await).await;
    conformance::compaction_removes_and_is_remembered(&fresh().await).await;
    conformance::leases_are_recorded_and_forgotten(&fresh().await).await;
    conformance::alarms_are_recorded_and_cleared(&fresh().await).await;
    conformance::auth_changes_only_from_the_stored_generation(&fresh().await).await;
    conformance::restore_takes_a_history_with_gaps(&fresh().await).await;
}

/// PostgreSQL's own error reaches mvcc whole: its SQLSTATE can be matched on.
#[tokio::test]
async fn a_failure_keeps_the_sqlstate() {
    let mut missing = fresh_database().await;
    missing.config.dbname("strata_no_such_database");
    let Err(BackendError::Storage(failure)) =
        Postgres::open(missing, "test", Default::default()).await
    else {
        panic!("a missing database opens");
    };
    let error = crate::error::Error::Storage(failure);
    let postgres = std::iter::successors(std::error::Error::source(&error), |e| e.source())
        .find_map(|e| e.downcast_ref::<tokio_postgres::Error>())
        .expect("the tokio_postgres::Error is among the sources");
    assert_eq!(
        postgres.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME)
    );
}

/// The conformance cases of a shared backend, each with two frontends of a fresh database.
#[tokio::test]
async fn shared_conformance() {
    async fn two() -> (Postgres, Postgres) {
        let config = fresh_database().await;
        let a = Postgres::open(config.clone(), "a", Default::default())
            .await
            .unwrap();
        (
            a,
            Postgres::open(config, "b", Default::default())
                .await
                .unwrap(),
        )
    }
    let (a, b) = two().await;
    conformance::the_append_right_brings_others_appends(&a, &b).await;
    let (a, b) = two().await;
    conformance::presumed_appends_hold_only_as_presumed(&a, &b).await;
    let (a, b) = two().await;
    conformance::leases_are_timed_by_the_backend(&a, &b).await;
    let (a, b) = two().await;
    conformance::one_lease_keeper_at_a_time(&a, &b).await;
    let (a, b) = two().await;
    conformance::members_are_the_frontends_heard_from(&a, &b).await;
}

#[tokio::test]
async fn frontends_share_identity_and_see_each_others_appends() {
    let config = fresh_database().await;
    let a = Postgres::open(config.clone(), "a", Default::default())
        .await
        .unwrap();
    let b = Postgres::open(config, "b", Default::default())
        .await
        .unwrap();
    assert_eq!(a.identity().cluster_id, b.identity().cluster_id);
    assert_ne!(a.identity().member_id, b.identity().member_id);
    let mut tail = b.shared().expect("a shared backend").tail();
    let entry = LogEntry {
        revision: 2,
        events: vec![conformance::put("k", "v", 2, 1)],
    };
    a.append(std::slice::from_ref(&entry)).await.unwrap();
    tail.wait_for(|head| *head >= 2).await.unwrap();
    assert_eq!(b.read_log(2, 10).await.unwrap(), vec![entry.clone()]);
    // b's writer had not caught up: its append of revision 2 is refused, not written twice.
    let err = b.append(&[entry]).await.unwrap_err();
    assert!(matches!(err, BackendError::OutOfOrder { head: 2, got: 2 }));
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let config = fresh_database().await;
    drop(
        Postgres::open(config.clone(), "a", Default::default())
            .await
            .unwrap(),
    );
    let client = Conn::open(&config).await.unwrap().client;
    client
        .batch_execute("UPDATE strata_meta SET schema_version = 99")
        .await
        .unwrap();
    let err = Postgres::open(config, "a", Default::default())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

/// A restored lease starts from what the snapshot had left of it; a frontend taking over the
/// timing of leases gives it that again, not its whole TTL, until a keep-alive renews it.
#[tokio::test]
async fn a_restored_lease_keeps_what_was_left_of_it_until_a_keep_alive() {
    let config = fresh_database().await;
    let a = Postgres::open(config.clone(), "a", Default::default())
        .await
        .unwrap();
    a.begin_restore().await.unwrap();
    a.restore_leases(&[(9, 300, 12), (10, 300, 0)])
        .await
        .unwrap();
    a.finish_restore(Progress {
        head: 1,
        compacted: 0,
    })
    .await
    .unwrap();
    let left = |id| {
        let a = &a;
        async move { a.lease_time_to_live(id).await.unwrap().unwrap() }
    };
    assert!(
        matches!(left(9).await, (300, 11..=12)),
        "{:?}",
        left(9).await
    );
    assert!(matches!(left(10).await, (300, 299..=300)));
    let b = Postgres::open(config, "b", Default::default())
        .await
        .unwrap();
    // b is the first keeper: it renews every lease as a new keeper does.
    assert!(b.keep_leases().await.unwrap());
    assert!(
        matches!(left(9).await, (300, 11..=12)),
        "{:?}",
        left(9).await
    );
    assert_eq!(a.renew_leases(&[9]).await.unwrap(), [(9, 300)]);
    assert!(matches!(left(9).await, (300, 299..=300)));
    let recorded = (a.inner)
        .read("SELECT remaining_ttl FROM strata_leases WHERE id = 9", &[])
        .await
        .unwrap();
    assert_eq!(recorded[0].get::<_, Option<i64>>(0), None);
}
