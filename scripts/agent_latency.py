"""Latency of the agent paths against one kiln serve on loopback (a measurement, not a
test): E2B run_code and MCP execute_code in a session, 100 calls each after 5 warm-up
calls. Run from the repository root with the clients of tests/agents/requirements.txt:

    /var/lib/kiln/ci-venv-agents/bin/python scripts/agent_latency.py
"""
import asyncio, os, sys, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tests" / "agents"))
import support
s = support.server()
os.environ.update(E2B_API_URL=s.url + "/e2b", E2B_SANDBOX_URL=s.url + "/e2b", E2B_API_KEY=support.SECRET)
from e2b_code_interpreter import Sandbox
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

def pct(xs):
    xs = sorted(xs); return f"p50 {xs[len(xs)//2]*1000:.1f} ms, p95 {xs[int(len(xs)*0.95)]*1000:.1f} ms, max {xs[-1]*1000:.1f} ms"

t = time.perf_counter(); sbx = Sandbox.create(); create = time.perf_counter() - t
sbx.run_code("x = 1")
for _ in range(5): sbx.run_code("x + 1")
lat = []
for _ in range(100):
    t = time.perf_counter(); assert sbx.run_code("x + 1").text == "2"; lat.append(time.perf_counter() - t)
print(f"E2B Sandbox.create: {create*1000:.1f} ms; run_code('x + 1') x100: {pct(lat)}")
sbx.kill()

async def mcp():
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {support.SECRET}"}, timeout=60) as http:
        async with streamable_http_client(s.url + "/mcp", http_client=http) as st:
            async with ClientSession(st[0], st[1]) as session:
                await session.initialize()
                sid = (await session.call_tool("create_session", {})).content[0].text.split()[1]
                for _ in range(5): await session.call_tool("execute_code", {"session": sid, "code": "1 + 1"})
                lat = []
                for _ in range(100):
                    t = time.perf_counter(); r = await session.call_tool("execute_code", {"session": sid, "code": "1 + 1"}); lat.append(time.perf_counter() - t)
                print(f"MCP (HTTP) execute_code('1 + 1') in a session x100: {pct(lat)}")
                await session.call_tool("close_session", {"session": sid})
asyncio.run(mcp())
