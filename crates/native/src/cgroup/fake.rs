//! A fake cgroup tree in a temp dir that behaves enough like the kernel for
//! unit tests: mkdir fills in control files, cgroup.procs appends, SIGKILL
//! and cgroup.kill empty cgroup.procs, rmdir refuses busy cgroups, v1 keeps
//! memsw >= memory, v2 enables only offered controllers. Every successful
//! change is logged in order, and errors can be injected per path.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tempfile::TempDir;

use super::{parse_pids, CgroupFs, RealFs};

/// One change made through the fake, paths relative to its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Mkdir(String),
    Rmdir(String),
    Write(String, String),
    Kill(i32, i32),
}

#[derive(Debug)]
pub struct FakeFs {
    tmp: TempDir,
    /// Content a control file has when mkdir creates it, by file name.
    defaults: HashMap<&'static str, &'static str>,
    log: Mutex<Vec<Op>>,
    fail_write: Mutex<HashMap<String, i32>>,
    fail_mkdir: Mutex<HashMap<String, i32>>,
}

const UNLIMITED_V1: &str = "9223372036854771712\n";

const V1_MEMORY: [(&str, &str); 7] = [
    ("memory.limit_in_bytes", UNLIMITED_V1),
    ("memory.swappiness", "60\n"),
    (
        "memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
    ),
    ("memory.failcnt", "0\n"),
    ("memory.max_usage_in_bytes", "0\n"),
    ("memory.use_hierarchy", "1\n"),
    ("memory.usage_in_bytes", "0\n"),
];
const V1_PIDS: [(&str, &str); 2] = [("pids.max", "max\n"), ("pids.events", "max 0\n")];
const V1_CPU: [(&str, &str); 2] = [
    ("cpu.cfs_period_us", "100000\n"),
    ("cpu.cfs_quota_us", "-1\n"),
];
const V1_CPUACCT: [(&str, &str); 1] = [("cpuacct.usage", "0\n")];
const V1_FREEZER: [(&str, &str); 1] = [("freezer.state", "THAWED\n")];

const V2_FILES: [(&str, &str); 16] = [
    ("cgroup.subtree_control", ""),
    ("cgroup.kill", ""),
    ("cgroup.freeze", "0\n"),
    ("cgroup.events", "populated 0\nfrozen 0\n"),
    ("memory.max", "max\n"),
    ("memory.swap.max", "max\n"),
    ("memory.oom.group", "0\n"),
    (
        "memory.events",
        "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    ),
    ("memory.peak", "0\n"),
    ("memory.current", "0\n"),
    ("memory.high", "max\n"),
    ("pids.max", "max\n"),
    ("pids.events", "max 0\n"),
    ("cpu.max", "max 100000\n"),
    ("cpu.stat", "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"),
    ("cpu.weight", "100\n"),
];

/// Shape of a fake v1 host.
#[derive(Debug, Clone, Copy)]
pub struct V1Options {
    /// Swap accounting on (`memory.memsw.*` exist).
    pub memsw: bool,
    /// `cpu` and `cpuacct` mounted together at `cpu,cpuacct`.
    pub combined_cpu: bool,
    /// A freezer hierarchy is mounted.
    pub freezer: bool,
}

impl Default for V1Options {
    fn default() -> Self {
        Self {
            memsw: true,
            combined_cpu: false,
            freezer: true,
        }
    }
}

impl FakeFs {
    fn new() -> Self {
        let mut defaults: HashMap<&'static str, &'static str> = HashMap::new();
        defaults.extend(V1_MEMORY);
        defaults.extend([("memory.memsw.limit_in_bytes", UNLIMITED_V1)]);
        defaults.extend(
            V1_PIDS
                .iter()
                .chain(&V1_CPU)
                .chain(&V1_CPUACCT)
                .chain(&V1_FREEZER)
                .copied(),
        );
        defaults.extend(V2_FILES);
        Self {
            tmp: tempfile::tempdir().expect("temp dir"),
            defaults,
            log: Mutex::new(Vec::new()),
            fail_write: Mutex::new(HashMap::new()),
            fail_mkdir: Mutex::new(HashMap::new()),
        }
    }

    /// A hybrid v1 host: one mount per controller plus an empty unified
    /// mount. Returns the fake and its `/proc/self/mountinfo`.
    pub fn v1(opts: V1Options) -> (Arc<FakeFs>, String) {
        let fake = Self::new();
        let cpu_dirs: &[(&str, &str)] = if opts.combined_cpu {
            &[("cpu,cpuacct", "cpu,cpuacct")]
        } else {
            &[("cpu", "cpu"), ("cpuacct", "cpuacct")]
        };
        let mut mounts: Vec<(&str, &str)> = vec![("memory", "memory"), ("pids", "pids")];
        mounts.extend_from_slice(cpu_dirs);
        if opts.freezer {
            mounts.push(("freezer", "freezer"));
        }
        let mut info = format!(
            "31 23 0:28 / {} rw - tmpfs tmpfs rw\n",
            fake.root().display()
        );
        for (i, (dir, controllers)) in mounts.iter().enumerate() {
            let mut files: Vec<(&str, &str)> = Vec::new();
            for c in controllers.split(',') {
                files.extend(match c {
                    "memory" if opts.memsw => {
                        let mut f = V1_MEMORY.to_vec();
                        f.push(("memory.memsw.limit_in_bytes", UNLIMITED_V1));
                        f
                    }
                    "memory" => V1_MEMORY.to_vec(),
                    "pids" => V1_PIDS.to_vec(),
                    "cpu" => V1_CPU.to_vec(),
                    "cpuacct" => V1_CPUACCT.to_vec(),
                    _ => V1_FREEZER.to_vec(),
                });
            }
            fake.populate(dir, &files);
            let point = fake.root().join(dir);
            info += &format!(
                "{} 31 0:{} / {} rw - cgroup cgroup rw,{controllers}\n",
                32 + i,
                29 + i,
                point.display()
            );
        }
        fake.populate(
            "unified",
            &[
                ("cgroup.controllers", "hugetlb\n"),
                ("cgroup.subtree_control", ""),
            ],
        );
        info += &format!(
            "41 31 0:38 / {} rw - cgroup2 cgroup2 rw\n",
            fake.root().join("unified").display()
        );
        (Arc::new(fake), info)
    }

    /// A unified v2 host whose root offers `controllers` (e.g. "cpu memory pids").
    pub fn v2(controllers: &str) -> (Arc<FakeFs>, String) {
        let fake = Self::new();
        let mut files = V2_FILES.to_vec();
        let listed = format!("{controllers}\n");
        files.push(("cgroup.controllers", &listed));
        fake.populate("", &files);
        let info = format!(
            "30 23 0:26 / {} rw - cgroup2 cgroup2 rw,nsdelegate\n",
            fake.root().display()
        );
        (Arc::new(fake), info)
    }

    fn populate(&self, dir: &str, files: &[(&str, &str)]) {
        let dir = self.path(dir);
        fs::create_dir_all(&dir).expect("fake dir");
        fs::write(dir.join("cgroup.procs"), "").expect("fake file");
        for (name, content) in files {
            fs::write(dir.join(name), content).expect("fake file");
        }
    }

    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// The absolute path of `rel`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    fn rel(&self, path: &Path) -> String {
        let rel = path.strip_prefix(self.root()).unwrap_or(path);
        rel.to_string_lossy().into_owned()
    }

    /// Sets a file's content without logging it (test setup).
    pub fn set(&self, rel: &str, content: &str) {
        fs::write(self.path(rel), content).expect("fake set");
    }

    pub fn get(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    pub fn ops(&self) -> Vec<Op> {
        self.log.lock().expect("log").clone()
    }

    /// The logged writes as (relative path, value).
    pub fn writes(&self) -> Vec<(String, String)> {
        let ops = self.ops();
        ops.into_iter()
            .filter_map(|op| match op {
                Op::Write(p, v) => Some((p, v)),
                _ => None,
            })
            .collect()
    }

    pub fn clear_log(&self) {
        self.log.lock().expect("log").clear();
    }

    /// Makes writes to `rel` fail with `errno`.
    pub fn fail_write(&self, rel: &str, errno: i32) {
        self.fail_write
            .lock()
            .expect("lock")
            .insert(rel.to_string(), errno);
    }

    /// Makes mkdir of `rel` fail with `errno`.
    pub fn fail_mkdir(&self, rel: &str, errno: i32) {
        self.fail_mkdir
            .lock()
            .expect("lock")
            .insert(rel.to_string(), errno);
    }

    fn injected(map: &Mutex<HashMap<String, i32>>, rel: &str) -> io::Result<()> {
        match map.lock().expect("lock").get(rel) {
            Some(errno) => Err(io::Error::from_raw_os_error(*errno)),
            None => Ok(()),
        }
    }

    fn record(&self, op: Op) {
        self.log.lock().expect("log").push(op);
    }

    /// Removes `pid` from every cgroup.procs of the tree.
    fn remove_pid_everywhere(&self, pid: i32) -> io::Result<()> {
        let mut stack = vec![self.root().to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir)? {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.file_name().is_some_and(|n| n == "cgroup.procs") {
                    let kept: Vec<String> = parse_pids(&fs::read_to_string(&path)?)
                        .into_iter()
                        .filter(|p| *p != pid)
                        .map(|p| format!("{p}\n"))
                        .collect();
                    fs::write(&path, kept.concat())?;
                }
            }
        }
        Ok(())
    }

    /// The kernel's side effects of a write; Err rejects it.
    fn apply(&self, path: &Path, value: &str) -> io::Result<()> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let dir = path.parent().unwrap_or(self.root());
        let einval = || io::Error::from_raw_os_error(libc::EINVAL);
        let read_u64 = |f: &str| -> io::Result<u64> {
            fs::read_to_string(dir.join(f))?
                .trim()
                .parse()
                .map_err(|_| einval())
        };
        match name {
            "cgroup.procs" => {
                let pid: i32 = value.trim().parse().map_err(|_| einval())?;
                let mut text = fs::read_to_string(path)?;
                text += &format!("{pid}\n");
                fs::write(path, text)
            }
            "cgroup.kill" => fs::write(dir.join("cgroup.procs"), ""),
            "cgroup.freeze" => {
                let frozen = value.trim() == "1";
                fs::write(
                    dir.join("cgroup.events"),
                    format!("populated 1\nfrozen {}\n", u8::from(frozen)),
                )?;
                fs::write(path, value)
            }
            "cgroup.subtree_control" => {
                let offered = fs::read_to_string(dir.join("cgroup.controllers"))?;
                let mut on: Vec<String> = fs::read_to_string(path)?
                    .split_whitespace()
                    .map(String::from)
                    .collect();
                for token in value.split_whitespace() {
                    let (sign, c) = token.split_at(1);
                    if !offered.split_whitespace().any(|o| o == c) {
                        return Err(io::Error::from_raw_os_error(libc::ENOENT));
                    }
                    on.retain(|o| o != c);
                    if sign == "+" {
                        on.push(c.to_string());
                    }
                }
                fs::write(path, on.join(" ") + "\n")
            }
            "memory.limit_in_bytes" if dir.join("memory.memsw.limit_in_bytes").exists() => {
                let v: u64 = value.trim().parse().map_err(|_| einval())?;
                if v > read_u64("memory.memsw.limit_in_bytes")? {
                    return Err(einval());
                }
                fs::write(path, value)
            }
            "memory.memsw.limit_in_bytes" => {
                let v: u64 = value.trim().parse().map_err(|_| einval())?;
                if v < read_u64("memory.limit_in_bytes")? {
                    return Err(einval());
                }
                fs::write(path, value)
            }
            _ => fs::write(path, value),
        }
    }

    /// Fills a new cgroup like the kernel: the parent's control files at
    /// their defaults; on v2 only those of controllers the parent enabled.
    fn fill(&self, parent: &Path, dir: &Path) -> io::Result<()> {
        let v2 = parent.join("cgroup.controllers").exists();
        let enabled = if v2 {
            fs::read_to_string(parent.join("cgroup.subtree_control"))?
        } else {
            String::new()
        };
        for entry in fs::read_dir(parent)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let prefix = name.split('.').next().unwrap_or("");
            let controller_file = matches!(prefix, "memory" | "pids" | "cpu" | "io" | "hugetlb");
            if v2
                && controller_file
                && name != "cpu.stat"
                && !enabled.split_whitespace().any(|c| c == prefix)
            {
                continue;
            }
            let content = match name.as_str() {
                "cgroup.controllers" => enabled.as_str(),
                _ => self.defaults.get(name.as_str()).copied().unwrap_or(""),
            };
            fs::write(dir.join(&name), content)?;
        }
        Ok(())
    }
}

impl CgroupFs for FakeFs {
    fn read(&self, path: &Path) -> io::Result<String> {
        // A child's cgroup.controllers is whatever its parent enables, live.
        let parent = path.parent().and_then(Path::parent);
        if let Some(parent) = parent.filter(|p| {
            path.ends_with("cgroup.controllers")
                && p.starts_with(self.root())
                && p.join("cgroup.controllers").exists()
        }) {
            return fs::read_to_string(parent.join("cgroup.subtree_control"));
        }
        fs::read_to_string(path)
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        let rel = self.rel(path);
        Self::injected(&self.fail_write, &rel)?;
        if !path.is_file() {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        self.apply(path, value)?;
        self.record(Op::Write(rel, value.to_string()));
        Ok(())
    }

    fn mkdir(&self, path: &Path) -> io::Result<()> {
        let rel = self.rel(path);
        Self::injected(&self.fail_mkdir, &rel)?;
        fs::create_dir(path)?;
        let parent = path.parent().unwrap_or(self.root());
        if let Err(e) = self.fill(parent, path) {
            let _ = fs::remove_dir_all(path);
            return Err(e);
        }
        self.record(Op::Mkdir(rel));
        Ok(())
    }

    fn rmdir(&self, path: &Path) -> io::Result<()> {
        let rel = self.rel(path);
        let busy = io::Error::from_raw_os_error(libc::EBUSY);
        if fs::read_dir(path)?.any(|e| e.is_ok_and(|e| e.path().is_dir())) {
            return Err(busy);
        }
        if !parse_pids(&fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default())
            .is_empty()
        {
            return Err(busy);
        }
        fs::remove_dir_all(path)?;
        self.record(Op::Rmdir(rel));
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn list_dirs(&self, path: &Path) -> io::Result<Vec<String>> {
        RealFs.list_dirs(path)
    }

    fn kill(&self, pid: i32, signal: i32) -> io::Result<()> {
        self.record(Op::Kill(pid, signal));
        if signal == libc::SIGKILL {
            self.remove_pid_everywhere(pid)?;
        }
        Ok(())
    }

    fn open_dir(&self, path: &Path) -> io::Result<OwnedFd> {
        RealFs.open_dir(path)
    }
}
