//! The runner's rewriting of IPython-style lines, mirrored so the static
//! check reads the code the runner will actually run (kiln_runner.py,
//! `_transform_magics`): a line whose first non-blank character is `%` or
//! `!` becomes nothing (or `pass` when indented), except `%time STMT` and
//! `%timeit [-n N -r R] STMT`, which become `STMT`; a `%%` cell magic other
//! than `%%time`, `%%timeit` and `%%capture` means the cell is not run.

use std::collections::BTreeMap;

/// The code as the runner will run it.
pub(crate) struct Source {
    pub text: String,
    /// 1-based line → how many characters were cut before its statement.
    shifts: BTreeMap<u32, u32>,
}

impl Source {
    pub fn shift(&self, line: u32) -> u32 {
        self.shifts.get(&line).copied().unwrap_or(0)
    }
}

const CELL_MAGICS_RUN: [&str; 3] = ["time", "timeit", "capture"];

/// `None` when the runner would not run the code at all.
pub(crate) fn rewrite(code: &str) -> Option<Source> {
    let mut shifts = BTreeMap::new();
    let mut lines = Vec::new();
    for (index, line) in code.split('\n').enumerate() {
        let indent_len = line.len() - line.trim_start_matches([' ', '\t']).len();
        let (indent, rest) = line.split_at(indent_len);
        let Some(sigil) = rest.chars().next().filter(|c| matches!(c, '%' | '!')) else {
            lines.push(line.to_string());
            continue;
        };
        let body = &rest[1..];
        let nothing = if indent.is_empty() { "" } else { "pass" };
        if sigil == '%' && body.starts_with('%') {
            let name = body[1..].split_whitespace().next().unwrap_or("");
            if !CELL_MAGICS_RUN.contains(&name) {
                return None;
            }
            lines.push(format!("{indent}{nothing}"));
            continue;
        }
        let body = body.trim();
        let name = body.split_whitespace().next().unwrap_or("");
        let statement = match (sigil, name) {
            ('%', "time") => Some(body[name.len()..].trim()),
            ('%', "timeit") => Some(skip_timeit_options(body[name.len()..].trim())),
            _ => None,
        };
        // An installer line (`%pip install`) is replaced by a note, like `!`.
        match statement {
            Some(stmt) if !stmt.is_empty() => {
                // `stmt` is a slice of `rest`: its offset is where it starts.
                let offset = stmt.as_ptr() as usize - rest.as_ptr() as usize;
                let cut = rest[..offset].chars().count();
                shifts.insert(index as u32 + 1, cut as u32);
                lines.push(format!("{indent}{stmt}"));
            }
            _ => lines.push(format!("{indent}{nothing}")),
        }
    }
    Some(Source {
        text: lines.join("\n"),
        shifts,
    })
}

/// `-n 10 -r 3 stmt` → `stmt` (the runner's `_TIMEIT_OPTIONS`:
/// `^(?:-[a-zA-Z]+(?:\s+\d+)?\s+)*`).
fn skip_timeit_options(mut s: &str) -> &str {
    loop {
        let Some(after) = s.strip_prefix('-') else {
            return s;
        };
        let flag_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        if flag_len == 0 {
            return s;
        }
        let mut rest = &after[flag_len..];
        let trimmed = rest.trim_start();
        let digits = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        if digits > 0 && trimmed.len() < rest.len() {
            rest = &trimmed[digits..];
        }
        let next = rest.trim_start();
        if next.len() == rest.len() {
            return s; // an option must be followed by whitespace
        }
        s = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_rewritten_like_the_runner_does() {
        let s = rewrite("%matplotlib inline\nimport numpy\n!pip install x\nif 1:\n    %time import os\n%timeit -n 3 -r 2 f()").unwrap();
        assert_eq!(s.text, "\nimport numpy\n\nif 1:\n    import os\nf()");
        assert_eq!(s.shift(5), 6);
        assert_eq!(s.shift(6), 18);
        assert!(rewrite("%%bash\nls").is_none());
        assert_eq!(rewrite("%%time\nimport os").unwrap().text, "\nimport os");
        assert_eq!(skip_timeit_options("-q x"), "x");
        assert_eq!(skip_timeit_options("-x"), "-x");
    }
}
