//! `palisade flows` and `palisade advise`: arguments, sources, printing.

use super::sources;
use crate::api;
use crate::flows::{Remote, Snapshot, rfc3339_ms};
use anyhow::Result;
use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FlowsOutput {
    Text,
    Json,
}

#[derive(Args)]
pub struct FlowsArgs {
    /// json: the whole record, as `advise --flows` reads it back.
    #[arg(short, long, value_enum, default_value_t = FlowsOutput::Text)]
    pub output: FlowsOutput,
    #[arg(long, env = "PALISADE_SOCKET", default_value = api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

pub async fn flows(a: FlowsArgs) -> Result<()> {
    let snap = sources::local(&a.socket).await?;
    match a.output {
        FlowsOutput::Json => println!("{}", serde_json::to_string_pretty(&snap)?),
        FlowsOutput::Text => print_flows(&snap),
    }
    Ok(())
}

/// How a flow's peer reads in a table.
pub fn peer_text(p: &Remote) -> String {
    match p {
        Remote::Pod { namespace, workload } => format!("{namespace}/{workload}"),
        Remote::Node { ip } => format!("node {ip}"),
        Remote::External { ip } => format!("external {ip}"),
    }
}

fn print_flows(s: &Snapshot) {
    println!(
        "node {}  observing since {}  {} of {} keys  evicted {}  expired {}  missed events {}",
        s.node,
        rfc3339_ms(s.observing_since_ms),
        s.flows.len(),
        s.capacity,
        s.evicted,
        s.expired,
        s.missed_events
    );
    println!();
    println!(
        "{:<36} {:<8} {:<36} {:<7} {:<14} {:<8} {:>8} LAST SEEN",
        "WORKLOAD", "DIR", "PEER", "PROTO", "PORT", "VERDICT", "COUNT"
    );
    for f in &s.flows {
        let k = &f.key;
        let port = match (k.port, &k.port_name) {
            (Some(p), Some(n)) => format!("{p} ({n})"),
            (Some(p), None) => p.to_string(),
            _ => "-".into(),
        };
        println!(
            "{:<36} {:<8} {:<36} {:<7} {:<14} {:<8} {:>8} {}",
            format!("{}/{}", k.namespace, k.workload),
            k.direction.to_string(),
            peer_text(&k.peer),
            k.protocol,
            port,
            serde_json::to_value(k.verdict).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            f.stats.count,
            rfc3339_ms(f.stats.last_seen_ms)
        );
    }
}
