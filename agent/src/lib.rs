//! Edgeconf: a configuration agent for edge fleets.
//!
//! Layers, from the bottom up (see `docs/design.md`):
//! - [`config`]: the TOML bootstrap file and flags;
//! - [`store`]: MVCC key-value state on redb;
//! - [`signing`] and [`auth`]: pure models of signed changes and of
//!   users, roles and permissions, used by the layers above;
//! - [`consensus`]: orders writes with raft and applies them to the store;
//! - [`transport`]: QUIC between members, mutual TLS with node keys;
//! - [`api`]: the etcd v3 gRPC API and the Edgeconf service;
//! - [`render`]: keys materialized into local files;
//! - [`upkeep`]: quota, auto-compaction and corruption alarms;
//! - [`cli`]: the `edgeconf` command line, a client of the API.

pub mod agent;
pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod consensus;
pub mod edge;
pub mod fault;
pub mod feed;
pub mod gossip;
pub mod metrics;
pub mod plugins;
pub mod private_files;
pub mod render;
pub mod rollout;
pub mod services;
pub mod signing;
pub mod store;
pub mod telemetry;
pub mod transport;
pub mod trust_root;
pub mod upkeep;
