//! W4: sustained fresh-sandbox throughput with 2 concurrent clients. Each
//! client loops (a fresh sandbox per request) until the time is up; the
//! rate is all completed requests over the time until the last finished.

use super::docker;
use super::methods::{pooled, Method, Methods};
use super::worker::{self, Reply, Worker};
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const CLIENTS: usize = 2;

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub method: String,
    pub workload: String,
    pub clients: usize,
    pub per_s: f64,
    pub requests: u64,
    pub seconds: f64,
}

/// Runs `client` on CLIENTS threads until `secs` have passed.
fn threads(
    secs: f64,
    client: &(dyn Fn() -> Result<(), String> + Sync),
) -> Result<(u64, f64), String> {
    let done = AtomicU64::new(0);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|_| {
                s.spawn(|| {
                    while Instant::now() < deadline {
                        client()?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<(), String>(())
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("client panicked".into()))
                    .err()
            })
            .collect()
    });
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    Ok((done.load(Ordering::Relaxed), start.elapsed().as_secs_f64()))
}

/// W4 for one method and workload.
pub fn run(
    methods: &mut Methods,
    m: Method,
    w2: bool,
    secs: f64,
    config_path: Option<&Path>,
) -> Result<Throughput, String> {
    let expect = if w2 { "count" } else { "1" };
    let (requests, seconds) = match m {
        Method::Pool => {
            methods.settle_pool();
            let pool = methods.pool.as_ref().expect("available");
            threads(secs, &|| pooled(pool, w2).map(drop))?
        }
        Method::NoPool => {
            let (backend, options) = (&*methods.backend, &methods.options);
            threads(secs, &|| {
                worker::one_sandbox(backend, options, w2).map(drop)
            })?
        }
        Method::NoZygote => {
            // Two single-threaded helper processes, one per client.
            let mut second = Worker::start(config_path).map_err(|e| format!("{e:#}"))?;
            let first = methods.worker.as_mut().expect("available");
            let cmd = format!("loop {} {secs}", if w2 { "w2" } else { "w1" });
            first.send(&cmd).map_err(|e| format!("{e:#}"))?;
            second.send(&cmd).map_err(|e| format!("{e:#}"))?;
            let mut total = (0, 0f64);
            for reply in [first.receive(), second.receive()] {
                match reply {
                    Ok(Reply::Loop { count, elapsed_s }) => {
                        total = (total.0 + count, total.1.max(elapsed_s));
                    }
                    Ok(Reply::Error { error }) => return Err(error),
                    Ok(other) => return Err(format!("unexpected reply {other:?}")),
                    Err(e) => return Err(format!("{e:#}")),
                }
            }
            total
        }
        Method::Docker => {
            let d = methods.docker.as_ref().expect("available");
            threads(secs, &|| {
                docker::time_command(d.command(w2), expect).map(drop)
            })?
        }
        Method::DockerBackendPool => {
            methods.settle_pool();
            let pool = methods.docker_pool.as_ref().expect("available");
            threads(secs, &|| pooled(pool, w2).map(drop))?
        }
        Method::DockerBackend => {
            let (backend, options) = (
                &**methods.docker_backend.as_ref().expect("available"),
                &methods.options,
            );
            threads(secs, &|| {
                worker::one_sandbox(backend, options, w2).map(drop)
            })?
        }
        Method::Python3 => {
            let p = methods.plain.as_ref().expect("available");
            threads(secs, &|| {
                docker::time_command(p.workload(w2), expect).map(drop)
            })?
        }
        Method::WarmPython3 => return Err("not a fresh sandbox per request".into()),
    };
    Ok(Throughput {
        method: m.name().into(),
        workload: if w2 { "W2" } else { "W1" }.into(),
        clients: CLIENTS,
        per_s: (requests as f64 / seconds * 100.0).round() / 100.0,
        requests,
        seconds: (seconds * 100.0).round() / 100.0,
    })
}
