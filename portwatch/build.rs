//! Builds the eBPF programs (portwatch-ebpf) for the BPF target and leaves the object in OUT_DIR,
//! where `attach` embeds it with `include_bytes_aligned!`.
use std::path::PathBuf;

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

/// The toolchain whose LLVM the installed bpf-linker can link (docs/architecture.md, build facts).
const EBPF_TOOLCHAIN: &str = "1.95.0";

fn main() -> anyhow::Result<()> {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir
        .parent()
        .context("portwatch/ has no parent directory")?
        .join("portwatch-ebpf");
    let root = root.to_str().context("non-UTF-8 path to portwatch-ebpf")?;
    println!("cargo:rerun-if-changed={}/../portwatch-common", root);
    aya_build::build_ebpf(
        [Package {
            name: "portwatch-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .context("building the eBPF programs failed; run `cargo xtask setup` to install bpf-linker and rust-src")
}
