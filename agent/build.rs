//! Builds the eBPF classifier (crate `palisade-ebpf`) with the nightly
//! toolchain and bpf-linker; the agent embeds the object. `AYA_BUILD_SKIP=1`
//! skips it so `cargo check` and `cargo clippy` stay cheap.
use std::path::Path;

fn main() -> aya_build::Result<()> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest).join("../ebpf");
    let root_dir = ebpf_dir.to_str().unwrap_or("../ebpf");
    aya_build::build_ebpf(
        [aya_build::Package { name: "palisade-ebpf", root_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
