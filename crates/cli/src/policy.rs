//! `kiln policy check`: validates a kiln.toml and shows what it allows.

use anyhow::Result;
use kiln_policy::Config;
use std::path::Path;
use std::process::ExitCode;

/// `println!` into a String.
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

/// Prints each environment (libraries and where they come from, denied
/// modules) and the limits. Loading already rejected an invalid file.
pub fn check(config: &Config, source: Option<&Path>) -> Result<ExitCode> {
    let mut out = String::new();
    let runtime = crate::config::preinstalled();
    let mut warnings = Vec::new();
    match source {
        Some(p) => outln!(out, "{}: valid", p.display()),
        None => outln!(out, "(no kiln.toml found: kiln's built-in policy): valid"),
    }
    for (name, env) in &config.environments {
        outln!(out, "\nenvironment `{name}`: {}", env.description);
        let lock = crate::config::lock_path(config, name)?;
        let locked: std::collections::BTreeMap<String, String> = std::fs::read_to_string(&lock)
            .ok()
            .and_then(|text| kiln_env::wheelhouse::parse_lock(&text).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.name, p.version))
            .collect();
        outln!(out, "  libraries:");
        for (lib, spec) in &env.libraries {
            let key = kiln_policy::normalize(lib);
            let from = if runtime.get(&key).map(String::as_str) == Some(spec.version()) {
                "runtime".to_string()
            } else if locked.get(&key).map(String::as_str) == Some(spec.version()) {
                format!("wheelhouse ({})", lock.display())
            } else {
                warnings.push(format!(
                    "environment `{name}`: {lib}=={} is allowed but neither the runtime nor a wheelhouse lock has it; Hint: `kiln env lock --environment {name}`",
                    spec.version()
                ));
                "MISSING".to_string()
            };
            let reason = spec.reason().map(|r| format!(" — {r}")).unwrap_or_default();
            outln!(out, "    {lib}=={} [{from}]{reason}", spec.version());
        }
        match &env.egress {
            None => outln!(out, "  network: none"),
            Some(e) => {
                outln!(out, "  network: egress proxy to {}", e.allow.join(", "));
                if e.allow_private {
                    outln!(out, "    allow_private = true (test only: private and loopback destinations reachable)");
                }
                for (name, ip) in &e.resolve {
                    outln!(out, "    resolve {name} -> {ip} (kiln's resolver map)");
                }
            }
        }
        outln!(out, "  denied modules:");
        for (module, reason) in &env.deny_modules {
            outln!(out, "    {module}: {reason}");
        }
    }
    outln!(
        out,
        "\nlimits:   {}",
        serde_json::to_string(&config.limits)?
    );
    outln!(
        out,
        "ceilings: {}",
        serde_json::to_string(&config.ceilings)?
    );
    // A reader that stops early (`| head`) is not an error.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
    for w in &warnings {
        eprintln!("kiln: warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}
