//! kiln's egress proxy (`docs/egress.md`).
//!
//! One proxy per policy environment with an `egress` table, run outside
//! every sandbox in a process the supervisor forks for them (with a
//! single-threaded tokio runtime). It listens on a unix socket that the
//! native backend binds into that environment's sandboxes; a forwarder in
//! the sandbox relays `127.0.0.1:<port>` to it. For each connection: read
//! one request head (CONNECT or absolute-URI HTTP), check the host against
//! the allowlist, resolve it with kiln's resolver, refuse addresses that
//! are not public (unless the test opt-in), connect, and for CONNECT check
//! the TLS server name equals the CONNECT host before relaying a byte.
//! Every verdict is audited.

#![forbid(unsafe_code)]

mod addr;
mod audit;
mod proxy;
mod request;
mod sni;

#[cfg(test)]
mod prop_tests;

pub use addr::AddrClass;
pub use audit::Record;
pub use proxy::{serve_forever, EgressProxy, SOCKET_NAME};
pub use request::{parse as parse_request, Kind, ProxyRequest};
pub use sni::{parse as parse_client_hello, Hello};
