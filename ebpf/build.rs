//! Linker flags for the classifier. bpf-linker expands memcpy "in order"
//! by default, for JITs of old kernels that pattern-matched copies; in
//! that mode LLVM turns every memset and memcmp into a call to a byte loop.
//! Plain expansion (what clang does) makes zeroing a key a few word stores.
fn main() {
    println!("cargo:rustc-link-arg-bins=--disable-expand-memcpy-in-order");
}
