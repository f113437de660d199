//! Times loading and compiling a directory of manifests (for profiling):
//! `cargo run --release --example compile_scale -- DIR [NODE]`. It loads
//! through the agent's file source, whose load is part of what it times.
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: compile_scale DIR [NODE]");
    let node = args.next().unwrap_or_else(|| "vm".into());
    let mut source = palisade::cluster::files::FileSource::new(&dir);
    let t = Instant::now();
    let snap = source.load();
    // Times what the agent does with the directory, so anything it would
    // report makes the figures meaningless.
    if !snap.errors.is_empty() {
        snap.errors.iter().for_each(|e| eprintln!("{e}"));
        std::process::exit(1);
    }
    println!("cold load: {:?} ({} pods, {} policies)", t.elapsed(), snap.input.pods.len(), snap.input.policies.len());
    let t = Instant::now();
    let _ = source.load();
    println!("warm load: {:?}", t.elapsed());
    let node = palisade::policy::Node { name: node, host_ips: vec![], allow_host: true, audit: false };
    let n: usize = std::env::var("ITER").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    for _ in 0..n {
        let t = Instant::now();
        let c = palisade::policy::compile(&snap.input, &node);
        println!("compile: {:?} ({} ip entries, {} policy entries)", t.elapsed(), c.ips.len(), c.policy.len());
    }
}
