//! Static checks of user code, before any sandbox starts.
//!
//! [`check_imports`] parses the code with ruff's Python parser and compares
//! every `import` / `from … import` statement — at any depth: in functions,
//! classes, `if`, `try` — with the environment's policy. A module the policy
//! denies, or one that is neither standard library nor an allowed library,
//! makes the request `rejected` with its line and column.
//!
//! This is a speed bump, not a wall: `__import__("sub" + "process")`,
//! `importlib` or `exec` of decoded text pass it by design. It exists to give
//! a model an early, precise "no" it can act on; the sandbox (no network,
//! seccomp, no host files) is what holds when code gets past it, and the
//! runner's import hook repeats the same check when the code runs.
#![forbid(unsafe_code)]

mod gate;
mod magics;
mod stdlib;

pub use gate::{Gate, Pinned, WheelhouseTree};

use kiln_policy::{Environment, ImportVerdict};
use ruff_python_ast::visitor::{walk_stmt, Visitor};
use ruff_python_ast::{Stmt, StmtImport, StmtImportFrom};
use ruff_text_size::{Ranged, TextSize};
use serde::Serialize;

/// One import the policy does not allow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The module as imported (`subprocess`, `urllib.request`, `requests`).
    pub module: String,
    /// 1-based line and column of the imported name in the code as sent.
    pub line: u32,
    pub column: u32,
    /// Why, in the policy's words.
    pub reason: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}, column {}: import of `{}` is not allowed: {}",
            self.line, self.column, self.module, self.reason
        )
    }
}

/// Is `top` (a top-level module name) part of Python 3.11's standard library?
pub fn is_stdlib(top: &str) -> bool {
    stdlib::STDLIB_3_11.binary_search(&top).is_ok()
}

/// Every import in `code` that `env` does not allow, in source order.
///
/// Code that does not parse passes: the runner reports the `SyntaxError`
/// and runs nothing. IPython-style lines (`%time …`, `!ls`) are read the way
/// the runner rewrites them, so `%time import subprocess` is caught too.
pub fn check_imports(code: &str, env: &Environment, env_name: &str) -> Vec<Violation> {
    let Some(source) = magics::rewrite(code) else {
        return Vec::new(); // a cell magic the runner refuses: nothing runs
    };
    let Ok(parsed) = ruff_python_parser::parse_module(&source.text) else {
        return Vec::new();
    };
    let mut finder = ImportFinder {
        imports: Vec::new(),
    };
    for stmt in &parsed.syntax().body {
        finder.visit_stmt(stmt);
    }
    let allowed = env.allowed_list().join(", ");
    let lines = LineIndex::new(&source.text);
    let mut refused: Option<String> = None;
    finder
        .imports
        .into_iter()
        .filter_map(|(module, offset)| {
            // `from requests import get`: one violation, not two.
            if let Some(parent) = &refused {
                if module.starts_with(parent.as_str())
                    && module.as_bytes().get(parent.len()) == Some(&b'.')
                {
                    return None;
                }
            }
            let reason = match env.verdict(&module, is_stdlib) {
                ImportVerdict::Allowed => return None,
                ImportVerdict::Denied { module, reason } => {
                    if reason.is_empty() {
                        format!("the environment `{env_name}` denies `{module}`")
                    } else {
                        format!("the environment `{env_name}` denies `{module}` ({reason})")
                    }
                }
                ImportVerdict::NotAllowed { module } => format!(
                    "`{module}` is not an allowed library of the environment `{env_name}`; allowed: {}",
                    if allowed.is_empty() { "none" } else { &allowed }
                ),
            };
            refused = Some(module.clone());
            let (line, column) = lines.position(offset);
            Some(Violation {
                module,
                line,
                column: column + source.shift(line),
                reason,
            })
        })
        .collect()
}

/// Collects (absolute module, offset of its name) for every import.
struct ImportFinder {
    imports: Vec<(String, TextSize)>,
}

impl<'a> Visitor<'a> for ImportFinder {
    fn visit_stmt(&mut self, stmt: &'a Stmt) {
        match stmt {
            Stmt::Import(StmtImport { names, .. }) => {
                for alias in names {
                    self.imports
                        .push((alias.name.id.to_string(), alias.name.start()));
                }
            }
            // `from . import x` names the user's own package: there is none,
            // and Python refuses it at run time.
            Stmt::ImportFrom(StmtImportFrom {
                module: Some(module),
                names,
                level: 0,
                ..
            }) => {
                self.imports.push((module.id.to_string(), module.start()));
                // `from urllib import request` imports `urllib.request`.
                for alias in names {
                    if alias.name.id.as_str() != "*" {
                        self.imports.push((
                            format!("{}.{}", module.id, alias.name.id),
                            alias.name.start(),
                        ));
                    }
                }
            }
            _ => {}
        }
        walk_stmt(self, stmt);
    }
}

/// Byte offset → 1-based (line, column in characters).
struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { text, starts }
    }

    fn position(&self, offset: TextSize) -> (u32, u32) {
        let offset = usize::from(offset).min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset) - 1;
        let column = self.text[self.starts[line]..offset].chars().count();
        (line as u32 + 1, column as u32 + 1)
    }
}

#[cfg(test)]
mod tests;
