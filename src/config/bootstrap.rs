//! What etcd derives at a member's first start from `--name`, `--initial-cluster`,
//! `--initial-advertise-peer-urls` and `--initial-cluster-token`: that this member is in the
//! initial cluster under the URLs it advertises, and the ids of the member and of the cluster,
//! which every response header carries. A new embedded store takes these ids, so a client sees the
//! numbers etcd would show for the same command line; a store keeps its ids for life, as etcd's
//! data directory does, and these flags are not read again.

/// A member's id and its cluster's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ids {
    pub member: u64,
    pub cluster: u64,
}

/// etcd's `--initial-cluster` when none is given.
const DEFAULT_INITIAL_CLUSTER: &str = "default=http://localhost:2380";

/// The initial cluster etcd starts with: `initial_cluster` as given, or, when it is not (or is
/// etcd's default while the member has another name), this member alone under the URLs it
/// advertises.
pub fn initial_cluster(name: &str, given: Option<&str>, advertised: &[String]) -> String {
    match given.filter(|c| !c.is_empty()) {
        Some(cluster) if cluster != DEFAULT_INITIAL_CLUSTER || name == "default" => {
            cluster.to_owned()
        }
        _ => advertised
            .iter()
            .map(|url| format!("{name}={url}"))
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// The ids of member `name` of `initial_cluster` (`name=url,…`, a name once for each of its URLs),
/// advertising `advertised`, bootstrapped with `token`; or etcd's reason to refuse the start.
pub fn ids(
    name: &str,
    initial_cluster: &str,
    advertised: &[String],
    token: &str,
) -> Result<Ids, String> {
    let mut members: Vec<(&str, Vec<&str>)> = Vec::new();
    for member in initial_cluster.split(',') {
        let (who, url) = member.split_once('=').unwrap_or((member, ""));
        let url = url.trim();
        match members.iter_mut().find(|(n, _)| *n == who) {
            Some((_, urls)) => urls.push(url),
            None => members.push((who, vec![url])),
        }
    }
    let Some((_, local)) = members.iter().find(|(n, _)| *n == name) else {
        return Err(format!(
            "couldn't find local name {name:?} in the initial cluster configuration"
        ));
    };
    advertise_matches_cluster(name, local, advertised)?;
    let mut member_ids: Vec<u64> = members
        .iter()
        .map(|(_, urls)| member_id(urls, token))
        .collect();
    let member = member_id(local, token);
    member_ids.sort_unstable();
    let bytes: Vec<u8> = member_ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    Ok(Ids {
        member,
        cluster: sha1_prefix(&bytes),
    })
}

/// etcd's member id: the first 8 bytes, big-endian, of SHA-1 over the member's peer URLs sorted
/// and joined with nothing between them, then the cluster token.
fn member_id(urls: &[&str], token: &str) -> u64 {
    let mut sorted = urls.to_vec();
    sorted.sort_unstable();
    sha1_prefix(format!("{}{token}", sorted.concat()).as_bytes())
}

fn sha1_prefix(bytes: &[u8]) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes);
    u64::from_be_bytes(digest.as_ref()[..8].try_into().expect("SHA-1 has 20 bytes"))
}

/// etcd's check that the URLs this member advertises are its URLs in the initial cluster (etcd
/// also resolves host names before it compares; here they are compared as written).
fn advertise_matches_cluster(
    name: &str,
    cluster: &[&str],
    advertised: &[String],
) -> Result<(), String> {
    let mut expected: Vec<&str> = cluster.to_vec();
    let mut given: Vec<&str> = advertised.iter().map(String::as_str).collect();
    expected.sort_unstable();
    given.sort_unstable();
    if expected == given {
        return Ok(());
    }
    let quoted = |urls: &[&str]| {
        let inner: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
        format!("[{}]", inner.join(" "))
    };
    let reason = if expected.len() == given.len() {
        let (a, b) = given
            .iter()
            .zip(&expected)
            .find(|(a, b)| a != b)
            .expect("sorted lists that differ differ somewhere");
        format!("resolved urls: {a:?} != {b:?}")
    } else {
        format!("len({}) != len({})", quoted(&given), quoted(&expected))
    };
    let missing: Vec<String> = expected
        .iter()
        .filter(|url| !given.contains(url))
        .map(|url| format!("{name}={url}"))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "--initial-cluster has {} but missing from --initial-advertise-peer-urls={} ({reason})",
            missing.join(","),
            given.join(",")
        ));
    }
    let extra: Vec<&str> = given
        .iter()
        .filter(|url| !expected.contains(url))
        .copied()
        .collect();
    let as_cluster: Vec<String> = given.iter().map(|url| format!("{name}={url}")).collect();
    Err(format!(
        "--initial-advertise-peer-urls has {} but missing from --initial-cluster={}",
        extra.join(","),
        as_cluster.join(",")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|u| (*u).to_owned()).collect()
    }

    /// Ids etcd 3.5.30 reported for these command lines (`etcdctl member list -w json`).
    #[test]
    fn ids_are_etcds() {
        let local = urls(&["http://localhost:2380"]);
        let cluster = initial_cluster("default", None, &local);
        assert_eq!(
            ids("default", &cluster, &local, "etcd-cluster"),
            Ok(Ids {
                member: 10276657743932975437,
                cluster: 14841639068965178418
            })
        );
        let local = urls(&["http://127.0.0.1:23801"]);
        let cluster = initial_cluster("node1", None, &local);
        let expected = Ids {
            member: 13668033151171901709,
            cluster: 15118495548433857066,
        };
        assert_eq!(ids("node1", &cluster, &local, "etcd-cluster"), Ok(expected));
        assert_eq!(
            ids(
                "default",
                "default=http://127.0.0.1:23801",
                &local,
                "etcd-cluster"
            ),
            Ok(expected),
            "the name is not part of the id"
        );
        assert_eq!(
            ids("default", "default=http://127.0.0.1:23801", &local, "tok1"),
            Ok(Ids {
                member: 6090535317558273548,
                cluster: 17765137548823575923
            })
        );
        let three = "a=http://127.0.0.1:23812,a=http://127.0.0.1:23811,\
                     b=http://127.0.0.1:23821,c=http://127.0.0.1:23831";
        let a = urls(&["http://127.0.0.1:23811", "http://127.0.0.1:23812"]);
        assert_eq!(
            ids("a", three, &a, "tok3"),
            Ok(Ids {
                member: 12541394176228397401,
                cluster: 9283363843948513144
            })
        );
    }

    #[test]
    fn a_member_outside_its_initial_cluster_is_refused_as_by_etcd() {
        let local = urls(&["http://localhost:2380"]);
        assert_eq!(
            ids("x", "y=http://localhost:2380", &local, "etcd-cluster"),
            Err("couldn't find local name \"x\" in the initial cluster configuration".into())
        );
        assert_eq!(
            ids(
                "x",
                "x=http://127.0.0.1:2390",
                &urls(&["http://127.0.0.1:2391"]),
                "etcd-cluster"
            ),
            Err(
                "--initial-cluster has x=http://127.0.0.1:2390 but missing from \
                 --initial-advertise-peer-urls=http://127.0.0.1:2391 (resolved urls: \
                 \"http://127.0.0.1:2391\" != \"http://127.0.0.1:2390\")"
                    .into()
            )
        );
        assert_eq!(
            ids(
                "x",
                "x=http://127.0.0.1:2390",
                &urls(&["http://127.0.0.1:2390", "http://127.0.0.1:2391"]),
                "etcd-cluster"
            ),
            Err(
                "--initial-advertise-peer-urls has http://127.0.0.1:2391 but missing from \
                 --initial-cluster=x=http://127.0.0.1:2390,x=http://127.0.0.1:2391"
                    .into()
            )
        );
    }
}
