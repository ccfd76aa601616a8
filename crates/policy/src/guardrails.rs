//! The guardrail text: what a model writing code for kiln should be told,
//! generated from the policy so that it never says more (or less) than the
//! sandbox enforces.
//!
//! One text serves everywhere: `kiln prompt` prints it, the tool
//! definitions of `kiln tools` and the MCP server carry it in their
//! descriptions. It is a pure function of the configuration: the
//! environment's allowed libraries and denied standard-library modules
//! (`[environments.<name>]`), the limits, sessions and datasets.

use crate::{Config, PolicyError};
use std::fmt::Write as _;

/// The guardrail text for environment `env` under `config`; an unknown
/// environment is the policy's error.
pub fn guardrails(config: &Config, env: &str) -> Result<String, PolicyError> {
    let environment = config.environment(Some(env))?;
    let l = &config.limits;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Python code runs in a kiln sandbox (environment `{env}`, CPython 3.11), isolated from the host and from other users."
    );
    if !environment.description.is_empty() {
        let _ = writeln!(
            s,
            "- Environment: {}.",
            environment.description.trim_end_matches('.')
        );
    }
    if environment.libraries.is_empty() {
        s.push_str("- Libraries: only the Python standard library may be imported.\n");
    } else {
        let list: Vec<String> = environment
            .libraries
            .iter()
            .map(|(name, lib)| format!("{name} {}", lib.version()))
            .collect();
        let _ = writeln!(
            s,
            "- Libraries: the Python standard library and only these packages (pinned): {}. Importing anything else fails.",
            list.join(", ")
        );
    }
    if !environment.deny_modules.is_empty() {
        let denied: Vec<&str> = environment
            .deny_modules
            .keys()
            .map(String::as_str)
            .collect();
        let _ = writeln!(
            s,
            "- These standard-library modules may not be imported: {}.",
            denied.join(", ")
        );
    }
    s.push_str("- Nothing can be installed: no pip, no conda, no shell commands.\n");
    match &environment.egress {
        None => s.push_str("- No network: sockets, HTTP and DNS fail. Do not download data; use the files you are given.\n"),
        Some(egress) => {
            let _ = writeln!(
                s,
                "- Network: only HTTP and HTTPS to these hosts, through the proxy already set in HTTP_PROXY/HTTPS_PROXY (urllib and similar clients use it): {}. Every other host, raw IP addresses and private addresses are refused; every connection is logged.",
                egress.allow.join(", ")
            );
        }
    }
    let _ = writeln!(
        s,
        "- Files: the working directory is /work (writable, {} MiB); uploaded files are there. Save outputs (charts, CSV, ...) under /work/out: they are returned. /tmp is scratch ({} MiB). The rest of the file system is read-only.",
        l.disk_mib, l.tmp_mib
    );
    if !config.sandbox.datasets.is_empty() {
        let names: Vec<String> = config
            .sandbox
            .datasets
            .keys()
            .map(|n| format!("/data/{n}"))
            .collect();
        let _ = writeln!(
            s,
            "- Datasets (read-only, when a session asks for them): {}.",
            names.join(", ")
        );
    }
    s.push_str("- Charts: matplotlib figures are returned as PNG images (call plt.show() or leave them open); the value of a last bare expression is displayed, like in a notebook.\n");
    let _ = writeln!(
        s,
        "- Limits per execution: {} wall time (then KeyboardInterrupt, killed {} later), {} of CPU, {} MiB of memory, {} processes/threads, {} of stdout and of stderr kept, {} KiB of code.",
        seconds(l.wall_ms),
        seconds(l.grace_ms),
        seconds(l.cpu_ms),
        l.memory_mib,
        l.pids,
        bytes(l.output_bytes),
        l.code_bytes / 1024
    );
    let _ = writeln!(
        s,
        "- Sessions keep variables, imports and files between executions; a session idle for {} is closed. Without a session each execution starts from nothing.",
        seconds(config.sessions.idle_timeout_s * 1000)
    );
    Ok(s)
}

fn seconds(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        let s = ms / 1000;
        if s >= 120 && s.is_multiple_of(60) {
            format!("{} min", s / 60)
        } else {
            format!("{s} s")
        }
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn bytes(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_follows_the_policy() {
        let mut config = Config::default();
        config.limits.wall_ms = 12_000;
        config.limits.memory_mib = 321;
        config.limits.output_bytes = 2 << 20;
        let text = guardrails(&config, "default").unwrap();
        assert!(text.contains("environment `default`"), "{text}");
        assert!(text.contains("numpy 1.26.4"), "{text}");
        assert!(text.contains("pandas 1.5.3"), "{text}");
        assert!(
            text.contains("subprocess"),
            "denied modules are named: {text}"
        );
        assert!(text.contains("No network"), "{text}");
        assert!(text.contains("/work/out"), "{text}");
        assert!(text.contains("12 s wall time"), "{text}");
        assert!(text.contains("321 MiB of memory"), "{text}");
        assert!(text.contains("2 MiB of stdout"), "{text}");
        assert!(!text.contains("/data/"), "no datasets configured: {text}");

        // Another environment: its own libraries and denials, nothing else.
        let mut config: Config = toml::from_str(
            "[limits]\nwall_ms = 1500\n[environments.bare]\n[environments.bare.deny_modules]\nsocket = \"no network\"\n",
        )
        .unwrap();
        config
            .sandbox
            .datasets
            .insert("sales".into(), "/srv/sales".into());
        let text = guardrails(&config, "bare").unwrap();
        assert!(text.contains("1.5 s wall time"), "{text}");
        assert!(text.contains("only the Python standard library"), "{text}");
        assert!(!text.contains("numpy"), "{text}");
        assert!(text.contains("may not be imported: socket."), "{text}");
        assert!(text.contains("/data/sales"), "{text}");
        assert!(guardrails(&config, "nope").is_err());
    }

    #[test]
    fn an_egress_environment_names_its_hosts_instead_of_no_network() {
        let config: Config = toml::from_str(
            "[environments.web.egress]\nallow = [\"api.example.com\", \"*.example.org\"]\n",
        )
        .unwrap();
        let text = guardrails(&config, "web").unwrap();
        assert!(!text.contains("No network"), "{text}");
        assert!(
            text.contains("only HTTP and HTTPS to these hosts, through the proxy already set in HTTP_PROXY/HTTPS_PROXY (urllib and similar clients use it): api.example.com, *.example.org."),
            "{text}"
        );
        assert!(guardrails(&config, "default")
            .unwrap()
            .contains("No network"));
    }

    #[test]
    fn units_read_naturally() {
        assert_eq!(seconds(30_000), "30 s");
        assert_eq!(seconds(600_000), "10 min");
        assert_eq!(seconds(90_000), "90 s");
        assert_eq!(bytes(1 << 20), "1 MiB");
        assert_eq!(bytes(65_536), "64 KiB");
        assert_eq!(bytes(1000), "1000 bytes");
    }
}
