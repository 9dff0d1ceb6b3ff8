"""hard under valgrind (issue 6): a short load of configured, forwarded, TCP
and malformed queries, HTTP and TCP checks, a reload and a clean stop must
report no invalid access and no leak."""

import os
import re
import signal
import subprocess
import time

import pytest

import harness
from harness import addresses

VALGRIND = "/usr/bin/valgrind"	# contrib/install-deps test installs it


def config_body(http, listener, ttl):
    return """
resolver_timeout = 0.5
name web.test {
    check_frequency = 0.25
    check_timeout = 3
    selection_method = group_rtt_rr
    ttl = %d
    candidate web { check_address = "%s" }
    candidate six { address = { ::1 } check_address = "http://[::1]:%d/" }
}
name port.test {
    check_method = tcp
    check_frequency = 0.25
    check_timeout = 3
    failure_mode = servfail
    candidate tcp { check_address = "127.0.0.3:%d" }
}
""" % (ttl, http.url(), http.port, listener.port)


@pytest.mark.skipif(os.environ.get("HAR_SANITIZED") == "1",
                    reason="valgrind cannot run a binary built with ASan")
def test_no_leak_or_invalid_access(workdir, upstream, start_http,
                                   start_listener):
    http = start_http("127.0.0.2")
    listener = start_listener("127.0.0.3", kind="accept")
    port = harness.free_port()
    data_file = os.path.join(workdir, "har.db")
    conf = os.path.join(workdir, "har.conf")
    with open(conf, "w") as f:
        f.write(harness.hard_config(config_body(http, listener, 5),
                                    upstream.endpoint, port,
                                    data_file=data_file))
    log = os.path.join(workdir, "valgrind.log")
    proc = subprocess.Popen(
        [VALGRIND, "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
         "--error-exitcode=9", "--log-file=" + log, harness.HARD, "-f", "-c", conf],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        harness.wait_until(
            lambda: addresses(harness.query_at("127.0.0.1", port, "web.test",
                                               timeout=1)),
            30, what="hard under valgrind to answer web.test")
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            # valgrind runs hard many times slower: generous timeouts
            assert addresses(harness.query_at("127.0.0.1", port, "web.test",
                                              timeout=8)) == ["127.0.0.2"]
            harness.query_at("127.0.0.1", port, "fwd.test", tcp=True, timeout=8)
            harness.query_at("127.0.0.1", port, "port.test", "AAAA", timeout=8)
            harness.udp_exchange("127.0.0.1", port, b"\x00\x01garbage", 0.3)
        with open(conf, "w") as f:
            f.write(harness.hard_config(config_body(http, listener, 9),
                                        upstream.endpoint, port,
                                        data_file=data_file))
        os.kill(proc.pid, signal.SIGHUP)
        harness.wait_until(
            lambda: harness.query_at("127.0.0.1", port, "web.test",
                                     timeout=5).answer[0].ttl == 9,
            30, what="the reload to take effect")
        os.kill(proc.pid, signal.SIGTERM)
        status = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    report = open(log).read()
    assert status == 0, report[-6000:]
    assert re.search(r"ERROR SUMMARY: 0 errors", report), report[-6000:]
    assert re.search(r"definitely lost: 0 bytes|no leaks are possible", report), \
        report[-6000:]
