//! The state lint reads, through the agent's own sources: a directory of
//! manifests (`cluster::files`, as `palisade run --cluster-state` reads
//! it) or the Kubernetes API (`cluster::kube`: one complete list of every
//! kind the agent watches).

use crate::cluster::Snapshot;
use crate::cluster::files::FileSource;
use crate::cluster::kube::KubeSource;
use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How long the first complete list from the API server may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn load(cluster_state: Option<&Path>) -> Result<Snapshot> {
    match cluster_state {
        Some(dir) => {
            std::fs::read_dir(dir).with_context(|| format!("--cluster-state {}", dir.display()))?;
            Ok(FileSource::new(dir).load())
        }
        None => {
            let start = KubeSource::start(Arc::new(|| {}), false);
            let mut source = tokio::time::timeout(LIST_TIMEOUT, start)
                .await
                .with_context(|| format!("no complete list from the Kubernetes API within {LIST_TIMEOUT:?}"))??;
            Ok(source.load())
        }
    }
}
