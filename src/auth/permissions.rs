//! A user's key permissions, merged over its roles: which keys and ranges it may read and write.
//!
//! A permission names a key (`range_end` empty), a range `[key, range_end)`, or every key from `key`
//! on (`range_end` = "\0"). A request for one key is allowed if some permission holds that key; a
//! request for a range only if the user's permissions together cover all of it, without a gap. For
//! example, with READ on `[a, c)` and on `[c, e)`, a read of `[b, d)` is allowed, and a read of
//! `[b, f)` is not.

use crate::proto::authpb::permission::Type;
use crate::proto::authpb::Role;
use bytes::Bytes;

/// Where a key interval ends: before a key, or after every key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Before(Bytes),
    Never,
}

/// `[begin, end)`.
type Interval = (Bytes, End);

/// The read and write intervals of one user, each sorted by where it begins.
#[derive(Clone, Debug, Default)]
pub struct Permissions {
    read: Vec<Interval>,
    write: Vec<Interval>,
}

/// The interval a permission (or request) names: `range_end` empty is the key alone, "\0" is
/// everything from the key on.
fn interval(key: &[u8], range_end: &[u8]) -> Interval {
    let end = match range_end {
        [] => {
            let mut after = key.to_vec();
            after.push(0);
            End::Before(after.into())
        }
        [0] => End::Never,
        end => End::Before(Bytes::copy_from_slice(end)),
    };
    (Bytes::copy_from_slice(key), end)
}

/// Whether a permission's range is one etcd accepts: a key, and an end after it (or "\0").
pub fn is_valid_range(key: &[u8], range_end: &[u8]) -> bool {
    !key.is_empty() && (range_end.is_empty() || range_end == [0] || key < range_end)
}

impl Permissions {
    /// The permissions of a user who has `roles`.
    pub fn merge<'a>(roles: impl IntoIterator<Item = &'a Role>) -> Permissions {
        let mut merged = Permissions::default();
        for permission in roles.into_iter().flat_map(|r| &r.key_permission) {
            let interval = interval(&permission.key, &permission.range_end);
            let (read, write) = match Type::try_from(permission.perm_type) {
                Ok(Type::Read) => (true, false),
                Ok(Type::Write) => (false, true),
                Ok(Type::Readwrite) => (true, true),
                Err(_) => (false, false),
            };
            if read {
                merged.read.push(interval.clone());
            }
            if write {
                merged.write.push(interval);
            }
        }
        merged.read.sort();
        merged.write.sort();
        merged
    }

    pub fn may_read(&self, key: &[u8], range_end: &[u8]) -> bool {
        allows(&self.read, key, range_end)
    }

    pub fn may_write(&self, key: &[u8], range_end: &[u8]) -> bool {
        allows(&self.write, key, range_end)
    }
}

fn allows(intervals: &[Interval], key: &[u8], range_end: &[u8]) -> bool {
    if range_end.is_empty() {
        return intervals.iter().any(|(begin, end)| {
            begin.as_ref() <= key
                && match end {
                    End::Before(end) => key < end.as_ref(),
                    End::Never => true,
                }
        });
    }
    let (begin, end) = interval(key, range_end);
    // Walk the intervals in order of their beginnings, extending how far from `begin` on the keys
    // are covered; a gap ends the walk.
    let mut covered = End::Before(begin);
    for (from, to) in intervals {
        if End::Before(from.clone()) > covered {
            break;
        }
        if *to > covered {
            covered = to.clone();
        }
        if covered >= end {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::authpb::Permission;

    fn role(perms: &[(Type, &str, &str)]) -> Role {
        Role {
            name: Bytes::from_static(b"r"),
            key_permission: perms
                .iter()
                .map(|(t, key, end)| Permission {
                    perm_type: *t as i32,
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    range_end: Bytes::copy_from_slice(end.as_bytes()),
                })
                .collect(),
        }
    }

    #[test]
    fn a_key_permission_allows_that_key_only() {
        let p = Permissions::merge([&role(&[(Type::Read, "foo", "")])]);
        assert!(p.may_read(b"foo", b""));
        assert!(!p.may_read(b"foo0", b""));
        assert!(!p.may_read(b"fo", b""));
        assert!(!p.may_write(b"foo", b""));
        // A range of just that key is covered too.
        assert!(p.may_read(b"foo", b"foo\0"));
        assert!(!p.may_read(b"foo", b"fop"));
    }

    #[test]
    fn ranges_must_be_covered_without_a_gap() {
        let r = role(&[(Type::Readwrite, "a", "c"), (Type::Read, "c", "e")]);
        let p = Permissions::merge([&r]);
        assert!(p.may_read(b"b", b"d"));
        assert!(p.may_read(b"a", b"e"));
        assert!(!p.may_read(b"b", b"f"));
        assert!(!p.may_read(b"0", b"b"));
        assert!(p.may_write(b"a", b"c"));
        assert!(!p.may_write(b"b", b"d"));
        let gap = role(&[(Type::Read, "a", "b"), (Type::Read, "c", "d")]);
        assert!(!Permissions::merge([&gap]).may_read(b"a", b"d"));
    }

    #[test]
    fn open_ended_ranges_reach_every_later_key() {
        let p = Permissions::merge([&role(&[(Type::Write, "k", "\0")])]);
        assert!(p.may_write(b"zzz", b""));
        assert!(p.may_write(b"k", b"\0"));
        assert!(!p.may_write(b"a", b"\0"));
        let bounded = Permissions::merge([&role(&[(Type::Write, "k", "z")])]);
        assert!(!bounded.may_write(b"k", b"\0"));
    }

    #[test]
    fn roles_add_up() {
        let one = role(&[(Type::Read, "a", "b")]);
        let two = role(&[(Type::Read, "b", "c")]);
        assert!(Permissions::merge([&one, &two]).may_read(b"a", b"c"));
        assert!(!Permissions::merge([&one]).may_read(b"a", b"c"));
    }

    #[test]
    fn valid_permission_ranges() {
        assert!(is_valid_range(b"a", b""));
        assert!(is_valid_range(b"a", b"b"));
        assert!(is_valid_range(b"a", b"\0"));
        assert!(!is_valid_range(b"", b"b"));
        assert!(!is_valid_range(b"b", b"a"));
        assert!(!is_valid_range(b"a", b"a"));
    }
}
