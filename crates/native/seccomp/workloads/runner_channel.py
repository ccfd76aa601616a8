# The runner's channel: a length-prefixed frame exchange on an AF_UNIX socket
# at fd 3 (select/poll, recvfrom, sendto, read, write).
import os, select, socket, struct

s = socket.socket(fileno=3)
select.select([s], [], [], 5)
p = select.poll()
p.register(s, select.POLLIN)
p.poll(1000)
n = struct.unpack(">I", s.recv(4))[0]
exec(compile(s.recv(n), "<cell>", "exec"), {})
s.send(struct.pack(">I", 2) + b"ok")
os.write(3, b"")
print("channel", os.read(3, 0))
