//! `[environments.<name>.egress]`: the domains an environment's sandboxes
//! may reach through kiln's egress proxy (`docs/egress.md`).
//!
//! Off unless the table is present. The weaker test-only settings
//! (`resolve`, `allow_private`) must be written out; kiln logs a warning
//! when it starts a proxy with `allow_private`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

/// One environment's egress allowlist and the proxy's bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    /// Host names (`api.example.com`), wildcards for subdomains
    /// (`*.example.org`: any name below it, not the apex) or literal IP
    /// addresses (`203.0.113.7`: raw IPs are refused unless listed).
    pub allow: Vec<String>,
    /// kiln's resolver configuration: names answered from this map instead
    /// of the host's resolver (tests map a name to 127.0.0.1 with it).
    #[serde(default)]
    pub resolve: BTreeMap<String, IpAddr>,
    /// Test only: let allowed names reach private, loopback, link-local and
    /// CGNAT addresses. Cloud-metadata addresses stay refused. Logged as a
    /// warning when the proxy starts.
    #[serde(default)]
    pub allow_private: bool,
    /// Where each allowed and refused connection is appended as a JSON line
    /// (also logged through tracing). None: tracing only.
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    /// Seconds to connect to the destination.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_s: u64,
    /// Seconds without a byte either way before a connection is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_s: u64,
    /// Connections one sandbox may hold open at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

fn default_connect_timeout() -> u64 {
    10
}
fn default_idle_timeout() -> u64 {
    60
}
fn default_max_connections() -> u32 {
    16
}

/// A checked entry of `allow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowEntry {
    /// This name exactly.
    Exact(String),
    /// Any name ending in `.<suffix>` (not the suffix itself).
    Subdomains(String),
    /// This address, written literally.
    Ip(IpAddr),
}

impl AllowEntry {
    pub fn parse(entry: &str) -> Result<Self, String> {
        if let Ok(ip) = entry.parse::<IpAddr>() {
            return Ok(AllowEntry::Ip(ip));
        }
        if let Some(suffix) = entry.strip_prefix("*.") {
            return check_domain(suffix)
                .map(|()| AllowEntry::Subdomains(suffix.to_ascii_lowercase()))
                .map_err(|why| format!("wildcard {entry:?}: {why}"));
        }
        if entry.contains('*') {
            return Err(format!(
                "{entry:?}: a wildcard is only allowed as a whole first label (`*.example.org`)"
            ));
        }
        check_domain(entry)
            .map(|()| AllowEntry::Exact(entry.to_ascii_lowercase()))
            .map_err(|why| format!("{entry:?}: {why}"))
    }

    /// Does `host` (already normalized by [`normalize_host`]) match?
    pub fn matches(&self, host: &str) -> bool {
        match self {
            AllowEntry::Exact(name) => host == name,
            AllowEntry::Subdomains(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            AllowEntry::Ip(ip) => host.parse::<IpAddr>().is_ok_and(|h| h == *ip),
        }
    }
}

/// Lower case, one trailing dot removed, IPv6 brackets removed.
pub fn normalize_host(host: &str) -> String {
    let h = host.strip_suffix('.').unwrap_or(host);
    let h = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h);
    h.to_ascii_lowercase()
}

/// A DNS name: 1-253 characters, labels of 1-63 of `[A-Za-z0-9-]` (and
/// `_`), not starting or ending with `-`, at least two labels.
pub fn check_domain(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err("a domain name has 1-253 characters".into());
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return Err("a domain name needs at least two labels (`example.com`)".into());
    }
    for label in labels {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(format!(
                "label {label:?} is not 1-63 of [A-Za-z0-9-_] (no leading or trailing '-')"
            ));
        }
    }
    Ok(())
}

impl Egress {
    /// The parsed `allow` entries (validated by [`Egress::validate`]).
    pub fn entries(&self) -> Vec<AllowEntry> {
        self.allow
            .iter()
            .filter_map(|e| AllowEntry::parse(e).ok())
            .collect()
    }

    /// Is `host` on the list?
    pub fn allows(&self, host: &str) -> bool {
        let host = normalize_host(host);
        self.entries().iter().any(|e| e.matches(&host))
    }

    /// What is wrong with this table, if anything.
    pub fn validate(&self) -> Result<(), String> {
        if self.allow.is_empty() {
            return Err("egress.allow is empty; Hint: remove the egress table to keep the network off, or name the domains".into());
        }
        for entry in &self.allow {
            AllowEntry::parse(entry).map_err(|why| format!("egress.allow: {why}"))?;
        }
        for name in self.resolve.keys() {
            check_domain(name).map_err(|why| format!("egress.resolve: {name:?}: {why}"))?;
        }
        if let Some(path) = &self.audit_log {
            if !path.is_absolute() {
                return Err(format!(
                    "egress.audit_log {} must be an absolute path",
                    path.display()
                ));
            }
        }
        let bounded = |name: &str, v: u64, max: u64| {
            if v == 0 || v > max {
                Err(format!("egress.{name} = {v} must be 1..={max}"))
            } else {
                Ok(())
            }
        };
        bounded("connect_timeout_s", self.connect_timeout_s, 300)?;
        bounded("idle_timeout_s", self.idle_timeout_s, 3600)?;
        bounded("max_connections", u64::from(self.max_connections), 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(allow: &[&str]) -> Egress {
        toml::from_str(&format!(
            "allow = [{}]",
            allow
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(",")
        ))
        .unwrap()
    }

    #[test]
    fn exact_names_match_case_insensitively_and_only_themselves() {
        let e = egress(&["api.example.com"]);
        assert!(e.allows("api.example.com"));
        assert!(e.allows("API.Example.COM."));
        assert!(!e.allows("example.com"));
        assert!(!e.allows("x.api.example.com"));
        assert!(!e.allows("api.example.com.evil.net"));
        assert!(!e.allows("evilapi.example.com"));
    }

    #[test]
    fn wildcards_match_subdomains_not_the_apex() {
        let e = egress(&["*.example.org"]);
        assert!(e.allows("a.example.org"));
        assert!(e.allows("a.b.example.org"));
        assert!(!e.allows("example.org"));
        assert!(!e.allows("badexample.org"));
        assert!(!e.allows(".example.org"));
    }

    #[test]
    fn raw_ips_only_when_listed() {
        let e = egress(&["example.com", "203.0.113.7", "2001:db8::1"]);
        assert!(!e.allows("203.0.113.8"));
        assert!(e.allows("203.0.113.7"));
        assert!(e.allows("[2001:db8::1]"));
        assert!(!e.allows("127.0.0.1"));
    }

    #[test]
    fn bad_entries_are_named() {
        for (bad, needle) in [
            ("ex*ample.com", "wildcard"),
            ("*", "wildcard"),
            ("*.com.", "label"),
            ("localhost", "two labels"),
            ("-a.example.com", "label"),
            ("a b.com", "label"),
        ] {
            let why = egress(&[bad]).validate().unwrap_err();
            assert!(why.contains(needle), "{bad}: {why}");
        }
        assert!(egress(&[]).validate().unwrap_err().contains("empty"));
        assert!(egress(&["example.com", "*.example.org"]).validate().is_ok());
    }

    #[test]
    fn unknown_keys_are_rejected_and_defaults_are_bounded() {
        let err = toml::from_str::<Egress>("allow = [\"a.com\"]\nallow_privat = true")
            .unwrap_err()
            .to_string();
        assert!(err.contains("allow_privat"), "{err}");
        let e: Egress = toml::from_str("allow = [\"a.com\"]").unwrap();
        assert!(!e.allow_private && e.resolve.is_empty() && e.audit_log.is_none());
        assert_eq!(
            (e.connect_timeout_s, e.idle_timeout_s, e.max_connections),
            (10, 60, 16)
        );
        let mut e2 = e.clone();
        e2.max_connections = 0;
        assert!(e2.validate().is_err());
        let mut e3 = e;
        e3.audit_log = Some("rel/audit.jsonl".into());
        assert!(e3.validate().is_err());
    }
}
