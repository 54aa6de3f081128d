//! The integration tests: one binary, real servers on loopback ports.

mod auth;
mod bench;
mod client;
mod differential;
mod durability;
mod election;
mod etcd_flags;
mod etcdctl;
mod frontends;
mod fuzz;
mod gateway;
mod health;
mod hostile;
mod http;
mod kubernetes;
mod lease;
mod linearizability;
mod lock;
mod maintenance;
mod migrate;
mod monitoring;
mod requests;
mod snapshot;
mod support;
mod tls;
mod watch;
