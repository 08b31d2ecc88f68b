#!/usr/bin/env python3
"""How long the sidecar's postStart hook holds the agent back: starts a
sidecar (release build) and, at once, `wopr-operator sidecar-ready` as the
kubelet would run the hook, and times from the sidecar's start to the hook's
return. Prints the median and the maximum of 20 runs (docs/performance.md).

    cargo build --release && python3 hack/measure-sidecar-ready.py
"""

import os
import socket
import statistics
import subprocess
import tempfile
import time

BINARY = "target/release/wopr-operator"
RUNS = 20


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def one_run():
    work = tempfile.mkdtemp()
    with open(os.path.join(work, "token"), "w") as token:
        token.write("token")
    os.mkdir(os.path.join(work, "workspace"))
    health = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    sidecar = subprocess.Popen(
        [BINARY, "sidecar", "--session", "s", "--namespace", "n",
         # No control plane: the hook does not wait for one.
         "--control-plane-address", "127.0.0.1:1",
         "--token-path", os.path.join(work, "token"),
         "--socket-path", os.path.join(work, "a2a.sock"),
         "--mcp-address", "127.0.0.1:0",
         "--health-address", health,
         "--workspace", os.path.join(work, "workspace")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        subprocess.run([BINARY, "sidecar-ready", f"--health-address={health}"],
                       check=True, stdout=subprocess.DEVNULL)
        return (time.monotonic() - started) * 1000
    finally:
        sidecar.kill()
        sidecar.wait()


def main():
    results = [one_run() for _ in range(RUNS)]
    print(f"sidecar start -> sidecar-ready returns: median {statistics.median(results):.1f} ms, "
          f"max {max(results):.1f} ms ({RUNS} runs)")


if __name__ == "__main__":
    main()
