//! The backend quota and the alarms, as etcd has them: a request that would grow the store past
//! `--quota-backend-bytes` raises the NOSPACE alarm, and while it is raised every request that adds
//! data (a put, a txn with a put, a lease grant) is refused; reads, deletes and compactions go on, so
//! that an operator can free space, defragment and disarm the alarm.
//!
//! ```text
//! raised: { (member 0x6af7…, NOSPACE) }
//! ```

use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::{AlarmType, PutRequest, RequestOp, TxnRequest};
use std::collections::BTreeSet;

/// What etcd charges a lease grant against the quota.
pub const LEASE_GRANT_COST: u64 = 64;
/// What etcd charges a key-value beyond its key and value.
const KV_OVERHEAD: u64 = 256;

pub fn put_cost(p: &PutRequest) -> u64 {
    KV_OVERHEAD + p.key.len() as u64 + p.value.len() as u64
}

/// A txn costs the puts of its costlier branch, nested txns included; 0 if it puts nothing.
pub fn txn_cost(t: &TxnRequest) -> u64 {
    let branch = |ops: &[RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(Request::RequestPut(p)) => put_cost(p),
                Some(Request::RequestTxn(t)) => txn_cost(t),
                _ => 0,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure))
}

/// The alarms raised, as (member, alarm type).
#[derive(Default)]
pub struct Alarms {
    raised: BTreeSet<(u64, i32)>,
}

impl Alarms {
    pub fn from_records(records: Vec<(u64, i32)>) -> Alarms {
        Alarms {
            raised: records.into_iter().collect(),
        }
    }

    /// Raises an alarm; false if it was raised already.
    pub fn raise(&mut self, member: u64, alarm: AlarmType) -> bool {
        self.raised.insert((member, alarm as i32))
    }

    /// Disarms an alarm; false if it was not raised.
    pub fn disarm(&mut self, member: u64, alarm: AlarmType) -> bool {
        self.raised.remove(&(member, alarm as i32))
    }

    /// The alarms of one type, or every alarm for NONE.
    pub fn list(&self, alarm: AlarmType) -> Vec<(u64, i32)> {
        self.raised
            .iter()
            .filter(|(_, a)| alarm == AlarmType::None || *a == alarm as i32)
            .copied()
            .collect()
    }

    pub fn is_raised(&self, alarm: AlarmType) -> bool {
        self.raised.iter().any(|(_, a)| *a == alarm as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::RequestOp;

    fn put(key: &str, value: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.to_owned().into(),
                value: value.to_owned().into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn txn_costs_its_costlier_branch() {
        let t = TxnRequest {
            success: vec![put("a", "12")],
            failure: vec![put("b", ""), put("c", "")],
            ..Default::default()
        };
        assert_eq!(txn_cost(&t), 2 * 257);
        assert_eq!(txn_cost(&TxnRequest::default()), 0);
    }

    #[test]
    fn alarms_list_by_type() {
        let mut a = Alarms::default();
        assert!(a.raise(1, AlarmType::Nospace));
        assert!(!a.raise(1, AlarmType::Nospace));
        assert!(a.raise(2, AlarmType::Corrupt));
        assert_eq!(a.list(AlarmType::None).len(), 2);
        assert_eq!(a.list(AlarmType::Corrupt), vec![(2, 2)]);
        assert!(a.is_raised(AlarmType::Nospace));
        assert!(a.disarm(1, AlarmType::Nospace));
        assert!(!a.is_raised(AlarmType::Nospace));
    }
}
