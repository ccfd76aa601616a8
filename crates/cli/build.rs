//! Builds `libkiln_zygote.so` (crates/zygote) and embeds it into the `kiln`
//! binary, so kiln stays one file: at start it writes the library where the
//! zygote template can load it.
//!
//! A nested `cargo build` with its own target directory (no lock contention
//! with the outer build) and the outer build's profile.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let zygote = manifest_dir.join("../zygote");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let target_dir = out.join("zygote-target");
    let release = env::var("PROFILE").as_deref() == Ok("release");
    for dir in [
        "../zygote/src",
        "../native/src",
        "../native/seccomp",
        "../policy/src",
        "../core/src",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            manifest_dir.join(dir).display()
        );
    }
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(zygote.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .arg("--lib");
    if release {
        cmd.arg("--release");
    }
    if env::var_os("CARGO_NET_OFFLINE").is_some() {
        cmd.arg("--offline");
    }
    // The outer build's wrappers (clippy, coverage) and flags are not ours.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo to build the zygote library");
    assert!(status.success(), "building libkiln_zygote.so failed");
    let built = target_dir
        .join(if release { "release" } else { "debug" })
        .join("libkiln_zygote.so");
    let dest = out.join("libkiln_zygote.so");
    std::fs::copy(&built, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
}
