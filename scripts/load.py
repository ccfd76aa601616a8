#!/usr/bin/env python3
"""Load benchmark for a running `kiln serve` (a benchmark, not a test).

Sends N one-shot `POST /v1/execute` requests (default 1,000 of `print(1)`)
from C concurrent workers (default 50), each on its own keep-alive HTTP/1.1
connection, and prints how many succeeded, how many were refused with 429
(backpressure: the per-key concurrency limit, the rate limit, the server's
cap on requests in flight), how many failed any other way, and latency
percentiles. The bar: 0 errors other than 429.

    ./target/release/kiln serve --dev --listen 127.0.0.1:7878 &
    python3 scripts/load.py --url http://127.0.0.1:7878

With API keys, pass the secret with --key or KILN_API_KEY. Standard library
only. Exit status 1 when any error other than 429 happened.
"""

import argparse
import collections
import concurrent.futures
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list (p in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil
    return sorted_values[int(rank) - 1]


class Worker(threading.local):
    """One keep-alive connection per worker thread, reopened after errors."""

    conn = None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:7878", help="kiln serve's base URL")
    parser.add_argument("-n", "--requests", type=int, default=1000, help="requests in all (1000)")
    parser.add_argument("-c", "--concurrency", type=int, default=50, help="workers at once (50)")
    parser.add_argument("--code", default="print(1)", help="the code each request runs")
    parser.add_argument("--key", default=os.environ.get("KILN_API_KEY"),
                        help="API key secret (default: $KILN_API_KEY; none in --dev)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (120)")
    parser.add_argument("--retry-429", action="store_true",
                        help="retry a 429 after its Retry-After (counted once, as a 429 retry)")
    args = parser.parse_args()

    url = urllib.parse.urlsplit(args.url)
    if url.scheme != "http":
        sys.exit("only http:// URLs (kiln serve speaks plain HTTP; put TLS in front)")
    host, port = url.hostname, url.port or 80
    base = url.path.rstrip("/")
    body = json.dumps({"code": args.code}).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if args.key:
        headers["Authorization"] = f"Bearer {args.key}"

    local = Worker()
    lock = threading.Lock()
    latencies_ok = []
    latencies_all = []
    counts = collections.Counter()
    examples = {}
    retried = collections.Counter()

    def note(kind, latency, example=None):
        with lock:
            counts[kind] += 1
            latencies_all.append(latency)
            if kind == "ok":
                latencies_ok.append(latency)
            if example is not None and kind not in examples:
                examples[kind] = example

    def once():
        """One request: (status, body bytes, headers), reconnecting as needed."""
        if local.conn is None:
            local.conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
        try:
            local.conn.request("POST", f"{base}/v1/execute", body=body, headers=headers)
            response = local.conn.getresponse()
            data = response.read()
            if response.getheader("Connection", "").lower() == "close":
                local.conn.close()
                local.conn = None
            return response.status, data, response
        except Exception:
            local.conn.close()
            local.conn = None
            raise

    def one(_):
        start = time.monotonic()
        while True:
            try:
                status, data, response = once()
            except Exception as error:  # noqa: BLE001 - every failure is counted
                note(f"exception {type(error).__name__}", time.monotonic() - start, repr(error))
                return
            if status == 429 and args.retry_429:
                with lock:
                    retried["429"] += 1
                time.sleep(float(response.getheader("Retry-After", "1")))
                continue
            break
        latency = time.monotonic() - start
        if status == 200:
            try:
                outcome = json.loads(data).get("outcome")
            except ValueError:
                outcome = "unparsable"
            if outcome == "ok":
                note("ok", latency)
            else:
                note(f"200 outcome={outcome}", latency, data[:300])
        elif status == 429:
            note("429", latency, data[:300])
        else:
            note(f"HTTP {status}", latency, data[:300])

    print(f"kiln load: {args.requests} x POST {args.url}/v1/execute {args.code!r}, "
          f"concurrency {args.concurrency}", flush=True)
    began = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        list(pool.map(one, range(args.requests)))
    elapsed = time.monotonic() - began

    other = sum(n for kind, n in counts.items() if kind not in ("ok", "429"))
    print(f"wall time        {elapsed:.2f} s  ({args.requests / elapsed:.1f} requests/s, "
          f"{counts['ok'] / elapsed:.1f} successes/s)")
    print(f"success          {counts['ok']}")
    print(f"429              {counts['429']}" + (f"  (+{retried['429']} retried)" if retried else ""))
    print(f"other errors     {other}")
    for kind, n in sorted(counts.items()):
        if kind not in ("ok", "429"):
            print(f"  {kind}: {n}  e.g. {examples.get(kind)!r}")
    for label, values in (("successes", latencies_ok), ("all requests", latencies_all)):
        values.sort()
        if not values:
            continue
        ms = lambda p: percentile(values, p) * 1000  # noqa: E731
        print(f"latency, {label:<12} p50 {ms(50):7.1f} ms  p90 {ms(90):7.1f} ms  "
              f"p99 {ms(99):7.1f} ms  max {values[-1] * 1000:7.1f} ms  (n={len(values)})")
    if "429" in examples:
        print(f"a 429 said: {examples['429']!r}")
    return 1 if other else 0


if __name__ == "__main__":
    sys.exit(main())
