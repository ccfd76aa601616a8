"""kiln's MCP server driven by the official MCP Python SDK (PyPI `mcp`):
over stdio (`kiln mcp`) and over streamable HTTP (`/mcp` on `kiln serve`,
behind the bearer-key auth)."""

import asyncio
import base64
import os
import unittest

import httpx2
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

import support

PLOT = (
    "import matplotlib\n"
    "matplotlib.use('Agg')\n"
    "import matplotlib.pyplot as plt\n"
    "print('the answer is', 6 * 7)\n"
    "plt.plot([1, 2, 3], [1, 4, 9])\n"
    "plt.title('squares')\n"
    "plt.show()\n"
)

TOOLS = {"execute_code", "create_session", "close_session", "upload_file", "read_file", "list_environments"}


def texts(result):
    return "\n".join(c.text for c in result.content if c.type == "text")


def images(result):
    return [c for c in result.content if c.type == "image"]


async def exercise(session, case):
    """What both transports must show."""
    await session.initialize()
    listed = await session.list_tools()
    names = {t.name for t in listed.tools}
    case.assertEqual(names, TOOLS)
    execute = next(t for t in listed.tools if t.name == "execute_code")
    # The guardrails from the policy are in the description.
    case.assertIn("No network", execute.description)
    case.assertIn("/work/out", execute.description)
    case.assertIn("numpy 1.26.4", execute.description)
    case.assertEqual(execute.input_schema["required"], ["code"])

    result = await session.call_tool("execute_code", {"code": PLOT})
    case.assertFalse(result.is_error, texts(result))
    case.assertIn("the answer is 42", texts(result))
    pictures = images(result)
    case.assertEqual(len(pictures), 1, texts(result))
    case.assertEqual(pictures[0].mime_type, "image/png")
    case.assertTrue(base64.b64decode(pictures[0].data).startswith(b"\x89PNG\r\n\x1a\n"))

    # An error: marked, named, with its traceback.
    failed = await session.call_tool("execute_code", {"code": "1/0"})
    case.assertTrue(failed.is_error)
    case.assertIn("ZeroDivisionError", texts(failed))
    case.assertIn("Traceback", texts(failed))

    # A session keeps state; files go in and out of /work.
    created = await session.call_tool("create_session", {})
    case.assertFalse(created.is_error, texts(created))
    sid = texts(created).split()[1]
    up = await session.call_tool(
        "upload_file", {"session": sid, "path": "data.csv", "content": "a,b\n1,2\n3,4\n"}
    )
    case.assertFalse(up.is_error, texts(up))
    first = await session.call_tool(
        "execute_code",
        {"session": sid, "code": "import csv\nrows = list(csv.DictReader(open('data.csv')))\n"
                                 "open('out/sum.txt', 'w').write(str(sum(int(r['b']) for r in rows)))"},
    )
    case.assertFalse(first.is_error, texts(first))
    second = await session.call_tool("execute_code", {"session": sid, "code": "len(rows)"})
    case.assertIn("2", texts(second))
    read = await session.call_tool("read_file", {"session": sid, "path": "out/sum.txt"})
    case.assertEqual(texts(read), "6")

    # A timeout interrupts the run; the session keeps its variables.
    slow = await session.call_tool(
        "execute_code", {"session": sid, "code": "import time\nwhile True: time.sleep(0.05)", "timeout": 1}
    )
    case.assertTrue(slow.is_error)
    case.assertIn("KeyboardInterrupt", texts(slow))
    after = await session.call_tool("execute_code", {"session": sid, "code": "rows[1]['a']"})
    case.assertIn("'3'", texts(after))

    envs = await session.call_tool("list_environments", {})
    case.assertIn('"default"', texts(envs))
    case.assertIn("numpy", texts(envs))

    closed = await session.call_tool("close_session", {"session": sid})
    case.assertFalse(closed.is_error, texts(closed))
    gone = await session.call_tool("execute_code", {"session": sid, "code": "1"})
    case.assertTrue(gone.is_error)
    case.assertIn("not_found", texts(gone))

    bad = await session.call_tool("execute_code", {"code": 5})
    case.assertTrue(bad.is_error)
    case.assertIn("`code` must be a string", texts(bad))


class StdioTest(unittest.TestCase):
    def test_kiln_mcp_over_stdio(self):
        params = StdioServerParameters(
            command=str(support.kiln_bin()),
            args=["mcp"],
            env={"KILN_LOG": "warn", **({"KILN_DATA_DIR": os.environ["KILN_DATA_DIR"]} if "KILN_DATA_DIR" in os.environ else {})},
        )

        async def main():
            async with stdio_client(params) as (read, write):
                async with ClientSession(read, write) as session:
                    await exercise(session, self)

        asyncio.run(asyncio.wait_for(main(), 300))


class HttpTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = support.server()

    def client(self, secret):
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(120.0))

    def test_mcp_over_streamable_http(self):
        async def main():
            async with self.client(support.SECRET) as http:
                async with streamable_http_client(self.server.url + "/mcp", http_client=http) as streams:
                    read, write = streams[0], streams[1]
                    async with ClientSession(read, write) as session:
                        await exercise(session, self)

        asyncio.run(asyncio.wait_for(main(), 300))

    def test_mcp_needs_a_key_and_sessions_stay_with_their_key(self):
        async def refused():
            async with self.client("wrong") as http:
                r = await http.post(self.server.url + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                                    headers={"Accept": "application/json, text/event-stream"})
                return r.status_code

        self.assertEqual(asyncio.run(refused()), 401)

        async def call(secret, tool, args):
            async with self.client(secret) as http:
                async with streamable_http_client(self.server.url + "/mcp", http_client=http) as streams:
                    async with ClientSession(streams[0], streams[1]) as session:
                        await session.initialize()
                        return await session.call_tool(tool, args)

        created = asyncio.run(call(support.SECRET, "create_session", {}))
        sid = texts(created).split()[1]
        try:
            theirs = asyncio.run(call(support.OTHER_SECRET, "execute_code", {"session": sid, "code": "1"}))
            self.assertTrue(theirs.is_error)
            self.assertIn("not_found", texts(theirs))
        finally:
            asyncio.run(call(support.SECRET, "close_session", {"session": sid}))


if __name__ == "__main__":
    unittest.main()
