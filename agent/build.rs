//! Builds the eBPF classifier (crate `palisade-ebpf`) with the nightly
//! toolchain and bpf-linker; the agent embeds the object. `AYA_BUILD_SKIP=1`
//! skips it (an empty placeholder is embedded) so `cargo check`, `clippy`
//! and the pure unit tests stay cheap.
use std::fs;
use std::path::{Path, PathBuf};

fn main() -> aya_build::Result<()> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest).join("../ebpf");
    let root_dir = ebpf_dir.to_str().unwrap_or("../ebpf");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let object = out.join("palisade-classifier");
    if std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        if !object.exists() {
            fs::write(&object, [])?;
        }
    } else {
        share_ebpf_build(&out)?;
    }
    aya_build::build_ebpf(
        [aya_build::Package { name: "palisade-ebpf", root_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}

/// Points aya-build's build directory (`OUT_DIR/aya-build`) at one shared
/// by every profile of this target directory. aya-build always builds the
/// classifier the same way (release, for the BPF target), but each profile
/// (dev, test, release, clippy's) has an `OUT_DIR` of its own, so each
/// built core and the classifier from nothing: about a minute apiece, five
/// times in CI. Cargo's lock on the shared directory serialises builds
/// that run at once; the object itself is still copied into this
/// `OUT_DIR`.
fn share_ebpf_build(out: &Path) -> std::io::Result<()> {
    // OUT_DIR is <target dir>/[<triple>/]<profile>/build/<package>-<hash>/out.
    let Some(shared) = out
        .ancestors()
        .find(|a| a.file_name() == Some("build".as_ref()))
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(|root| root.join("palisade-ebpf-build"))
    else {
        return Ok(());
    };
    fs::create_dir_all(&shared)?;
    let link = out.join("aya-build");
    match fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() && fs::read_link(&link)? == shared => return Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(&link)?,
        Ok(_) => fs::remove_file(&link)?,
        Err(_) => {}
    }
    std::os::unix::fs::symlink(&shared, &link)
}
