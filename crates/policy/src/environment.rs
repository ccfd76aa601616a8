//! `[environments.<name>]`: what user code may import.
//!
//! An environment names the runtime it runs on, the third-party libraries
//! user code may use (each pinned to one version) and the standard-library
//! modules user code may not import. The static import check, the runner's
//! import hook, `libraries=[...]` on a request and the guardrail text all
//! read these tables, so what the model is told and what kiln enforces come
//! from one place.

use crate::PolicyError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The environment a request gets when it names none.
pub const DEFAULT_ENVIRONMENT: &str = "default";

/// kiln's built-in data-analysis environment, as a user would write it.
const BUILT_IN: &str = include_str!("default_environment.toml");

/// One named environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// One line for people and models: what this environment is for.
    #[serde(default)]
    pub description: String,
    /// The runtime tree it runs on (`kiln env setup` builds `default`).
    #[serde(default = "default_runtime")]
    pub runtime: String,
    /// Third-party libraries user code may import, by distribution name.
    #[serde(default)]
    pub libraries: BTreeMap<String, Library>,
    /// The wheelhouse lock of the libraries the runtime does not have
    /// (absolute; default `<data_dir>/wheelhouse/<name>.lock`, what
    /// `kiln env lock` writes).
    #[serde(default)]
    pub lock: Option<std::path::PathBuf>,
    /// Standard-library modules user code may not import (module → reason).
    /// A dotted name denies that submodule only (`urllib.request`); a plain
    /// name denies the module and all of its submodules.
    #[serde(default)]
    pub deny_modules: BTreeMap<String, String>,
    /// Domains reachable through kiln's egress proxy; none (the default):
    /// no network at all (`docs/egress.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<crate::Egress>,
}

fn default_runtime() -> String {
    "default".to_string()
}

/// An allowed library: `numpy = "1.26.4"` or a table with a reason and the
/// names it is imported by when they differ from the distribution name.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Library {
    Version(String),
    Detailed(LibraryDetail),
}

// By hand rather than `untagged`, so that a misspelt key in a library table
// is named in the error instead of "did not match any variant".
impl<'de> Deserialize<'de> for Library {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Library;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a version string or a table with `version`, `import`, `reason`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Library, E> {
                Ok(Library::Version(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Library, A::Error> {
                LibraryDetail::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(Library::Detailed)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibraryDetail {
    /// The exact version (`==`): a range is not a pin.
    pub version: String,
    /// Top-level import names (default: the distribution name with `-`
    /// turned into `_`, lower case).
    #[serde(default)]
    pub import: Vec<String>,
    /// Why it is allowed (shown by `kiln policy check`).
    #[serde(default)]
    pub reason: Option<String>,
}

impl Library {
    pub fn version(&self) -> &str {
        match self {
            Library::Version(v) => v,
            Library::Detailed(d) => &d.version,
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Library::Version(_) => None,
            Library::Detailed(d) => d.reason.as_deref(),
        }
    }

    /// The top-level module names this library is imported by.
    pub fn import_names(&self, distribution: &str) -> Vec<String> {
        match self {
            Library::Detailed(d) if !d.import.is_empty() => d.import.clone(),
            _ => vec![normalize(distribution).replace('-', "_")],
        }
    }
}

/// A distribution name as pip compares them (PEP 503, lower case, `-`).
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut last_sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !last_sep {
                out.push('-');
            }
            last_sep = true;
        } else {
            out.push(c.to_ascii_lowercase());
            last_sep = false;
        }
    }
    out
}

/// Why an import is refused, with the policy's own words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportVerdict {
    /// Standard library, or an allowed library.
    Allowed,
    /// A standard-library module the environment denies.
    Denied { module: String, reason: String },
    /// Neither standard library nor an allowed library.
    NotAllowed { module: String },
}

impl Environment {
    /// The built-in environments (`default`).
    pub fn built_in() -> BTreeMap<String, Environment> {
        toml::from_str::<BTreeMap<String, Environment>>(BUILT_IN)
            .expect("the built-in environment parses (tested)")
    }

    /// Every top-level import name of the allowed libraries → distribution.
    pub fn import_names(&self) -> BTreeMap<String, String> {
        let mut names = BTreeMap::new();
        for (dist, lib) in &self.libraries {
            for name in lib.import_names(dist) {
                names.insert(name, dist.clone());
            }
        }
        names
    }

    /// The denied module that `module` falls under, with its reason.
    pub fn denied(&self, module: &str) -> Option<(&str, &str)> {
        self.deny_modules
            .iter()
            .find(|(denied, _)| {
                module == denied.as_str()
                    || (module.starts_with(denied.as_str())
                        && module.as_bytes().get(denied.len()) == Some(&b'.'))
            })
            .map(|(denied, reason)| (denied.as_str(), reason.as_str()))
    }

    /// May user code import `module` (dotted, absolute)? `is_stdlib` tells
    /// whether a top-level name belongs to the standard library.
    pub fn verdict(&self, module: &str, is_stdlib: impl Fn(&str) -> bool) -> ImportVerdict {
        if let Some((denied, reason)) = self.denied(module) {
            return ImportVerdict::Denied {
                module: denied.to_string(),
                reason: reason.to_string(),
            };
        }
        let top = module.split('.').next().unwrap_or(module);
        if is_stdlib(top) || self.import_names().contains_key(top) {
            ImportVerdict::Allowed
        } else {
            ImportVerdict::NotAllowed {
                module: top.to_string(),
            }
        }
    }

    /// The allowed libraries as `name==version`, sorted.
    pub fn allowed_list(&self) -> Vec<String> {
        self.libraries
            .iter()
            .map(|(name, lib)| format!("{name}=={}", lib.version()))
            .collect()
    }

    /// Checks one environment; `name` is only for messages.
    pub fn validate(&self, name: &str) -> Result<(), PolicyError> {
        let bad = |reason: String| PolicyError::InvalidEnvironment {
            name: name.to_string(),
            reason,
        };
        if !is_plain_name(name) {
            return Err(bad(
                "an environment name must be 1-64 of [A-Za-z0-9_-]".into()
            ));
        }
        if !is_plain_name(&self.runtime) {
            return Err(bad(format!(
                "runtime {:?} must be 1-64 of [A-Za-z0-9_-]",
                self.runtime
            )));
        }
        let mut seen = BTreeMap::new();
        for (dist, lib) in &self.libraries {
            if dist.is_empty()
                || !dist
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(bad(format!(
                    "library name {dist:?} is not a valid distribution name"
                )));
            }
            if let Some(other) = seen.insert(normalize(dist), dist) {
                return Err(bad(format!(
                    "library {dist:?} is listed twice (also as {other:?})"
                )));
            }
            let version = lib.version();
            let pinned = !version.is_empty()
                && version.chars().next().is_some_and(|c| c.is_ascii_digit())
                && version
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '!'));
            if !pinned {
                return Err(bad(format!(
                    "library {dist}: version {version:?} is not an exact pin; Hint: write one version, e.g. \"1.26.4\""
                )));
            }
            for module in lib.import_names(dist) {
                if !is_identifier(&module) {
                    return Err(bad(format!(
                        "library {dist}: import name {module:?} is not a Python identifier"
                    )));
                }
                if self.denied(&module).is_some() {
                    return Err(bad(format!(
                        "library {dist} is allowed but its module {module} is denied"
                    )));
                }
            }
        }
        if let Some(egress) = &self.egress {
            egress.validate().map_err(bad)?;
        }
        if let Some(lock) = &self.lock {
            if !lock.is_absolute() {
                return Err(bad(format!(
                    "lock {} must be an absolute path",
                    lock.display()
                )));
            }
        }
        for module in self.deny_modules.keys() {
            if module.is_empty() || !module.split('.').all(is_identifier) {
                return Err(bad(format!(
                    "denied module {module:?} is not a dotted Python name"
                )));
            }
        }
        Ok(())
    }
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// An ASCII Python identifier (module names in policy are ASCII).
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
