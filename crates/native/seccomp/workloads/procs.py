import threading, subprocess, sys, time, signal, os, asyncio, concurrent.futures, queue
out = []
ts = [threading.Thread(target=lambda i=i: out.append(i * i)) for i in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]; print(sorted(out))
with concurrent.futures.ThreadPoolExecutor(4) as ex: print(list(ex.map(abs, [-1, -2, 3])))
q = queue.Queue(); threading.Timer(0.01, lambda: q.put(1)).start(); print(q.get(timeout=2))
print(subprocess.run([sys.executable, "-I", "-c", "print('child')"], capture_output=True, text=True).stdout.strip())
print(subprocess.check_output([sys.executable, "-c", "import sys; print(sys.stdin.read())"], input=b"piped").decode().strip())
time.sleep(0.05); print(time.time() > 0, time.monotonic() > 0, time.process_time() >= 0, time.perf_counter() > 0)
def h(s, f): raise KeyboardInterrupt
signal.signal(signal.SIGALRM, h); signal.setitimer(signal.ITIMER_REAL, 0.05)
try:
    time.sleep(2)
except KeyboardInterrupt:
    print("interrupted")
signal.signal(signal.SIGINT, signal.default_int_handler)
try:
    os.kill(os.getpid(), signal.SIGINT); time.sleep(1)
except KeyboardInterrupt:
    print("sigint")
async def main():
    await asyncio.sleep(0.01)
    r = await asyncio.gather(*(asyncio.sleep(0.001, result=i) for i in range(3)))
    p = await asyncio.create_subprocess_exec(sys.executable, "-c", "print(2)", stdout=asyncio.subprocess.PIPE)
    o, _ = await p.communicate()
    return r, o.strip()
print(asyncio.run(main()))
print(os.getpid() > 0, os.getppid() > 0, os.getuid() >= 0, os.cpu_count(), os.uname().sysname, len(os.urandom(8)), os.environ.get("HOME"))
import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0)
import socket
a, b = socket.socketpair(); a.sendall(b"x"); print(b.recv(1))
import faulthandler, gc, platform, locale, hashlib, uuid, random, secrets, json, sqlite3
faulthandler.enable(); gc.collect(); print(platform.platform()[:5], locale.getpreferredencoding(), uuid.uuid4().version, secrets.token_hex(2) != "")
con = sqlite3.connect(":memory:"); con.execute("create table t(x)"); print(con.execute("select count(*) from t").fetchone())
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close(); print("inet ok")
except OSError as e:
    print("inet", e)
