//! The tables, created by the first frontend to start, and the version check of a database created
//! by another binary.

use super::*;

/// The schema this binary creates and understands.
pub(super) const SCHEMA_VERSION: i32 = 1;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS strata_meta (
    id INT PRIMARY KEY,
    schema_version INT NOT NULL,
    cluster_id BIGINT NOT NULL,
    head BIGINT NOT NULL,
    compacted BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS strata_log (
    revision BIGINT NOT NULL,
    sub BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL,
    key BYTEA NOT NULL,
    create_revision BIGINT NOT NULL,
    version BIGINT NOT NULL,
    lease BIGINT NOT NULL,
    value BYTEA NOT NULL,
    PRIMARY KEY (revision, sub)
);
CREATE TABLE IF NOT EXISTS strata_leases (
    id BIGINT PRIMARY KEY,
    ttl BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS strata_leases_expiry ON strata_leases (expires_at);
CREATE TABLE IF NOT EXISTS strata_keeper (
    id INT PRIMARY KEY,
    holder BIGINT NOT NULL,
    until TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS strata_alarms (
    member BIGINT NOT NULL,
    alarm INT NOT NULL,
    PRIMARY KEY (member, alarm)
);
CREATE TABLE IF NOT EXISTS strata_auth (
    id INT PRIMARY KEY,
    generation BIGINT NOT NULL,
    state BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS strata_members (
    id BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    client_urls TEXT NOT NULL,
    last_seen TIMESTAMPTZ NOT NULL
);
ALTER TABLE strata_members ADD COLUMN IF NOT EXISTS peer_urls TEXT NOT NULL DEFAULT '';
-- What a new lease keeper gives a restored lease instead of its TTL, until a keep-alive.
ALTER TABLE strata_leases ADD COLUMN IF NOT EXISTS remaining_ttl BIGINT;
";

/// Creates the tables if they are missing and returns the cluster id; refuses a database whose
/// schema is newer than this binary's. Frontends starting together may race to create the tables,
/// so a failed attempt is tried again. A new database takes `cluster_id` (random if None).
pub(super) async fn init_schema(client: &Client, cluster_id: Option<u64>) -> Result<u64> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match try_init_schema(client, cluster_id).await {
            Err(BackendError::Storage(e)) if attempt < 3 => {
                tracing::info!(error = %e, "creating the schema raced another frontend; again");
            }
            result => return result,
        }
    }
}

pub(super) async fn try_init_schema(client: &Client, cluster_id: Option<u64>) -> Result<u64> {
    deadline(client.batch_execute(SCHEMA)).await?;
    let fresh = cluster_id.unwrap_or_else(crate::backend::random_id) as i64;
    deadline(client.execute(
        "INSERT INTO strata_keeper (id, holder, until) VALUES (1, 0, now()) ON CONFLICT (id) DO NOTHING",
        &[],
    ))
    .await?;
    deadline(client.execute(
        "INSERT INTO strata_meta (id, schema_version, cluster_id, head, compacted)
         VALUES (1, $1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
        &[
            &SCHEMA_VERSION,
            &fresh,
            &Progress::EMPTY.head,
            &Progress::EMPTY.compacted,
        ],
    ))
    .await?;
    let row = deadline(client.query_one(
        "SELECT schema_version, cluster_id FROM strata_meta WHERE id = 1",
        &[],
    ))
    .await?;
    let version: i32 = row.get(0);
    if version > SCHEMA_VERSION {
        return Err(BackendError::Schema(format!(
            "the database holds Strata schema version {version}, but this binary understands up to \
             version {SCHEMA_VERSION}: upgrade Strata"
        )));
    }
    Ok(row.get::<_, i64>(1) as u64)
}
