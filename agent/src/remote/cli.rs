//! The `kubectl-palisade` plugin's commands: the palisade binary run under
//! that name (a symlink or copy on PATH; kubectl runs `kubectl-<name>` for
//! `kubectl <name>`), so the plugin and the agent share one build.

use super::Target;
use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::time::{Duration, Instant};

/// The executable name kubectl looks for.
pub const PLUGIN_NAME: &str = "kubectl-palisade";

/// Whether this process was started as the kubectl plugin.
pub fn invoked_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| std::path::Path::new(&a).file_name().map(|n| n == PLUGIN_NAME))
        .unwrap_or(false)
}

#[derive(Parser)]
#[command(
    name = PLUGIN_NAME,
    bin_name = "kubectl palisade",
    version,
    about = "palisade on every node, through the Kubernetes API (pods/portforward to each agent's loopback)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Every node's agent: in sync, applied at, version, input errors,
    /// pods enforced, events lost; nodes without an agent, or whose agent
    /// does not answer or is stale, flagged.
    Status(StatusArgs),
    /// One time-ordered stream of verdicts from every node's agent.
    Observe(ObserveArgs),
    /// Would a connection be allowed, and why: egress asked of the source
    /// pod's agent, ingress of the destination's, each checked in its
    /// node's kernel.
    Trace(TraceArgs),
    /// Least-privilege NetworkPolicies from every node's flow record.
    Advise(ClusterAdviseArgs),
    /// The browser view on this machine, fed by every node's agent.
    Ui(UiArgs),
}

#[derive(Args)]
pub struct ClusterAdviseArgs {
    #[command(flatten)]
    pub advise: crate::advise::cli::AdviseArgs,
    #[command(flatten)]
    pub agents: AgentsArgs,
}

#[derive(Args)]
pub struct UiArgs {
    /// Where to serve the page (loopback unless --allow-remote).
    #[arg(long, default_value = crate::ui::DEFAULT_ADDR)]
    pub addr: std::net::SocketAddr,
    /// Serve the page on a non-loopback address too.
    #[arg(long)]
    pub allow_remote: bool,
    /// Cluster state from the manifests in this directory instead of the
    /// Kubernetes API.
    #[arg(long)]
    pub cluster_state: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub agents: AgentsArgs,
}

/// Which agents: the agent pods (the Kubernetes API), or given sockets.
#[derive(Args)]
pub struct AgentsArgs {
    /// NODE=PATH: that node's agent at this unix socket instead of through
    /// the Kubernetes API (repeatable; on a node, or in tests).
    #[arg(long, hide = true, value_parser = parse_socket)]
    pub agent_socket: Vec<(String, std::path::PathBuf)>,
    #[command(flatten)]
    pub target: Target,
}

fn parse_socket(s: &str) -> Result<(String, std::path::PathBuf), String> {
    let (node, path) = s.split_once('=').ok_or("expected NODE=PATH")?;
    Ok((node.to_string(), path.into()))
}

impl AgentsArgs {
    pub async fn nodes(&self) -> Result<super::nodes::Nodes> {
        use super::nodes::{NodeAgent, Nodes, Socket};
        if !self.agent_socket.is_empty() {
            let each = self.agent_socket.iter().map(|(node, path)| NodeAgent {
                node: node.clone(),
                connect: std::sync::Arc::new(Socket(path.clone())),
            });
            return Ok(Nodes(each.collect()));
        }
        let client = self.target.client().await?;
        Ok(Nodes::of(super::agents(&client, &self.target).await?))
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Args)]
pub struct StatusArgs {
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Wait until every node's agent answers in sync, then print.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "60s")]
    pub timeout: humantime::Duration,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args)]
pub struct ObserveArgs {
    #[command(flatten)]
    pub filter: crate::api::ObserveOptions,
    /// Only the agents of these nodes (repeatable).
    #[arg(long)]
    pub node: Vec<String>,
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Print the running count of merged events every 100 ms instead of
    /// the events (for benchmarks).
    #[arg(long, hide = true)]
    pub count: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args)]
pub struct TraceArgs {
    /// Source: namespace/pod or an IP address.
    #[arg(long)]
    pub from: crate::trace::EndpointRef,
    /// Destination: namespace/pod or an IP address.
    #[arg(long)]
    pub to: crate::trace::EndpointRef,
    /// Destination port.
    #[arg(long)]
    pub port: u16,
    /// TCP, UDP or SCTP.
    #[arg(long, default_value = "TCP")]
    pub protocol: crate::policy::model::Protocol,
    /// Use the pods' IPv6 addresses.
    #[arg(long)]
    pub ipv6: bool,
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(flatten)]
    pub target: Target,
}

/// Runs the plugin with the process's arguments.
pub async fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Status(a) => status(a).await,
        Cmd::Observe(a) => {
            let print = match (a.count, a.output) {
                (true, _) => super::observe::Print::Count,
                (_, Output::Json) => super::observe::Print::Json,
                (_, Output::Text) => super::observe::Print::Text,
            };
            let client = a.target.client().await?;
            super::observe::run(client, a.target, a.filter.request(), a.node, print).await
        }
        Cmd::Advise(a) => crate::advise::cli::advise_cluster(a.advise, &a.agents.nodes().await?).await,
        Cmd::Ui(a) => {
            let nodes = a.agents.nodes().await?;
            crate::ui::serve_cluster(a.addr, nodes, a.cluster_state, a.allow_remote).await
        }
        Cmd::Trace(a) => {
            let client = a.target.client().await?;
            let query =
                crate::trace::Query { from: a.from, to: a.to, port: a.port, protocol: a.protocol, ipv6: a.ipv6 };
            let t = super::trace::trace(&client, &a.target, &query).await?;
            match a.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&t)?),
                Output::Text => {
                    println!("egress judged on node {}, ingress on node {}\n", t.egress_node, t.ingress_node);
                    print!("{}", t.trace);
                }
            }
            Ok(())
        }
    }
}

async fn status(a: StatusArgs) -> Result<()> {
    let client = a.target.client().await?;
    let deadline = Instant::now() + Duration::from(a.timeout);
    let rows = loop {
        let rows = super::status::gather(&client, &a.target).await?;
        if !a.wait || super::status::all_well(&rows) {
            break rows;
        }
        if Instant::now() >= deadline {
            super::status::print(&rows);
            anyhow::bail!("not every node's agent is in sync after {}", a.timeout);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "nodes": rows }))?),
        Output::Text => super::status::print(&rows),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_commands_are_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
