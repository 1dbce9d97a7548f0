//! Edgeconf: a configuration agent for edge fleets.
//!
//! Layers, from the bottom up (see `docs/design.md`):
//! - [`config`]: the TOML bootstrap file and flags;
//! - [`store`]: MVCC key-value state on redb;
//! - [`consensus`]: orders writes and applies them to the store;
//! - [`api`]: the etcd v3 gRPC API and the Edgeconf service;
//! - [`cli`]: the `edgeconf` command line, a client of the API.

pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod consensus;
pub mod store;
