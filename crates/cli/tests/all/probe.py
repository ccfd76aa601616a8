# kiln's in-sandbox probe: reports, from inside, what the sandbox enforces.
# Run as user code; prints one JSON object. Everything is read, nothing assumed.
import json, os, sys, errno

def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out

def mounts():
    rows = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            rows.append({
                "target": parts[4],
                "options": parts[5].split(","),
                "fstype": parts[sep + 1],
                "source": parts[sep + 2],
                "super": parts[sep + 3].split(","),
            })
    return rows

def interfaces():
    with open("/proc/self/net/dev") as f:
        return [l.split(":")[0].strip() for l in f.readlines()[2:]]

def try_listdir(path):
    try:
        os.listdir(path)
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

def writable(path):
    try:
        with open(os.path.join(path, ".kiln-probe"), "w") as f:
            f.write("x")
        os.unlink(os.path.join(path, ".kiln-probe"))
        return True
    except OSError:
        return False

def fds():
    return sorted(int(x) for x in os.listdir("/proc/self/fd"))

def cgroup_limits():
    # cgroup namespace: our cgroup is "/", the limits live in the kernel, and
    # /sys is not mounted, so the probe reports what it can: its own cgroup
    # path and the rlimits.
    import resource
    with open("/proc/self/cgroup") as f:
        cg = f.read().split()
    return {
        "cgroup": cg,
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "nproc": resource.getrlimit(resource.RLIMIT_NPROC),
        "core": resource.getrlimit(resource.RLIMIT_CORE),
        "fsize": resource.getrlimit(resource.RLIMIT_FSIZE),
    }

st = status()
report = {
    "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
    "groups": os.getgroups(),
    "pid": os.getpid(),
    # gVisor's /proc/self/status has no CapAmb (None then).
    "CapEff": st.get("CapEff"), "CapPrm": st.get("CapPrm"), "CapInh": st.get("CapInh"),
    "CapBnd": st.get("CapBnd"), "CapAmb": st.get("CapAmb"),
    "NoNewPrivs": st.get("NoNewPrivs"), "Seccomp": st.get("Seccomp"),
    "mounts": mounts(),
    "interfaces": interfaces(),
    "root_listing": try_listdir("/"),
    "root_writable": writable("/"),
    "usr_writable": writable("/usr/local"),
    "work_writable": writable("/work"),
    "environ": dict(os.environ),
    "fds": fds(),
    "limits": cgroup_limits(),
    "hostname": os.uname().nodename,
    "sys_exists": os.path.exists("/sys"),
    "host_paths": {p: os.path.exists(p) for p in ["/root", "/home", "/var", "/boot", "/srv", "/run", "/sys", "/var/lib/kiln", "/etc/shadow", "/etc/ssh", "/proc/1/environ"]},
    "dev": sorted(os.listdir("/dev")),
    "proc_pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
}
print(json.dumps(report))
