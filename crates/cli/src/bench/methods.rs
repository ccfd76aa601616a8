//! The methods compared, and one measured request of each.

use super::docker::{self, Docker};
use super::plain::{Plain, Warm};
use super::worker::{self, Reply, Timing, Worker};
use super::workloads;
use kiln_core::{Pool, SessionOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    Pool,
    NoPool,
    NoZygote,
    Docker,
    /// kiln's docker backend (runc) with a warm pool of containers.
    DockerBackendPool,
    /// kiln's docker backend, a container per request.
    DockerBackend,
    Python3,
    WarmPython3,
}

impl Method {
    pub const ALL: [Method; 8] = [
        Method::Pool,
        Method::NoPool,
        Method::NoZygote,
        Method::Docker,
        Method::DockerBackendPool,
        Method::DockerBackend,
        Method::Python3,
        Method::WarmPython3,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Pool => "kiln-pool",
            Method::NoPool => "kiln-nopool",
            Method::NoZygote => "kiln-nozygote",
            Method::Docker => "docker-run",
            Method::DockerBackendPool => "kiln-docker-pool",
            Method::DockerBackend => "kiln-docker",
            Method::Python3 => "python3",
            Method::WarmPython3 => "warm-python3",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Method::Pool => "zygote + warm pool: take a ready sandbox, execute, close (the pool refills in the background)",
            Method::NoPool => "zygote, a sandbox created per request: create_session + execute + close",
            Method::NoZygote => "a fresh process per sandbox (clone3 + execve of the interpreter): create_session + execute + close, from a single-threaded helper process",
            Method::Docker => "`docker run` with the brief's flags on a local image of the same runtime tree, a container per request",
            Method::DockerBackendPool => "kiln's docker backend (runc, all of kiln's flags) with a warm pool of started containers: take, execute, close",
            Method::DockerBackend => "kiln's docker backend (runc): a container per request through the Engine API: create_session + execute + close",
            Method::Python3 => "the same interpreter and libraries, no isolation at all, a fresh process per request",
            Method::WarmPython3 => "one persistent plain interpreter that already imported the libraries, code sent over a pipe (the \"already-warm interpreter\" of W2's target)",
        }
    }
}

/// Pool sizes used by the bench.
pub const POOL_MIN: usize = 2;
pub const POOL_MAX: usize = 4;

/// Everything the methods run on.
pub struct Methods {
    pub options: SessionOptions,
    pub backend: Arc<kiln_native::NativeBackend>,
    pub pool: Option<Pool>,
    pub worker: Option<Worker>,
    pub docker: Option<Docker>,
    /// kiln's docker backend and its pool.
    pub docker_backend: Option<Arc<dyn kiln_core::Backend + Send + Sync>>,
    pub docker_pool: Option<Pool>,
    pub plain: Option<Plain>,
    pub warm: Option<Warm>,
}

/// One measured request.
pub struct Measured {
    /// End to end, teardown included.
    pub total_ms: f64,
    /// kiln's phases (for the pool, `create_ms` is the `take`).
    pub timing: Option<Timing>,
}

impl Methods {
    pub fn available(&self, m: Method) -> bool {
        match m {
            Method::Pool => self.pool.is_some(),
            Method::NoPool => true,
            Method::NoZygote => self.worker.is_some(),
            Method::Docker => self.docker.is_some(),
            Method::DockerBackendPool => self.docker_pool.is_some(),
            Method::DockerBackend => self.docker_backend.is_some(),
            Method::Python3 => self.plain.is_some(),
            Method::WarmPython3 => self.warm.is_some(),
        }
    }

    /// Waits (untimed) until the pool is full and idle, so that its refill
    /// does not run during anyone's measurement.
    pub fn settle_pool(&self) {
        for pool in [&self.pool, &self.docker_pool].into_iter().flatten() {
            settle(pool);
        }
    }
}

fn settle(pool: &Pool) {
    {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let s = pool.stats();
            // Full is `max_ready` once there was demand, `min_ready` before.
            let full = if s.handed_out > 0 { POOL_MAX } else { POOL_MIN };
            if s.creating == 0 && s.ready >= full {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Methods {
    pub fn measure(&mut self, m: Method, w2: bool) -> Result<Measured, String> {
        let expect = if w2 { "count" } else { "1" };
        match m {
            Method::Pool => {
                let pool = self.pool.as_ref().expect("available");
                let timing = pooled(pool, w2)?;
                self.settle_pool();
                Ok(Measured {
                    total_ms: timing.total_ms(),
                    timing: Some(timing),
                })
            }
            Method::NoPool => {
                let timing = worker::one_sandbox(&*self.backend, &self.options, w2)?;
                Ok(Measured {
                    total_ms: timing.total_ms(),
                    timing: Some(timing),
                })
            }
            Method::NoZygote => {
                let w = self.worker.as_mut().expect("available");
                match w.ask(if w2 { "run w2" } else { "run w1" }) {
                    Ok(Reply::Run { timing }) => Ok(Measured {
                        total_ms: timing.total_ms(),
                        timing: Some(timing),
                    }),
                    Ok(Reply::Error { error }) => Err(error),
                    Ok(other) => Err(format!("unexpected reply {other:?}")),
                    Err(e) => Err(format!("{e:#}")),
                }
            }
            Method::Docker => {
                let cmd = self.docker.as_ref().expect("available").command(w2);
                docker::time_command(cmd, expect).map(plain_ms)
            }
            Method::DockerBackendPool => {
                let pool = self.docker_pool.as_ref().expect("available");
                let timing = pooled(pool, w2)?;
                self.settle_pool();
                Ok(Measured {
                    total_ms: timing.total_ms(),
                    timing: Some(timing),
                })
            }
            Method::DockerBackend => {
                let backend = self.docker_backend.as_ref().expect("available");
                let timing = worker::one_sandbox(&**backend, &self.options, w2)?;
                Ok(Measured {
                    total_ms: timing.total_ms(),
                    timing: Some(timing),
                })
            }
            Method::Python3 => {
                let cmd = self.plain.as_ref().expect("available").workload(w2);
                docker::time_command(cmd, expect).map(plain_ms)
            }
            Method::WarmPython3 => {
                let code = if w2 {
                    workloads::W2_PLAIN
                } else {
                    workloads::W1
                };
                let t = self
                    .warm
                    .as_mut()
                    .expect("available")
                    .run(code)
                    .map_err(|e| format!("{e:#}"))?;
                Ok(plain_ms(t.total_ms))
            }
        }
    }
}

fn plain_ms(total_ms: f64) -> Measured {
    Measured {
        total_ms,
        timing: None,
    }
}

/// One request through the pool: take, execute, close.
pub fn pooled(pool: &Pool, w2: bool) -> Result<Timing, String> {
    let t0 = Instant::now();
    let mut session = pool.take().map_err(|e| e.to_string())?;
    let t1 = Instant::now();
    let result = session.execute(&worker::request(w2), &mut |_| {});
    let t2 = Instant::now();
    session.close();
    let t3 = Instant::now();
    worker::check(&result, w2)?;
    Ok(Timing {
        create_ms: worker::ms(t1 - t0),
        exec_ms: worker::ms(t2 - t1),
        close_ms: worker::ms(t3 - t2),
    })
}
