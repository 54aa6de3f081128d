//! The lessor: every live lease with its TTL and deadline, and the expiry queue ordered by deadline.
//!
//! Which keys a lease holds is the index's to know ([`Index::lease_keys`](super::index::Index)); a
//! lease's revoke, by a client or by expiry, deletes them through the writer in one revision.
//!
//! Leases are durable in the backend with their granted TTL. After a restart every lease starts a
//! full TTL again, as etcd renews every lease when a new leader takes over: a lease that was kept
//! alive is never expired by a restart, and one that was abandoned expires one TTL after it.
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
/// How long an expired lease waits before its revoke is tried again, if the first try failed.
const REVOKE_RETRY: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug)]
pub struct Lease {
    /// Granted TTL in seconds.
    pub ttl: i64,
    deadline: Instant,
    /// Expired and waiting for its revoke: it can no longer be kept alive.
    expired: bool,
}

#[derive(Default)]
pub struct Lessor {
    leases: HashMap<i64, Lease>,
    queue: BTreeSet<(Instant, i64)>,
}

impl Lessor {
    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Starts a lease (already durable) whose deadline is one TTL from `now`; a lease already
    /// there starts afresh.
    pub fn grant(&mut self, id: i64, ttl: i64, now: Instant) {
        let deadline = now + ttl_duration(ttl);
        let lease = Lease {
            ttl,
            deadline,
            expired: false,
        };
        if let Some(old) = self.leases.insert(id, lease) {
            self.queue.remove(&(old.deadline, id));
        }
        self.queue.insert((deadline, id));
    }

    /// Puts back a lease taken by [`Lessor::remove`] whose revoke did not happen.
    pub fn restore(&mut self, id: i64, lease: Lease) {
        self.queue.insert((lease.deadline, id));
        self.leases.insert(id, lease);
    }

    /// Renews a lease for another TTL from `now`; None if it does not exist or has expired.
    pub fn renew(&mut self, id: i64, now: Instant) -> Option<i64> {
        let lease = self.leases.get_mut(&id).filter(|l| !l.expired)?;
        self.queue.remove(&(lease.deadline, id));
        lease.deadline = now + ttl_duration(lease.ttl);
        self.queue.insert((lease.deadline, id));
        Some(lease.ttl)
    }

    pub fn remove(&mut self, id: i64) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        self.queue.remove(&(lease.deadline, id));
        Some(lease)
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

    /// The leases whose deadline has passed, marked expired and rescheduled for a retry of their
    /// revoke in case it fails.
    pub fn take_expired(&mut self, now: Instant) -> Vec<i64> {
        let mut expired = Vec::new();
        while let Some(&(deadline, id)) = self.queue.first() {
            if deadline > now {
                break;
            }
            self.queue.pop_first();
            let lease = self.leases.get_mut(&id).expect("queued lease exists");
            lease.expired = true;
            lease.deadline = now + REVOKE_RETRY;
            self.queue.insert((lease.deadline, id));
            expired.push(id);
        }
        expired
    }
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
    fn granted_ttl_has_a_floor() {
        assert_eq!(granted_ttl(1), 2);
        assert_eq!(granted_ttl(-5), 2);
        assert_eq!(granted_ttl(60), 60);
    }
}
