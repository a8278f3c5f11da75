"""What a verified download costs, against curl on the same file from the same loopback server:

    .venv/bin/python benchmarks/download.py [--size-mb 256] [--repeats 3]

- throughput: `dsu.catalog.download.fetch` (streams to a part file, sha256 as the bytes arrive, size
  and hash checked, atomic rename) vs `curl -s -o FILE URL` (writes only), best of --repeats each,
  alternated; the ratio is DSU / curl;
- verification per GB: sha256 of an installed file read back from the page cache (what `dsu models
  verify` and a re-download of an installed model pay), and the hashing alone on bytes in memory (what
  the streamed hash adds to a download's CPU time).

The server is `python -m http.server` in its own process (so it shares no interpreter lock with the
client measured), which bounds the absolute figures; the ratio is the point.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dsu.catalog import download

MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port: int) -> None:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the http.server did not start")


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("curl") is None:
        print("curl is not installed", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="dsu-bench-download-") as tmp:
        tmp = Path(tmp)
        source = tmp / "served.bin"
        with open(source, "wb") as f:
            for _ in range(args.size_mb):
                f.write(os.urandom(MiB))
        digest = download.sha256_of(source).hexdigest()
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                   "--directory", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}/served.bin"
        wait_for(port)
        expected = download.Expected(args.size_mb * MiB, digest)

        def dsu_fetch():
            dest = tmp / "dsu.bin"
            dest.unlink(missing_ok=True)
            download.fetch(url, dest, expected)

        def curl_fetch():
            subprocess.run(["curl", "-s", "-o", str(tmp / "curl.bin"), url], check=True)

        dsu_times, curl_times = [], []
        for _ in range(args.repeats):
            curl_times.append(best(curl_fetch, 1))
            dsu_times.append(best(dsu_fetch, 1))
        t_dsu, t_curl = min(dsu_times), min(curl_times)
        gb = args.size_mb * MiB / 1e9
        reread = best(lambda: download.sha256_of(tmp / "dsu.bin"), args.repeats)
        block = os.urandom(64 * MiB)
        in_memory = best(lambda: hashlib.sha256(block).digest(), args.repeats) * (args.size_mb / 64)
        server.terminate()
        server.wait()
        print(f"file: {args.size_mb} MiB from 127.0.0.1 (python -m http.server), best of {args.repeats}")
        print(f"{'':28}{'seconds':>10}{'MB/s':>10}")
        print(f"{'curl -s -o':28}{t_curl:10.2f}{gb * 1000 / t_curl:10.0f}")
        print(f"{'dsu fetch (hash + checks)':28}{t_dsu:10.2f}{gb * 1000 / t_dsu:10.0f}")
        print(f"throughput ratio dsu / curl: {t_curl / t_dsu:.2f}")
        print(f"verification per GB: re-read + sha256 {reread / gb:.2f} s/GB; sha256 alone {in_memory / gb:.2f} s/GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
