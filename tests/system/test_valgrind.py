"""hard under valgrind (issue 6): a short load of configured, forwarded, TCP
and malformed queries, HTTP and TCP checks, a reload and a clean stop must
report no invalid access and no leak.  And (issue 16) HTTP, HTTPS and TCP
checks mixed at check_frequency 0.1, so that pooled curl handles pass from
one kind of check to another, must lose nothing either."""

import os
import re
import signal
import subprocess
import time

import pytest

import harness
from harness import addresses, answer
from statehelpers import name_block

VALGRIND = "/usr/bin/valgrind"	# contrib/install-deps test installs it
SANITIZED = os.environ.get("HAR_SANITIZED") == "1"


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


def start_valgrind(conf, log):
    return subprocess.Popen(
        [VALGRIND, "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
         "--error-exitcode=9", "--log-file=" + log, harness.HARD, "-f", "-c", conf],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)


def stop_valgrind(proc, log):
    """SIGTERM, then valgrind's report must show no error and no leak."""
    try:
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


@pytest.mark.skipif(SANITIZED, reason="valgrind cannot run a binary built with ASan")
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
    proc = start_valgrind(conf, log)
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
    finally:
        stop_valgrind(proc, log)


MIXED_CHECKS = 40	# per HTTP(S) name: every handle passes between kinds


def mixed_body(http, https, full, listener, ca):
    """HTTP, HTTPS with resumed sessions (a share handle per target), HTTPS
    with a full handshake every check (no share) and TCP, all every 0.1 s:
    the pool hands each curl handle to every kind in turn."""
    opts = dict(check_frequency=0.1, check_timeout=5, failure_mode="servfail")
    return (name_block("http.test", [("c", http.url())], **opts) +
            name_block("https.test", [("c", https.url("secure.test"),
                                       "address = { %s }" % https.addr)],
                       ca_file='"%s"' % ca, **opts) +
            name_block("full.test", [("c", full.url("secure.test"),
                                      "address = { %s }" % full.addr)],
                       ca_file='"%s"' % ca, tls_full_handshake_interval=0,
                       **opts) +
            name_block("tcp.test", [("c", "%s:%d" % (listener.addr,
                                                     listener.port))],
                       check_method="tcp", **opts))


def test_mixed_checks_lose_no_memory(workdir, upstream, start_http,
                                     start_listener, start_hard):
    """Issue 16 item 1: a curl handle used without a share handle keeps a
    TLS session cache of its own, which curl dropped (lost) when a later
    HTTPS check gave that handle a share.  Under valgrind, or under LSan
    when built with SANITIZE=1 (start_hard fails on its report at exit)."""
    certs = harness.make_certs(workdir)
    cert, key = certs["secure.test"]
    http = start_http("127.0.0.2")
    https = start_http("127.0.0.3", cert=cert, key=key)
    full = start_http("127.0.0.4", cert=cert, key=key)
    listener = start_listener("127.0.0.5", kind="accept")
    body = mixed_body(http, https, full, listener, certs["ca"])
    servers = (http, https, full)
    if SANITIZED:
        h = start_hard(body, upstream=upstream)
        run_mixed_checks(servers, lambda name: answer(h, name, timeout=5))
        assert h.stop() == 0
        return
    port = harness.free_port()
    conf = os.path.join(workdir, "har.conf")
    with open(conf, "w") as f:
        f.write(harness.hard_config(body, upstream.endpoint, port))
    log = os.path.join(workdir, "valgrind.log")
    proc = start_valgrind(conf, log)
    try:
        # valgrind runs hard many times slower: generous timeouts
        run_mixed_checks(servers, lambda name: answer_at(port, name))
    finally:
        stop_valgrind(proc, log)


def answer_at(port, name):
    r = harness.query_at("127.0.0.1", port, name, timeout=8)
    rcode = harness.rcode_text(r)
    return sorted(addresses(r)) if rcode == "NOERROR" else rcode


def run_mixed_checks(servers, ask):
    """Every name answers its server once checked; then each HTTP(S) server
    sees MIXED_CHECKS more checks, and every name still answers it."""
    expected = {"http.test": ["127.0.0.2"], "https.test": ["127.0.0.3"],
                "full.test": ["127.0.0.4"], "tcp.test": ["127.0.0.5"]}

    def all_up():
        return all(ask(name) == want for name, want in expected.items())
    harness.wait_until(all_up, 60, interval=0.2, what="every name to be up")
    seen = [len(s.requests_seen()) for s in servers]
    harness.wait_until(lambda: all(len(s.requests_seen()) >= n + MIXED_CHECKS
                                   for s, n in zip(servers, seen)), 120,
                       interval=0.2,
                       what="%d more checks of each HTTP(S) server" % MIXED_CHECKS)
    assert {name: ask(name) for name in expected} == expected
