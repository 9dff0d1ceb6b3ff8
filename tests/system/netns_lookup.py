"""Times glibc's getaddrinfo through hard, as a host whose /etc/resolv.conf
names hard sees it.  Run under `unshare -mn` (a private network and mount
namespace, as root): it brings loopback up, bind-mounts a resolv.conf
naming 127.0.0.1 over /etc/resolv.conf, starts hard on 127.0.0.1:53 with
the given configuration (its nameservers on loopback in the namespace),
runs `getent ahosts NAME` (AF_UNSPEC: A and AAAA sent together from one
socket) the given number of times, stops hard, and prints one JSON
object: each run's seconds, exit status and output, and hard's log.

usage: netns_lookup.py WORKDIR CONFIG_FILE NAME COUNT
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def main():
    workdir, config_file, name, count = sys.argv[1:5]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    resolv = os.path.join(workdir, "resolv.conf")
    with open(resolv, "w") as f:
        f.write("nameserver 127.0.0.1\n")
    subprocess.run(["mount", "--bind", resolv, "/etc/resolv.conf"], check=True)
    with open(config_file) as f:
        config = f.read()
    h = harness.Hard(workdir, config, ["127.0.0.1"], 53)
    runs = []
    try:
        h.wait_ready()
        for _ in range(int(count)):
            t0 = time.monotonic()
            r = subprocess.run(["getent", "ahosts", name], capture_output=True,
                               text=True, timeout=60)
            runs.append({"seconds": time.monotonic() - t0,
                         "status": r.returncode, "output": r.stdout})
    finally:
        h.stop()
    print(json.dumps({"runs": runs, "log": h.log()}))


if __name__ == "__main__":
    main()
