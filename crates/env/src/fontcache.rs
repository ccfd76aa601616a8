//! matplotlib's font cache, built once at setup.
//!
//! On a read-only root matplotlib rebuilds (and warns about) its font cache on every run
//! unless `MPLCONFIGDIR` already holds `fontlist-v*.json`. The tree's own interpreter
//! builds it here; host paths are then rewritten to in-sandbox paths, and fonts that live
//! outside the tree (found through the host's fontconfig) are dropped because the
//! sandbox cannot see them.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{EnvError, Result};
use crate::fsutil::{mkdir_p, write_atomic};
use crate::layout::{in_tree, MPL_CACHE, SITE_PACKAGES};
use crate::treepython;

/// Builds the cache with the tree's interpreter and installs it into `opt/kiln/mpl`.
/// Returns the file name written (`fontlist-v330.json` for matplotlib 3.8).
pub fn build(root: &Path) -> Result<String> {
    let scratch = tempfile::Builder::new()
        .prefix("kiln-mplconfig-")
        .tempdir()
        .map_err(EnvError::io(
            "create temporary directory in",
            std::env::temp_dir(),
        ))?;
    let site = in_tree(root, SITE_PACKAGES);
    let script = format!(
        "import site; site.addsitedir({}); import matplotlib.font_manager",
        py_str(&site.to_string_lossy())
    );
    let mut cmd = treepython::command(root);
    cmd.env("MPLCONFIGDIR", scratch.path())
        .env("MPLBACKEND", "Agg")
        .args(["-c", &script]);
    treepython::run("building matplotlib's font cache", &mut cmd)?;

    let (name, src) = find_fontlist(scratch.path())?;
    let text = std::fs::read_to_string(&src).map_err(EnvError::io("read", &src))?;
    let rewritten = rewrite(&text, root).map_err(|e| EnvError::StepFailed {
        step: "rewriting matplotlib's font cache",
        detail: format!("{}: {e}", src.display()),
    })?;
    let dir = in_tree(root, MPL_CACHE);
    mkdir_p(&dir)?;
    write_atomic(&dir.join(&name), rewritten.as_bytes(), 0o644)?;
    Ok(name)
}

/// The single `fontlist-v*.json` matplotlib wrote into `dir`.
fn find_fontlist(dir: &Path) -> Result<(String, PathBuf)> {
    for entry in std::fs::read_dir(dir).map_err(EnvError::io("read directory", dir))? {
        let entry = entry.map_err(EnvError::io("read directory", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("fontlist-v") && name.ends_with(".json") {
            return Ok((name, entry.path()));
        }
    }
    Err(EnvError::StepFailed {
        step: "building matplotlib's font cache",
        detail: format!(
            "matplotlib wrote no fontlist-v*.json into {}",
            dir.display()
        ),
    })
}

/// Rewrites the cache json: every string below `root` becomes the in-sandbox path (the
/// tree root becomes `/`), and font entries with an absolute `fname` outside the tree are
/// removed. Relative `fname`s (matplotlib's own fonts, relative to its data path) stay.
pub fn rewrite(json: &str, root: &Path) -> Result<String, serde_json::Error> {
    let mut v: Value = serde_json::from_str(json)?;
    let prefix = root.to_string_lossy().trim_end_matches('/').to_string();
    for list in ["ttflist", "afmlist"] {
        if let Some(Value::Array(fonts)) = v.get_mut(list) {
            fonts.retain(|f| {
                f.get("fname")
                    .and_then(Value::as_str)
                    .is_none_or(|p| keeps_font(p, &prefix))
            });
        }
    }
    rewrite_strings(&mut v, &prefix);
    serde_json::to_string_pretty(&v)
}

/// A font is kept if its path is relative (matplotlib data path) or inside the tree.
fn keeps_font(fname: &str, prefix: &str) -> bool {
    !fname.starts_with('/') || under(fname, prefix).is_some()
}

/// `Some(in-sandbox path)` if `s` is `prefix` or below it.
fn under(s: &str, prefix: &str) -> Option<String> {
    let rest = s.strip_prefix(prefix)?;
    if rest.is_empty() {
        Some("/".to_string())
    } else {
        rest.starts_with('/').then(|| rest.to_string())
    }
}

fn rewrite_strings(v: &mut Value, prefix: &str) {
    match v {
        Value::String(s) => {
            if let Some(new) = under(s, prefix) {
                *s = new;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite_strings(x, prefix)),
        Value::Object(o) => o.values_mut().for_each(|x| rewrite_strings(x, prefix)),
        _ => {}
    }
}

/// A Python string literal for `s`.
fn py_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_tree_paths_and_drops_host_fonts() {
        let json = r#"{
          "_version": 330,
          "ttflist": [
            {"fname": "fonts/ttf/DejaVuSans.ttf", "name": "DejaVu Sans", "__class__": "FontEntry"},
            {"fname": "/data/runtimes/.staging-ab/opt/kiln/fonts/X.ttf", "name": "X", "__class__": "FontEntry"},
            {"fname": "/usr/share/fonts/truetype/host.ttf", "name": "Host", "__class__": "FontEntry"}
          ],
          "afmlist": [{"fname": "/data/runtimes/.staging-abc/nope.afm"}],
          "other": ["/data/runtimes/.staging-ab", "/data/runtimes/.staging-ab/opt/kiln/mpl"]
        }"#;
        let out: Value =
            serde_json::from_str(&rewrite(json, Path::new("/data/runtimes/.staging-ab/")).unwrap())
                .unwrap();
        let names: Vec<_> = out["ttflist"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["fname"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["fonts/ttf/DejaVuSans.ttf", "/opt/kiln/fonts/X.ttf"]);
        assert!(
            out["afmlist"].as_array().unwrap().is_empty(),
            "a sibling dir sharing the prefix is not the tree"
        );
        assert_eq!(out["other"], serde_json::json!(["/", "/opt/kiln/mpl"]));
        assert_eq!(out["_version"], 330);
    }

    #[test]
    fn python_string_literal_is_escaped() {
        assert_eq!(py_str("/a/'b\""), r#""/a/'b\"""#);
    }
}
