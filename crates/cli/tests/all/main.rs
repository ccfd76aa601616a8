//! kiln's integration tests: every one runs real sandboxes through the real
//! `kiln` binary on the real kernel. One test binary (as wasmtime does) so
//! the build is linked once.
//!
//! They need root, the kernel features `kiln doctor` lists, and the runtime
//! (`kiln env setup`, which `.ci/run` performs first).

mod agents;
mod bad_input;
mod bench;
mod containers;
mod containment;
mod egress;
mod execution;
mod files;
mod http;
mod playground;
mod policy;
mod probe;
mod serve;
mod sessions;
mod support;
mod zygote;
