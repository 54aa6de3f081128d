//! Strata: etcd's v3 API over an embedded store or PostgreSQL.
//!
//! Three layers (see DESIGN.md): [`api`] maps gRPC to calls on [`mvcc`], which holds etcd's semantics
//! over the narrow log interface of [`backend`]. [`concurrency`] runs etcd's lock and election
//! recipes over the store for the v3lock and v3election services; [`auth`] is etcd's users, roles
//! and permissions, which the api layer consults before each request; [`snapshot`] and [`migrate`]
//! move data in from etcd and out to it.

pub mod api;
pub mod auth;
pub mod backend;
pub mod compactor;
pub mod concurrency;
pub mod config;
pub mod duration;
pub mod error;
pub mod log_rotation;
pub mod metrics;
pub mod migrate;
pub mod mvcc;
pub mod proto;
pub mod snapshot;
pub mod tasks;
