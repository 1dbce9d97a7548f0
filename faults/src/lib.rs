//! Edgeconf's fault suite, the parts that need no agent: a recorder of
//! concurrent operations on registers ([`history`]) and a checker that
//! decides whether such a history is linearizable ([`linearizable`]).
//!
//! The suite that drives real agents through faults lives beside the
//! integration tests (`tests/fault_suite/`); it records with [`history::Recorder`]
//! and judges with [`linearizable::check`].

pub mod history;
pub mod linearizable;

pub use history::{History, Op, Outcome, Recorder};
pub use linearizable::{check, Verdict};
