//! Where the page's data comes from: the agent it runs in ([`Shared`]:
//! this node's record, events and state) or every node's agent
//! ([`super::cluster`], `kubectl palisade ui`). The page's views read only
//! this; the events come to [`super::flows::FlowMap`] separately.

use crate::flows::Snapshot;
use crate::state::{Applied, Shared};
use crate::trace::{Query, Trace};
use futures_util::future::BoxFuture;
use std::sync::Arc;

pub trait Source: Send + Sync {
    /// The cluster state to judge by (None until known).
    fn applied(&self) -> Option<Arc<Applied>>;
    /// How a pod is enforced, in words, by its node's agent.
    fn pod_state(&self, namespace: &str, name: &str) -> Option<String>;
    /// The flow record as of `now_ms`: this node's, or every node's merged.
    fn record(&self, now_ms: u64) -> Snapshot;
    fn trace<'a>(&'a self, q: &'a Query) -> BoxFuture<'a, Result<Trace, String>>;
}

impl Source for Shared {
    fn applied(&self) -> Option<Arc<Applied>> {
        self.applied.read().ok().and_then(|a| a.clone())
    }

    fn pod_state(&self, namespace: &str, name: &str) -> Option<String> {
        let applied = Source::applied(self)?;
        let e = applied.endpoints.iter().find(|e| e.namespace == namespace && e.name == name)?;
        Some(e.state.to_string())
    }

    fn record(&self, now_ms: u64) -> Snapshot {
        self.flows.snapshot(now_ms)
    }

    fn trace<'a>(&'a self, q: &'a Query) -> BoxFuture<'a, Result<Trace, String>> {
        Box::pin(std::future::ready(Shared::trace(self, q)))
    }
}
