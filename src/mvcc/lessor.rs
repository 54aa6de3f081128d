//! The lessor: every live lease with its TTL and deadline, and the expiry queue ordered by deadline.
//!
//! Which keys a lease holds is the index's to know ([`Index::lease_keys`](super::index::Index)); a
//! lease's revoke, by a client or by expiry, deletes them through the writer in one revision.
//!
//! Leases are durable in the backend with their granted TTL. After a restart every lease starts a
//! full TTL again, as etcd renews every lease when a new leader takes over: a lease that was kept
//! alive is never expired by a restart, and one that was abandoned expires one TTL after it. With
//! persisted checkpoints (etcd's `--experimental-enable-lease-checkpoint-persist`) the remaining
//! TTL of each lease with more left than the checkpoint interval is recorded every interval, and
//! a restart gives a lease what its record says; a keep-alive clears the record.
//!
//! On a shared backend, whose clock times the leases, the lessor is what this frontend has seen
//! of them lately: each lease granted, kept alive or written to through it, or found live under
//! the append right, until [`REMEMBERED_PAST_TTL`] after its TTL from then (long enough for the
//! keeper's expiry of it to find it); the writer presumes an append only on leases it remembers
//! so (and the append checks them), and [`Lessor::forget_unseen`] forgets the rest.
//!
//! ```text
//! leases: { 7: {ttl 10, deadline t+10}, 9: {ttl 60, deadline t+60} }
//! queue:  { (t+10, 7), (t+60, 9) }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tokio::time::Instant;

/// The largest TTL etcd grants, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// The smallest TTL etcd grants with its default timing (1.5 election timeouts of 10 heartbeats of
/// 100 ms, rounded up); shorter requests get this.
pub const MIN_LEASE_TTL: i64 = 2;
/// How long a shared backend's lessor remembers a lease past its TTL from when it last saw it.
pub const REMEMBERED_PAST_TTL: Duration = Duration::from_secs(60);
/// How long an expired lease waits before its revoke is tried again, if the first try failed.
const REVOKE_RETRY: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug)]
pub struct Lease {
    /// Granted TTL in seconds.
    pub ttl: i64,
    deadline: Instant,
    /// Expired and waiting for its revoke: it can no longer be kept alive.
    expired: bool,
    /// The remaining TTL last recorded, in seconds (0: none).
    recorded: i64,
    /// When its next checkpoint is due, if one is.
    checkpoint_at: Option<Instant>,
}

#[derive(Default)]
pub struct Lessor {
    leases: HashMap<i64, Lease>,
    queue: BTreeSet<(Instant, i64)>,
    /// How often a lease's remaining TTL is recorded; None: never.
    checkpoint_every: Option<Duration>,
    /// Checkpoints due, by when.
    checkpoints: BTreeSet<(Instant, i64)>,
}

impl Lessor {
    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Starts a lease (already durable) whose deadline is one TTL from `now`; a lease already
    /// there starts afresh.
    pub fn grant(&mut self, id: i64, ttl: i64, now: Instant) {
        self.resume(id, ttl, 0, now);
    }

    /// Starts a lease (already durable) whose remaining TTL was recorded as `recorded` seconds
    /// (0: none, a full TTL).
    pub fn resume(&mut self, id: i64, ttl: i64, recorded: i64, now: Instant) {
        let left = if recorded > 0 { recorded } else { ttl };
        let lease = Lease {
            ttl,
            deadline: now + ttl_duration(left),
            expired: false,
            recorded,
            checkpoint_at: None,
        };
        self.remove(id);
        self.restore(id, lease);
    }

    /// Puts back a lease taken by [`Lessor::remove`] whose revoke did not happen.
    pub fn restore(&mut self, id: i64, mut lease: Lease) {
        self.queue.insert((lease.deadline, id));
        lease.checkpoint_at = None;
        self.leases.insert(id, lease);
        self.schedule_checkpoint(id, Instant::now());
    }

    /// Renews a lease for another TTL from `now`; None if it does not exist or has expired.
    pub fn renew(&mut self, id: i64, now: Instant) -> Option<i64> {
        let lease = self.leases.get_mut(&id).filter(|l| !l.expired)?;
        self.queue.remove(&(lease.deadline, id));
        lease.deadline = now + ttl_duration(lease.ttl);
        self.queue.insert((lease.deadline, id));
        let ttl = lease.ttl;
        self.schedule_checkpoint(id, now);
        Some(ttl)
    }

    pub fn remove(&mut self, id: i64) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        self.queue.remove(&(lease.deadline, id));
        if let Some(at) = lease.checkpoint_at {
            self.checkpoints.remove(&(at, id));
        }
        Some(lease)
    }

    /// Records remaining TTLs every `every` from `now` on (see [`Lessor::due_checkpoints`]).
    pub fn checkpoint_every(&mut self, every: Duration, now: Instant) {
        self.checkpoint_every = Some(every);
        for id in self.ids() {
            self.schedule_checkpoint(id, now);
        }
    }

    /// Schedules a lease's next checkpoint one interval from `now`, if it has more left than that
    /// (as etcd does: one with less expires, or is kept alive, before it would matter).
    fn schedule_checkpoint(&mut self, id: i64, now: Instant) {
        let Some(every) = self.checkpoint_every else {
            return;
        };
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        if let Some(at) = lease.checkpoint_at.take() {
            self.checkpoints.remove(&(at, id));
        }
        if lease.deadline.saturating_duration_since(now) > every {
            lease.checkpoint_at = Some(now + every);
            self.checkpoints.insert((now + every, id));
        }
    }

    /// When the next checkpoint is due, if any is.
    pub fn next_checkpoint(&self) -> Option<Instant> {
        self.checkpoints.first().map(|(at, _)| *at)
    }

    /// The checkpoints due at `now`, as (id, whole seconds left, rounded up), for leases with
    /// less left than their TTL; [`Lessor::checkpointed`] once they are recorded.
    pub fn due_checkpoints(&mut self, now: Instant) -> Vec<(i64, i64)> {
        let mut due = Vec::new();
        while let Some(id) = take_due(&mut self.checkpoints, now) {
            let lease = self.leases.get_mut(&id).expect("a scheduled lease exists");
            lease.checkpoint_at = None;
            let left = lease.deadline.saturating_duration_since(now);
            let left = left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0);
            if !lease.expired && left < lease.ttl {
                due.push((id, left));
            }
        }
        due
    }

    /// After the checkpoints `due` were recorded (or not): each lease's next one is scheduled.
    pub fn checkpointed(&mut self, due: &[(i64, i64)], recorded: bool, now: Instant) {
        for &(id, left) in due {
            if let Some(lease) = self.leases.get_mut(&id) {
                if recorded {
                    lease.recorded = left;
                }
                self.schedule_checkpoint(id, now);
            }
        }
    }

    /// Forgets a lease's recorded remaining TTL (a keep-alive renewed it); true if it had one,
    /// which the backend must then clear too.
    pub fn clear_recorded(&mut self, id: i64) -> bool {
        self.leases
            .get_mut(&id)
            .is_some_and(|l| std::mem::take(&mut l.recorded) > 0)
    }

    /// The granted TTL and the whole seconds left, as etcd reports them.
    pub fn time_to_live(&self, id: i64, now: Instant) -> Option<(i64, i64)> {
        let lease = self.leases.get(&id)?;
        let left = lease.deadline.saturating_duration_since(now).as_secs() as i64;
        Some((lease.ttl, left))
    }

    /// Every lease id, in id order.
    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The earliest deadline, if any lease is live.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.first().map(|(deadline, _)| *deadline)
    }

    /// Forgets the leases whose deadline passed more than [`REMEMBERED_PAST_TTL`] before `now`
    /// (on a shared backend: not seen lately).
    pub fn forget_unseen(&mut self, now: Instant) {
        let Some(before) = now.checked_sub(REMEMBERED_PAST_TTL) else {
            return;
        };
        while let Some(id) = take_due(&mut self.queue, before) {
            self.remove(id);
        }
    }

    /// The leases whose deadline has passed, marked expired and rescheduled for a retry of their
    /// revoke in case it fails.
    pub fn take_expired(&mut self, now: Instant) -> Vec<i64> {
        let mut expired = Vec::new();
        while let Some(id) = take_due(&mut self.queue, now) {
            let lease = self.leases.get_mut(&id).expect("queued lease exists");
            lease.expired = true;
            lease.deadline = now + REVOKE_RETRY;
            self.queue.insert((lease.deadline, id));
            expired.push(id);
        }
        expired
    }
}

/// The first lease of `queue` (by time, then id) if its time is at or before `now`, taken out.
fn take_due(queue: &mut BTreeSet<(Instant, i64)>, now: Instant) -> Option<i64> {
    let &(at, id) = queue.first()?;
    (at <= now).then(|| {
        queue.pop_first();
        id
    })
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

/// The TTL etcd grants for a requested one: at least the minimum.
pub fn granted_ttl(requested: i64) -> i64 {
    requested.max(MIN_LEASE_TTL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_follows_deadlines_and_renewals() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let mut l = Lessor::default();
        l.grant(7, 10, t);
        l.grant(9, 5, t);
        assert_eq!(l.next_deadline(), Some(t + s(5)));
        assert_eq!(l.take_expired(t + s(4)), Vec::<i64>::new());
        // Kept alive at 4: due at 9, before 7 (due at 10).
        assert_eq!(l.renew(9, t + s(4)), Some(5));
        assert_eq!(l.time_to_live(9, t + s(4)), Some((5, 5)));
        assert_eq!(l.take_expired(t + s(9)), vec![9]);
        // Expired: no keep-alive brings it back, and its revoke is retried later.
        assert_eq!(l.renew(9, t + s(9)), None);
        assert_eq!(l.take_expired(t + s(10)), vec![7]);
        assert_eq!(l.take_expired(t + s(12)), vec![9]);
        assert_eq!(l.ids(), vec![7, 9]);
        let lease = l.remove(9).unwrap();
        assert!(!l.contains(9));
        l.restore(9, lease);
        assert!(l.contains(9));
        l.remove(7);
        l.remove(9);
        assert_eq!(l.next_deadline(), None);
    }

    #[test]
    fn checkpoints_record_what_is_left_of_long_leases() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let mut l = Lessor::default();
        l.grant(7, 600, t);
        l.grant(8, 200, t);
        l.checkpoint_every(s(300), t);
        // Only 7 has more left than an interval.
        assert_eq!(l.next_checkpoint(), Some(t + s(300)));
        assert_eq!(l.due_checkpoints(t + s(299)), []);
        let due = l.due_checkpoints(t + Duration::from_millis(300_500));
        assert_eq!(due, [(7, 300)]);
        l.checkpointed(&due, true, t + s(300));
        // 300 s left is not more than an interval: no further checkpoint.
        assert_eq!(l.next_checkpoint(), None);
        // A keep-alive clears the record once, and schedules the next checkpoint.
        assert_eq!(l.renew(7, t + s(310)), Some(600));
        assert!(l.clear_recorded(7));
        assert!(!l.clear_recorded(7));
        assert_eq!(l.next_checkpoint(), Some(t + s(610)));
        // A lease resumed from its record has what it recorded left.
        l.resume(9, 600, 120, t);
        assert_eq!(l.time_to_live(9, t), Some((600, 120)));
        assert!(l.clear_recorded(9));
        l.remove(7);
        assert_eq!(l.next_checkpoint(), None);
    }

    /// A shared backend's lessor forgets a lease not seen for its TTL and a minute more; seeing it
    /// again (a renewal) keeps it.
    #[test]
    fn leases_not_seen_lately_are_forgotten() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let mut l = Lessor::default();
        l.grant(7, 10, t);
        l.grant(9, 10, t);
        assert_eq!(l.renew(9, t + s(5)), Some(10));
        l.forget_unseen(t + s(9) + REMEMBERED_PAST_TTL);
        assert!(l.contains(7), "within its TTL and a minute");
        l.forget_unseen(t + s(10) + REMEMBERED_PAST_TTL);
        assert!(!l.contains(7));
        assert!(l.contains(9));
        assert_eq!(l.next_deadline(), Some(t + s(15)));
    }

    #[test]
    fn granted_ttl_has_a_floor() {
        assert_eq!(granted_ttl(1), 2);
        assert_eq!(granted_ttl(-5), 2);
        assert_eq!(granted_ttl(60), 60);
    }
}
