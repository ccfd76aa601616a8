//! The policy gate every transport passes a request through before a
//! sandbox starts: the environment exists, the libraries asked for are
//! allowed, the code imports nothing the environment does not allow.

use crate::{check_imports, Violation};
use kiln_policy::{normalize, Config, Environment};
use std::collections::BTreeMap;

/// One environment of the policy, ready to judge requests.
#[derive(Debug, Clone, Copy)]
pub struct Gate<'a> {
    pub name: &'a str,
    pub env: &'a Environment,
}

/// An environment's wheelhouse libraries, installed in a tree a sandbox
/// can mount.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WheelhouseTree {
    /// The tree's directory name under `<data_dir>/libraries`.
    pub name: String,
    /// What it holds (normalised name → version).
    pub pins: BTreeMap<String, String>,
}

/// A library asked for and allowed, at its pinned version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    pub name: String,
    pub version: String,
}

impl<'a> Gate<'a> {
    /// The environment `name` (the default one when `None`); the error is
    /// the reason a request is `rejected`.
    pub fn new(config: &'a Config, name: Option<&str>) -> Result<Self, String> {
        let wanted = name.unwrap_or(kiln_policy::DEFAULT_ENVIRONMENT);
        match config.environments.get_key_value(wanted) {
            Some((name, env)) => Ok(Self { name, env }),
            None => Err(config
                .environment(Some(wanted))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()),
        }
    }

    /// `libraries=[...]` of a request: each must be an allowed library of
    /// the environment, as `name` or `name==<the pinned version>`, and be
    /// either in the runtime (normalised name → version) or in the
    /// environment's wheelhouse tree, which the sandbox then gets (returned).
    pub fn libraries(
        &self,
        requested: &[String],
        runtime: &BTreeMap<String, String>,
        wheelhouse: Option<&WheelhouseTree>,
    ) -> Result<Option<String>, String> {
        let mut tree = None;
        for lib in self.allowed_libraries(requested)? {
            let key = normalize(&lib.name);
            if runtime.get(&key) == Some(&lib.version) {
                continue;
            }
            match wheelhouse {
                Some(w) if w.pins.get(&key) == Some(&lib.version) => tree = Some(w.name.clone()),
                Some(w) => {
                    return Err(format!(
                        "library {}=={} is allowed but neither the runtime nor the environment's wheelhouse has it{}; Hint: `kiln env lock --environment {}` then `kiln env wheelhouse --environment {}`",
                        lib.name,
                        lib.version,
                        w.pins.get(&key).map(|v| format!(" (the wheelhouse has {v})")).unwrap_or_default(),
                        self.name,
                        self.name,
                    ))
                }
                None => {
                    return Err(format!(
                        "library {}=={} is allowed but not installed in this runtime, and the environment `{}` has no wheelhouse; Hint: `kiln env lock --environment {}` then `kiln env wheelhouse --environment {}`",
                        lib.name, lib.version, self.name, self.name, self.name,
                    ))
                }
            }
        }
        Ok(tree)
    }

    /// The libraries asked for, each checked against the allowlist only.
    pub fn allowed_libraries(&self, requested: &[String]) -> Result<Vec<Pinned>, String> {
        let allowed: BTreeMap<String, (&String, &kiln_policy::Library)> = self
            .env
            .libraries
            .iter()
            .map(|(name, lib)| (normalize(name), (name, lib)))
            .collect();
        let mut pinned: Vec<Pinned> = Vec::new();
        for spec in requested {
            let (name, version) = match spec.split_once("==") {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (spec.trim(), None),
            };
            let Some((canonical, lib)) = allowed.get(&normalize(name)) else {
                return Err(format!(
                    "library {name:?} is not allowed in the environment `{}`; allowed: {}",
                    self.name,
                    self.allowed()
                ));
            };
            if let Some(v) = version.filter(|v| *v != lib.version()) {
                return Err(format!(
                    "library {name}=={v} is not allowed: the environment `{}` pins {canonical}=={}",
                    self.name,
                    lib.version()
                ));
            }
            if !pinned.iter().any(|p| &p.name == *canonical) {
                pinned.push(Pinned {
                    name: canonical.to_string(),
                    version: lib.version().to_string(),
                });
            }
        }
        pinned.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pinned)
    }

    /// The static import check; the error names the first violation with
    /// its line and column.
    pub fn code(&self, code: &str) -> Result<(), String> {
        let violations: Vec<Violation> = check_imports(code, self.env, self.name);
        match violations.split_first() {
            None => Ok(()),
            Some((first, [])) => Err(format!("import check: {first}")),
            Some((first, rest)) => Err(format!(
                "import check: {first} (and {} more: {})",
                rest.len(),
                rest.iter()
                    .map(|v| format!("`{}` at line {}", v.module, v.line))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// What the runner's import hook refuses in this environment.
    pub fn deny_imports(&self) -> BTreeMap<String, String> {
        self.env.deny_modules.clone()
    }

    /// The environment whose egress proxy a sandbox of this gate reaches:
    /// its own name when it has an `egress` table, none otherwise.
    pub fn egress(&self) -> Option<String> {
        self.env.egress.as_ref().map(|_| self.name.to_string())
    }

    fn allowed(&self) -> String {
        let list = self.env.allowed_list();
        if list.is_empty() {
            "none".into()
        } else {
            list.join(", ")
        }
    }
}
