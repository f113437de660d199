//! Builds the eBPF classifier (crate `palisade-ebpf`) with the nightly
//! toolchain and bpf-linker; the agent embeds the object. `AYA_BUILD_SKIP=1`
//! skips it (an empty placeholder is embedded) so `cargo check`, `clippy`
//! and the pure unit tests stay cheap.
use std::path::Path;

fn main() -> aya_build::Result<()> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest).join("../ebpf");
    let root_dir = ebpf_dir.to_str().unwrap_or("../ebpf");
    let object = Path::new(&std::env::var("OUT_DIR")?).join("palisade-classifier");
    if std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) && !object.exists() {
        std::fs::write(&object, [])?;
    }
    aya_build::build_ebpf(
        [aya_build::Package { name: "palisade-ebpf", root_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
