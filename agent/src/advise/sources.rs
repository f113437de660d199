//! Where `advise` gets flow records and cluster state from. Records: the
//! local agent (the `flows` request on its socket) and files exported with
//! `palisade flows -o json` on other nodes, and every node's agent
//! ([`crate::remote::nodes`], `kubectl palisade advise`): the same
//! [`Snapshot`]s, merged the same way. Cluster state: a manifest directory
//! or the Kubernetes API.

use crate::api::{self, Request};
use crate::cluster::{self, files};
use crate::flows::Snapshot;
use crate::policy::Input;
use crate::remote::nodes::Nodes;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The running agent's record.
pub async fn local(socket: &Path) -> Result<Snapshot> {
    let mut lines = api::request(socket, &Request::Flows).await?;
    let line = lines.next_line().await?.context("the agent closed the connection")?;
    serde_json::from_str(&line).context("the agent's flow record does not parse (is it an older agent?)")
}

/// Records exported with `palisade flows -o json`.
pub fn file(path: &Path) -> Result<Snapshot> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{}: not a flow record", path.display()))
}

/// Every record asked for: the files, and the local agent when there are
/// no files or `with_agent`.
pub async fn records(files: &[PathBuf], with_agent: bool, socket: &Path) -> Result<Vec<Snapshot>> {
    let mut out = files.iter().map(|f| file(f)).collect::<Result<Vec<_>>>()?;
    if files.is_empty() || with_agent {
        out.push(local(socket).await?);
    }
    Ok(out)
}

/// The files, and every node's record from its agent; the nodes whose
/// agent gave none, and why.
pub async fn nodes(files: &[PathBuf], agents: &Nodes) -> Result<(Vec<Snapshot>, Vec<(String, String)>)> {
    let mut out = files.iter().map(|f| file(f)).collect::<Result<Vec<_>>>()?;
    let (records, missing) = agents.flows().await;
    out.extend(records);
    Ok((out, missing))
}

/// The cluster state: the manifests in `dir`, else the Kubernetes API.
/// Problems with single objects are warnings (they are reported, as the
/// agent reports them).
pub async fn cluster_state(dir: Option<&Path>) -> Result<Input> {
    let snap = match dir {
        Some(d) => files::FileSource::new(d).load(),
        None => {
            let wake: cluster::Wake = std::sync::Arc::new(|| {});
            let mut source = cluster::Source::start(None, files::Options::default(), wake)
                .await
                .context("reading the cluster state from the Kubernetes API (or give --cluster-state DIR)")?;
            source.load()
        }
    };
    for e in &snap.errors {
        eprintln!("warning: {e}");
    }
    Ok(snap.input)
}
