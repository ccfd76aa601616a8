//! kiln's Python image, built locally without a registry: the
//! self-contained runtime tree of `kiln env setup` (interpreter, pinned
//! libraries, the runner) imported as one layer through the Engine API
//! (`POST /images/create?fromSrc=-`, what `docker import` does).

use crate::engine::{unavailable, Engine};
use bollard::body_try_stream;
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;
use kiln_core::BackendError;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

/// The image's repository name; the tag is the runtime's hash.
pub const IMAGE_REPO: &str = "kiln-python";

/// The image for the runtime tree at `root`: `kiln-python:<hash>` where the
/// hash covers the tree's manifest (interpreter, library pins) and this
/// kiln's runner — the image carries the runner of the kiln that built it,
/// whatever runner the shared tree holds at the time.
pub fn image_name(root: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("kiln-runtime.json")).unwrap_or_default())
            .unwrap_or_default();
    if let Some(m) = manifest.as_object_mut() {
        // Rewritten by every `kiln env setup` of any kiln version.
        m.remove("runner_sha256");
        m.remove("created_unix");
    }
    let hash = Sha256::new()
        .chain_update(canonical(&manifest).as_bytes())
        .chain_update(kiln_runner::RUNNER_SOURCE.as_bytes())
        .finalize();
    format!("{IMAGE_REPO}:{}", hex::encode(&hash[..6]))
}

/// JSON with every object's keys sorted, whatever order serde_json keeps
/// (its `preserve_order` feature may be on in one build and off in another).
fn canonical(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        serde_json::Value::from(k.as_str()),
                        canonical(&map[k])
                    )
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        serde_json::Value::Array(items) => {
            format!(
                "[{}]",
                items.iter().map(canonical).collect::<Vec<_>>().join(",")
            )
        }
        other => other.to_string(),
    }
}

/// Whether `image` exists on the engine.
pub fn exists(engine: &Engine, image: &str) -> Result<bool, BackendError> {
    let docker = engine.docker.clone();
    let name = image.to_string();
    match engine.call(async move { docker.inspect_image(&name).await }) {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(e) => Err(unavailable(
            "the container engine",
            format!("cannot inspect the image {image}: {e}"),
            "check the engine with `kiln doctor`",
        )),
    }
}

/// The total bytes of regular files under `root` (for the progress bar).
pub fn tree_bytes(root: &Path) -> u64 {
    fn walk(dir: &Path, total: &mut u64) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                walk(&e.path(), total);
            } else if meta.is_file() {
                *total += meta.len();
            }
        }
    }
    let mut total = 0;
    walk(root, &mut total);
    total
}

/// Why an image build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot read the runtime tree {0}: {1}")]
    Tree(String, std::io::Error),
    #[error("the engine refused the image: {0}")]
    Engine(String),
    #[error(transparent)]
    Unavailable(#[from] BackendError),
}

/// Imports the tree at `root` as `image` (unless it exists and `force` is
/// not set). `progress(sent, total)` is called as bytes go out. Returns
/// whether it was built now.
/// `runner` is the in-image path of kiln's runner (from the manifest): the
/// tree's copy is replaced by this kiln's.
pub fn build(
    engine: &Engine,
    root: &Path,
    runner: &str,
    image: &str,
    force: bool,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<bool, BuildError> {
    if !force && exists(engine, image)? {
        return Ok(false);
    }
    let total = tree_bytes(root);
    let tree_err = |e| BuildError::Tree(root.display().to_string(), e);
    let overlay = tempdir_for_runner(runner).map_err(tree_err)?;
    let runner_rel = format!(".{runner}");
    // The tree's runner is left out; this kiln's is added under another
    // name (an exclude pattern applies to every member) and renamed.
    let added = format!("{runner_rel}{OVERLAY_SUFFIX}");
    let rename = format!("--transform=s,^{}$,{},", regex_escape(&added), runner_rel);
    // `tar` (not the docker CLI) streams the tree: numeric owners; the
    // engine makes one layer of it.
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(root)
        .arg(format!("--exclude={runner_rel}"))
        .arg(&rename)
        .args(["--numeric-owner", "-c", "."])
        .arg("-C")
        .arg(&overlay.0)
        .arg(&added)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BuildError::Tree(root.display().to_string(), e))?;
    let mut out = tar.stdout.take().expect("piped");
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes_chunk::Chunk>>(8);
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match out.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    // The repository may carry the tag (Podman ignores a separate `tag`).
    let options = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(image)
        .message("kiln's Python runtime (kiln image build)")
        .build();
    let docker = engine.docker.clone();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let body = tokio_stream_from(rx).map(move |chunk| {
        chunk.map(|c| {
            counter.fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed);
            bytes_from(c)
        })
    });
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    engine.handle().spawn(async move {
        let mut stream = docker.create_image(Some(options), Some(body_try_stream(body)), None);
        let mut result = Ok(());
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                result = Err(e.to_string());
                break;
            }
        }
        let _ = done_tx.send(result);
    });
    let result = loop {
        match done_rx.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(r) => break r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => progress(
                sent.load(std::sync::atomic::Ordering::Relaxed).min(total),
                total,
            ),
            Err(_) => break Err("the import task ended without an answer".into()),
        }
    };
    let _ = reader.join();
    let status = tar.wait();
    let mut err = String::new();
    if let Some(mut e) = tar.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    result.map_err(BuildError::Engine)?;
    match status {
        Ok(s) if s.success() => {}
        _ => {
            return Err(BuildError::Tree(
                root.display().to_string(),
                std::io::Error::other(format!("tar failed: {}", err.trim())),
            ))
        }
    }
    progress(total, total);
    if !exists(engine, image)? {
        return Err(BuildError::Engine(format!(
            "the import finished but {image} does not exist"
        )));
    }
    Ok(true)
}

const OVERLAY_SUFFIX: &str = ".kiln-image";

/// `s` with the characters a sed basic regex treats specially escaped.
fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '.' | '*' | '[' | ']' | '^' | '$' | '\\' | ',' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

/// A directory holding only this kiln's runner at its in-image path;
/// removed when dropped.
struct Overlay(std::path::PathBuf);

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir_for_runner(runner: &str) -> std::io::Result<Overlay> {
    use std::os::unix::fs::PermissionsExt;
    let rel = runner.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|p| p == ".." || p.is_empty()) {
        return Err(std::io::Error::other(format!("bad runner path {runner:?}")));
    }
    let dir = std::env::temp_dir().join(format!("kiln-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let overlay = Overlay(dir);
    let file = overlay.0.join(format!("{rel}{OVERLAY_SUFFIX}"));
    std::fs::create_dir_all(file.parent().expect("a file in a directory"))?;
    std::fs::write(&file, kiln_runner::RUNNER_SOURCE)?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
    Ok(overlay)
}

#[cfg(test)]
mod tests {
    #[test]
    fn canonical_json_ignores_key_order() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":[1,{"q":2,"p":3}],"x":"s"}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"a":{"x":"s","y":[1,{"p":3,"q":2}]},"b":1}"#).unwrap();
        assert_eq!(super::canonical(&a), super::canonical(&b));
        assert_eq!(
            super::canonical(&a),
            r#"{"a":{"x":"s","y":[1,{"p":3,"q":2}]},"b":1}"#
        );
    }
}

mod bytes_chunk {
    pub type Chunk = Vec<u8>;
}

fn bytes_from(c: Vec<u8>) -> bytes::Bytes {
    c.into()
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
