//! palisade: Kubernetes NetworkPolicy enforcement in eBPF.
//!
//! Data flows one way: cluster state ([`cluster`]) -> compiler ([`policy`])
//! -> kernel maps ([`datapath`]); kernel -> ring buffer -> [`events`] ->
//! the log, the local [`api`] and [`metrics`]. [`run`] drives it and
//! publishes what is in force as [`state`]; [`health`] serves metrics and
//! readiness over HTTP; [`ui`] serves the browser view.

pub mod advise;
pub mod api;
pub mod cluster;
pub mod datapath;
pub mod events;
pub mod flows;
pub mod health;
pub mod lint;
pub mod metrics;
pub mod policy;
pub mod remote;
pub mod run;
pub mod state;
pub mod trace;
pub mod ui;
