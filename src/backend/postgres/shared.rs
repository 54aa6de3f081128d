//! What the database adds when frontends share it: the append right (the head's row lock), the read
//! index, the tail, leases timed by the database's clock, the keeper role and the member list.

use super::*;

/// [`APPEND`], if also the compaction revision is no newer than $11, the auth state's generation
/// no newer than $12, every lease of $13 recorded and every one of $15 expired by the database's
/// clock, and then forgets the leases of $14; sent
/// after [`LOCK`], so that it reads them as of holding the right (no auth change or revoke can
/// commit before the append then). Answers whether the head moved ($1 may be $2: only a revoke).
const PRESUMED_APPEND: &str = concat!(
    moved_if!(
        " AND compacted <= $11 AND ",
        auth_generation!(),
        " <= $12 AND (SELECT count(*) FROM strata_leases WHERE id = ANY($13))
             = (SELECT count(*) FROM UNNEST($13::BIGINT[]))
         AND (SELECT count(*) FROM strata_leases WHERE id = ANY($15) AND expires_at <= now())
             = (SELECT count(*) FROM UNNEST($15::BIGINT[]))"
    ),
    ",
forgot AS (DELETE FROM strata_leases WHERE id = ANY($14) AND EXISTS (SELECT 1 FROM moved)),
appended AS (",
    log_rows_if_moved!(),
    ")
SELECT count(*) FROM moved"
);
/// Whether the head is $1, the compaction revision no newer than $2 and the auth state's
/// generation no newer than $3, as of one moment.
const PRESUMED_CHECK: &str = concat!(
    "SELECT head = $1 AND compacted <= $2 AND ",
    auth_generation!(),
    " <= $3 FROM strata_meta WHERE id = 1"
);

/// The leases of $1 recorded, as (id, TTL) rows ([`id_and_ttl`]).
const LEASES_AMONG: &str = "SELECT id, ttl FROM strata_leases WHERE id = ANY($1)";

/// Gives back a right the appender holds, appending nothing.
async fn roll_back(appender: &mut Session, config: &Connection) -> Result<()> {
    if appender.locked {
        appender.locked = false;
        appender
            .simple(config, "ROLLBACK", STATEMENT_DEADLINE)
            .await?;
    }
    Ok(())
}

#[async_trait]
impl Shared for Postgres {
    fn tail(&self) -> watch::Receiver<i64> {
        self.inner.head.subscribe()
    }

    async fn lock(&self, after: i64) -> Result<Locked> {
        let mut appender = self.inner.appender.lock().await;
        let config = &self.inner.config;
        roll_back(&mut appender, config).await?;
        // The statements prepared before the transaction, so that nothing but them runs in it.
        let read = appender.prepared(config, READ_LOG).await?;
        let auth = appender.prepared(config, LOCKED_AUTH).await?;
        appender.prepared(config, APPEND).await?;
        // One round trip: the lock, then (pipelined behind it, so under it) the auth generation
        // and the log after `after`.
        let conn = appender.conn(config).await?;
        let limit = LOCK_READ_EVENTS as i64;
        // The level said again: a session's setting does not follow it through a pooler.
        let locking = format!("BEGIN ISOLATION LEVEL READ COMMITTED; {LOCK}");
        let from = after + 1;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&from, &limit];
        let (locked, auth, log) = tokio::join!(
            deadline(conn.client.simple_query(&locking)),
            deadline(conn.client.query_one(&auth, &[])),
            deadline(conn.client.query(&read, &params)),
        );
        let read = locked.and_then(|messages| {
            let meta = messages
                .into_iter()
                .find_map(|m| match m {
                    SimpleQueryMessage::Row(row) => Some(row),
                    _ => None,
                })
                .ok_or_else(|| BackendError::Schema("strata_meta has no row".into()))?;
            let progress = Progress {
                head: number(&meta, 0)?,
                compacted: number(&meta, 1)?,
            };
            Ok((progress, auth?.get::<_, i64>(0) as u64, log?))
        });
        // A failure drops the connection, and with it the transaction if it began.
        let (progress, auth, mut rows) = appender.failed(read)?;
        appender.locked = true;
        if rows.len() == LOCK_READ_EVENTS {
            // Whole revisions only: leave the last one, which may be cut, to the caller's read.
            let last: i64 = rows.last().expect("not empty").get(0);
            rows.retain(|r| r.get::<_, i64>(0) != last);
        }
        Ok(Locked {
            progress,
            auth,
            entries: entries(&rows),
        })
    }

    async fn append_presumed(&self, entries: &[LogEntry], presumed: &Presumed) -> Result<bool> {
        let auth = i64::try_from(presumed.auth).unwrap_or(i64::MAX);
        let last = match numbered(entries)? {
            Some((_, last)) => last,
            None if presumed.revoked.is_empty() => {
                let params: Params = &[&presumed.head, &presumed.compacted, &auth];
                let rows = self.inner.read(PRESUMED_CHECK, params).await?;
                return Ok(rows.first().is_some_and(|row| row.get::<_, bool>(0)));
            }
            None => presumed.head,
        };
        let (rows, bytes) = log_rows(entries);
        let [a, b, c, d, e, f, g, h, i, j] = with_rows(&last, &presumed.head, &rows);
        let params: Params = &[
            a,
            b,
            c,
            d,
            e,
            f,
            g,
            h,
            i,
            j,
            &presumed.compacted,
            &auth,
            &presumed.leases,
            &presumed.revoked,
            &presumed.expired,
        ];
        let mut appender = self.inner.appender.lock().await;
        let config = &self.inner.config;
        roll_back(&mut appender, config).await?;
        let insert = appender.prepared(config, PRESUMED_APPEND).await?;
        let conn = appender.conn(config).await?;
        // One round trip: the right, the rows under it, and the commit (whose wake-up names the
        // head as the append leaves it, whether it was made or not).
        let begin = format!("BEGIN ISOLATION LEVEL READ COMMITTED; {LOCK}");
        let finish = self.inner.finish_append();
        let (locked, moved, committed) = tokio::join!(
            deadline(conn.client.simple_query(&begin)),
            deadline(conn.client.query_one(&insert, params)),
            deadline(conn.client.simple_query(&finish)),
        );
        // A failure drops the connection, and with it the transaction if it began.
        let moved = appender.failed(locked.and(moved).and_then(|row| committed.map(|_| row)))?;
        let moved = moved.get::<_, i64>(0) > 0;
        if moved {
            self.inner.size.fetch_add(bytes, Ordering::Relaxed);
        }
        Ok(moved)
    }

    async fn progress_near(&self, head: i64) -> Result<Progress> {
        if let Some(standby) = &self.inner.standby {
            if let Some(progress) = standby.progress_reaching(head).await {
                return Ok(progress);
            }
        }
        self.inner.progress().await
    }

    async fn read_index(&self) -> Result<ReadIndex> {
        let rows = self.inner.read(READ_INDEX, &[]).await?;
        let row = rows
            .first()
            .ok_or_else(|| BackendError::Schema("strata_meta has no row".into()))?;
        let index = ReadIndex {
            head: row.get(0),
            auth: row.get::<_, i64>(1) as u64,
        };
        self.inner.seen(index.head);
        Ok(index)
    }

    async fn unlock(&self) -> Result<()> {
        let mut appender = self.inner.appender.lock().await;
        if appender.locked {
            appender.locked = false;
            appender
                .simple(&self.inner.config, "COMMIT", STATEMENT_DEADLINE)
                .await?;
        }
        Ok(())
    }

    async fn leases_among(&self, ids: &[i64]) -> Result<Vec<(i64, i64)>> {
        let ids = ids.to_vec();
        let mut appender = self.inner.appender.lock().await;
        let rows = if appender.locked {
            appender
                .query(&self.inner.config, LEASES_AMONG, &[&ids])
                .await?
        } else {
            drop(appender);
            self.inner.read(LEASES_AMONG, &[&ids]).await?
        };
        Ok(id_and_ttl(&rows))
    }

    async fn leases_near(&self, ids: &[i64]) -> Vec<(i64, i64)> {
        let Some(standby) = &self.inner.standby else {
            return Vec::new();
        };
        let ids = ids.to_vec();
        match standby.read(LEASES_AMONG, &[&ids]).await {
            Ok(rows) => id_and_ttl(&rows),
            Err(_) => Vec::new(),
        }
    }

    async fn expired_among(&self, ids: &[i64]) -> Result<Vec<i64>> {
        let ids = ids.to_vec();
        let sql = "SELECT id FROM strata_leases WHERE id = ANY($1) AND expires_at <= now()";
        let mut appender = self.inner.appender.lock().await;
        if !appender.locked {
            return Err(BackendError::storage(
                "expired leases are checked in the append transaction only",
            ));
        }
        let rows = appender.query(&self.inner.config, sql, &[&ids]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn renew_leases(&self, ids: &[i64]) -> Result<Vec<(i64, i64)>> {
        let ids = ids.to_vec();
        let rows = self
            .inner
            .write_rows(
                "UPDATE strata_leases
                 SET expires_at = now() + ttl * INTERVAL '1 second', remaining_ttl = NULL
                 WHERE id = ANY($1) AND expires_at > now() RETURNING id, ttl",
                &[&ids],
            )
            .await?;
        Ok(id_and_ttl(&rows))
    }

    async fn lease_time_to_live(&self, id: i64) -> Result<Option<(i64, i64)>> {
        let rows = self
            .inner
            .read(
                "SELECT ttl, CAST(FLOOR(EXTRACT(EPOCH FROM expires_at - now())) AS BIGINT)
                 FROM strata_leases WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(rows.first().map(|r| (r.get(0), r.get::<_, i64>(1).max(0))))
    }

    async fn keep_leases(&self) -> Result<bool> {
        let me = self.identity.member_id as i64;
        let seconds = KEEPER_TERM.as_secs_f64();
        // One statement, so that taking the role over and renewing every lease happen together.
        let rows = self
            .inner
            .write_rows(
                "WITH before AS (SELECT holder, until < now() AS lapsed FROM strata_keeper WHERE id = 1),
                 took AS (
                     UPDATE strata_keeper SET holder = $1, until = now() + $2 * INTERVAL '1 second'
                     FROM before
                     WHERE strata_keeper.id = 1
                       AND (strata_keeper.holder = $1 OR strata_keeper.until < now())
                     RETURNING before.holder AS previous, before.lapsed
                 ),
                 renewed AS (
                     UPDATE strata_leases
                     SET expires_at = GREATEST(
                         expires_at, now() + COALESCE(remaining_ttl, ttl) * INTERVAL '1 second'
                     )
                     WHERE EXISTS (SELECT 1 FROM took WHERE previous <> $1 OR lapsed)
                     RETURNING id
                 )
                 SELECT previous, (SELECT count(*) FROM renewed), lapsed FROM took",
                &[&me, &seconds],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(false);
        };
        let renewed: i64 = row.get(1);
        if row.get::<_, i64>(0) != me {
            tracing::info!(renewed, "took over as lease keeper, renewing every lease");
        } else if row.get::<_, bool>(2) {
            tracing::info!(
                renewed,
                "the lease keeper's term lapsed (the database did not answer): renewing every lease"
            );
        }
        Ok(true)
    }

    async fn expired_leases(&self, limit: usize) -> Result<Vec<i64>> {
        let rows = self
            .inner
            .read(
                "SELECT id FROM strata_leases WHERE expires_at <= now() ORDER BY expires_at LIMIT $1",
                &[&(limit as i64)],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn heartbeat(&self, member: &MemberRecord) -> Result<()> {
        let (client_urls, peer_urls) = (member.client_urls.join(","), member.peer_urls.join(","));
        self.inner
            .write(
                "INSERT INTO strata_members (id, name, client_urls, peer_urls, last_seen)
                 VALUES ($1, $2, $3, $4, now())
                 ON CONFLICT (id) DO UPDATE
                 SET name = excluded.name, client_urls = excluded.client_urls,
                     peer_urls = excluded.peer_urls, last_seen = now()",
                &[&(member.id as i64), &member.name, &client_urls, &peer_urls],
            )
            .await?;
        self.inner
            .write(
                "DELETE FROM strata_members WHERE last_seen < now() - $1 * INTERVAL '1 second'",
                &[&(MEMBER_FORGET_SECONDS as f64)],
            )
            .await?;
        Ok(())
    }

    async fn members(&self) -> Result<Vec<MemberRecord>> {
        let rows = self
            .inner
            .read(
                "SELECT id, name, client_urls, peer_urls FROM strata_members
                 WHERE last_seen >= now() - $1 * INTERVAL '1 second'",
                &[&(MEMBER_TIMEOUT_SECONDS as f64)],
            )
            .await?;
        let urls = |text: String| -> Vec<String> {
            text.split(',')
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let mut members: Vec<MemberRecord> = rows
            .iter()
            .map(|r| MemberRecord {
                id: r.get::<_, i64>(0) as u64,
                name: r.get(1),
                client_urls: urls(r.get(2)),
                peer_urls: urls(r.get(3)),
            })
            .collect();
        // etcd lists members by id; ids are unsigned, the column's order is the signed one.
        members.sort_by_key(|m| m.id);
        Ok(members)
    }
}
