# Run only under the filter: denied calls must fail cleanly with a Python
# exception or an errno, never crash the interpreter.
import ctypes, errno, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def err(rc):
    return "ok" if rc == 0 else errno.errorcode[ctypes.get_errno()]
print("unshare", err(libc.unshare(0x10000000)))
print("mount", err(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)))
print("ptrace", err(libc.ptrace(0, 0, None, None)))
print("syslog", err(libc.syscall(103, 3, None, 0)))
for fam in (socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK):
    try:
        socket.socket(fam, socket.SOCK_DGRAM).close(); print("socket", fam, "ok")
    except OSError as e:
        print("socket", int(fam), errno.errorcode[e.errno])
try:
    os.setuid(12345); print("setuid ok")
except OSError as e:
    print("setuid", errno.errorcode[e.errno])
try:
    import urllib.request; urllib.request.urlopen("http://127.0.0.1:9/", timeout=2)
except Exception as e:
    print("urlopen", type(e).__name__)
