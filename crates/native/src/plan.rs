//! Everything a sandbox's child needs, prepared in the parent before the
//! fork: paths as C strings, argv and environment, limits, the compiled
//! seccomp program. After the fork the child only makes syscalls with it.

use crate::seccomp::SeccompPolicy;
use kiln_policy::Limits;
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Where the runtime tree goes and which mounts the new root gets.
#[derive(Debug)]
pub struct RootPlan {
    /// The (empty, host-side) directory the new root tmpfs is mounted on.
    pub new_root: CString,
    /// `(host source, target under new_root)` for each top-level runtime dir.
    pub runtime_binds: Vec<(CString, CString)>,
    pub work: CString,
    pub work_out: CString,
    pub work_opts: CString,
    pub tmp: CString,
    pub tmp_opts: CString,
    pub proc_: CString,
    pub dev: CString,
    /// `(host device, target file)` for null, zero, random, urandom.
    pub dev_binds: Vec<(CString, CString)>,
    /// `(link target, link path)`: /dev/fd, /dev/stdin, …
    pub dev_links: Vec<(CString, CString)>,
    /// `/data` under the new root, made when there are datasets.
    pub data: CString,
    /// `(source, target under new_root/data)` for each dataset, read-only.
    pub dataset_binds: Vec<(CString, CString)>,
    /// The datasets' names, in the order of `dataset_binds`.
    pub dataset_names: Vec<String>,
    /// `/run` and `/run/kiln` under the new root, made when egress is on.
    pub run: CString,
    pub run_kiln: CString,
    /// `(host directory holding the egress socket, new_root/run/kiln)`:
    /// only for a sandbox of an environment with egress (`docs/egress.md`).
    pub egress_bind: Option<(CString, CString)>,
    /// The environment whose proxy that is (a zygote child finds its
    /// socket directory by this name).
    pub egress_name: Option<String>,
    /// `(source, new_root/libraries)`: a wheelhouse library tree, read-only
    /// (its extension modules must load, so not noexec).
    pub libraries: Option<(CString, CString)>,
    /// The tree's name (a zygote child asks its template for it by name).
    pub library_tree: Option<String>,
}

/// The whole plan for one sandbox.
pub struct SandboxPlan<'a> {
    pub root: RootPlan,
    /// The host uid (= gid) the sandbox runs as, mapped 1:1 in its user namespace.
    pub uid: u32,
    pub limits: Limits,
    pub interpreter: CString,
    /// Owned here: `argv_ptrs`/`envp_ptrs` point into these strings.
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    pub argv_ptrs: Vec<*const libc::c_char>,
    pub envp_ptrs: Vec<*const libc::c_char>,
    pub seccomp: &'a SeccompPolicy,
    /// The runner's environment, as pairs (a zygote child applies it itself).
    pub env: Vec<(String, String)>,
    /// Paths Landlock lets the sandbox read and execute / read and write.
    pub landlock_read: Vec<PathBuf>,
    pub landlock_write: Vec<PathBuf>,
    pub landlock_dev: Vec<PathBuf>,
    /// Egress: the one TCP port Landlock lets the sandbox bind and connect
    /// to (the forwarder's on `lo`); every other port stays denied.
    pub landlock_tcp_port: Option<u16>,
    /// Egress on: bring `lo` up (the forwarder listens there) and
    /// `seccomp` is the variant that allows inet sockets.
    pub egress: bool,
}

pub fn cstr(s: impl AsRef<[u8]>) -> CString {
    CString::new(s.as_ref()).expect("kiln-built paths contain no NUL")
}

pub fn cpath(p: &Path) -> CString {
    use std::os::unix::ffi::OsStrExt;
    cstr(p.as_os_str().as_bytes())
}

impl RootPlan {
    pub fn new(new_root: &Path, runtime: &Path, top_level: &[String], limits: &Limits) -> Self {
        let under = |rel: &str| cpath(&new_root.join(rel));
        let tmpfs_opts = |mib: u64, mode: &str| {
            cstr(format!(
                "size={}m,nr_inodes={},mode={mode}",
                mib, limits.inodes
            ))
        };
        let devices = ["null", "zero", "random", "urandom"];
        RootPlan {
            new_root: cpath(new_root),
            runtime_binds: top_level
                .iter()
                .map(|d| (cpath(&runtime.join(d)), under(d)))
                .collect(),
            work: under("work"),
            work_out: under("work/out"),
            work_opts: tmpfs_opts(limits.disk_mib, "0700"),
            tmp: under("tmp"),
            tmp_opts: tmpfs_opts(limits.tmp_mib, "0700"),
            proc_: under("proc"),
            dev: under("dev"),
            dev_binds: devices
                .iter()
                .map(|d| (cstr(format!("/dev/{d}")), under(&format!("dev/{d}"))))
                .collect(),
            dev_links: [
                ("/proc/self/fd", "dev/fd"),
                ("/proc/self/fd/0", "dev/stdin"),
                ("/proc/self/fd/1", "dev/stdout"),
                ("/proc/self/fd/2", "dev/stderr"),
            ]
            .iter()
            .map(|(t, l)| (cstr(t), under(l)))
            .collect(),
            data: under("data"),
            dataset_binds: Vec::new(),
            dataset_names: Vec::new(),
            run: under("run"),
            run_kiln: under("run/kiln"),
            egress_bind: None,
            egress_name: None,
            libraries: None,
            library_tree: None,
        }
    }

    /// Binds `socket_dir` (the egress proxy's socket directory) read-only
    /// at `/run/kiln`.
    pub fn with_egress(mut self, new_root: &Path, egress: Option<(&str, &Path)>) -> Self {
        if let Some((name, dir)) = egress {
            self.egress_bind = Some((cpath(dir), cpath(&new_root.join("run/kiln"))));
            self.egress_name = Some(name.to_string());
        }
        self
    }

    /// Adds the library tree `name` found at `source`, seen at `/libraries`.
    pub fn with_libraries(mut self, new_root: &Path, tree: Option<(&str, PathBuf)>) -> Self {
        if let Some((name, source)) = tree {
            self.libraries = Some((cpath(&source), cpath(&new_root.join("libraries"))));
            self.library_tree = Some(name.to_string());
        }
        self
    }

    /// Adds read-only dataset mounts: `(name, source)` seen at `/data/<name>`.
    pub fn with_datasets(mut self, new_root: &Path, datasets: &[(String, PathBuf)]) -> Self {
        for (name, source) in datasets {
            self.dataset_binds
                .push((cpath(source), cpath(&new_root.join("data").join(name))));
            self.dataset_names.push(name.clone());
        }
        self
    }
}

impl<'a> SandboxPlan<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        root: RootPlan,
        uid: u32,
        limits: Limits,
        interpreter: &str,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        seccomp: &'a SeccompPolicy,
        top_level: &[String],
    ) -> Self {
        let argv: Vec<CString> = argv.into_iter().map(cstr).collect();
        let envp: Vec<CString> = env.iter().map(|(k, v)| cstr(format!("{k}={v}"))).collect();
        let ptrs = |v: &[CString]| {
            v.iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        let argv_ptrs = ptrs(&argv);
        let envp_ptrs = ptrs(&envp);
        let has_data = !root.dataset_binds.is_empty();
        let egress = root.egress_bind.is_some();
        let has_libraries = root.libraries.is_some();
        SandboxPlan {
            root,
            uid,
            limits,
            interpreter: cstr(interpreter),
            _argv: argv,
            _envp: envp,
            argv_ptrs,
            envp_ptrs,
            seccomp,
            env,
            landlock_read: top_level
                .iter()
                .map(|d| Path::new("/").join(d))
                .chain(has_data.then(|| PathBuf::from("/data")))
                .chain(egress.then(|| PathBuf::from("/run/kiln")))
                .chain(has_libraries.then(|| PathBuf::from("/libraries")))
                .collect(),
            landlock_write: vec!["/work".into(), "/tmp".into()],
            landlock_dev: ["/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"]
                .iter()
                .map(PathBuf::from)
                .collect(),
            landlock_tcp_port: egress.then_some(crate::egress::PORT),
            egress,
        }
    }
}
