"""N concurrent scrapers for S seconds against one URL; prints one JSON
line: scrapes answered, failures (with the first few reasons), latency
percentiles. Run inside the router's namespace by test_exporter_load.py:

    python scrapers.py URL CLIENTS SECONDS [CAFILE [USER PASSWORD]]

One asyncio loop drives every scraper, so that a scraper waits for the
exporter and not for its turn at the GIL (50 threads doing TLS here were
themselves late by seconds).
"""

import asyncio
import base64
import json
import ssl
import sys
import time
import urllib.parse


async def main():
    url, clients, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    cafile = sys.argv[4] if len(sys.argv) > 4 else None
    auth = sys.argv[5:7] if len(sys.argv) > 6 else None
    u = urllib.parse.urlsplit(url)
    ctx = ssl.create_default_context(cafile=cafile) if u.scheme == "https" else None
    request = f"GET {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\n"
    if auth:
        request += "Authorization: Basic " + base64.b64encode(":".join(auth).encode()).decode() + "\r\n"
    request = (request + "\r\n").encode()
    latencies, failures = [], []
    began = time.monotonic()
    stop_at = began + seconds

    async def scrape(stage):
        # stage[0] names the step a failure stopped in (a timeout says
        # nothing else): connecting, sending, or waiting for the answer.
        reader, writer = await asyncio.open_connection(u.hostname, u.port, ssl=ctx)
        try:
            stage[0] = "send"
            writer.write(request)
            await writer.drain()
            stage[0] = "answer"
            data = await reader.read()
        finally:
            writer.close()
        if not data.startswith(b"HTTP/1.1 200 ") or b"xdpfwd_up" not in data:
            raise RuntimeError(data[:40].decode("latin-1") or "closed without an answer")

    async def scraper():
        while time.monotonic() < stop_at:
            start, stage = time.monotonic(), ["connect"]
            try:
                await asyncio.wait_for(scrape(stage), 10)
                latencies.append(time.monotonic() - start)
            except Exception as e:  # noqa: BLE001 - counted and reported
                failures.append(f"{type(e).__name__} in {stage[0]}, started at "
                                f"{start - began:.2f} s: {e}")

    await asyncio.gather(*(scraper() for _ in range(clients)))
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] if latencies else None

    print(json.dumps({"answered": len(latencies), "failures": len(failures),
                      "failure_reasons": failures[:5], "p50": pct(50), "p99": pct(99),
                      "max": latencies[-1] if latencies else None}))


if __name__ == "__main__":
    asyncio.run(main())
