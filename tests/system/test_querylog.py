"""The query log (hard.8 QUERY LOG): one line per query with the client's
address and port, the transport, the name and type, and what hard did.  On
with -d or log_queries, toggled by SIGUSR1, off otherwise."""

import re
import signal
import socket
import struct
import time

import harness

NAMES = """
name www.test {
    check_method = tcp
    check_frequency = 0.5
    candidate "web1" { check_address = "127.0.1.1:%(http)d" }
}
name down.test {
    check_method = tcp
    failure_mode = %(mode)s
    candidate "dead" { check_address = "127.0.1.2:%(dead)d" }
}
name four.test {
    check_method = tcp
    candidate "v4" { check_address = "127.0.1.1:%(http)d" }
}
"""


def config(start_http, mode="servfail"):
    web = start_http("127.0.1.1")
    return NAMES % {"http": web.port, "dead": harness.dead_port("127.0.1.2"),
                    "mode": mode}


def query_lines(h):
    return [l for l in h.log().splitlines() if l.startswith("hard: query ")]


def wait_line(h, pattern, timeout=8.0):
    rx = re.compile(pattern)
    return harness.wait_until(
        lambda: [l for l in query_lines(h) if rx.search(l)], timeout,
        what="a query log line matching %r; log:\n%s" % (pattern, h.log()[-3000:]))


def client_port(sock):
    return sock.getsockname()[1]


def udp_query(h, name, rdtype="A", payload=None, wait=5):
    """One query from a socket whose port the test knows; returns the port.
    wait: how long to wait for a reply (a dropped query gets none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(wait)
        wire = payload if payload is not None else \
            harness.make_query(name, rdtype).to_wire()
        s.sendto(wire, (h.addr, h.port))
        try:
            s.recvfrom(65535)
        except socket.timeout:
            pass
        return client_port(s)


def test_every_kind_of_query_logged(start_hard, start_http, upstream):
    h = start_hard(config(start_http), upstream=upstream)
    harness.wait_answer(h, "www.test", ["127.0.1.1"])
    port = udp_query(h, "www.test")
    wait_line(h, r"query 127\.0\.0\.1:%d UDP www\.test\. A: answered: NOERROR 127\.0\.1\.1$" % port)
    port = udp_query(h, "four.test", "AAAA")
    wait_line(h, r"query 127\.0\.0\.1:%d UDP four\.test\. AAAA: NODATA: NOERROR$" % port)
    harness.wait_answer(h, "down.test", "SERVFAIL")
    port = udp_query(h, "down.test")
    wait_line(h, r":%d UDP down\.test\. A: no address available, failure_mode servfail: SERVFAIL" % port)
    port = udp_query(h, "fwd.test", "TXT")
    wait_line(h, r":%d UDP fwd\.test\. TXT: forwarded: upstream NOERROR$" % port)
    port = udp_query(h, "nothere.test")
    wait_line(h, r":%d UDP nothere\.test\. A: forwarded: upstream NXDOMAIN$" % port)
    # bad input: too short, a response, a malformed question
    port = udp_query(h, None, payload=b"\x00\x01\x02", wait=0.1)
    wait_line(h, r":%d UDP - -: dropped: shorter than a DNS header" % port)
    response = harness.make_query("www.test").to_wire()
    response = response[:2] + bytes([response[2] | 0x80]) + response[3:]
    port = udp_query(h, None, payload=response, wait=0.1)
    wait_line(h, r":%d UDP www\.test\. A: dropped: a response" % port)
    port = udp_query(h, None, payload=struct.pack("!6H", 7, 0x0100, 2, 0, 0, 0))
    wait_line(h, r":%d UDP - -: refused as malformed or unsupported: FORMERR" % port)
    # over TCP, with the connection's address and port
    sock = h.tcp()
    try:
        harness.tcp_send(sock, harness.make_query("www.test").to_wire())
        harness.tcp_recv(sock)
        harness.tcp_send(sock, harness.make_query("fwd.test", "MX").to_wire())
        harness.tcp_recv(sock)
        wait_line(h, r"query 127\.0\.0\.1:%d TCP www\.test\. A: answered: NOERROR 127\.0\.1\.1$"
                  % client_port(sock))
        wait_line(h, r":%d TCP fwd\.test\. MX: forwarded: upstream NOERROR$" % client_port(sock))
    finally:
        sock.close()


# Issue 18 item 7: ANY was logged as TYPE255 (ldns names record types
# only); every common type goes by its mnemonic, an unknown one by TYPEnnn.
TYPE_NAMES = ("ANY", "A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV",
              "TXT", "HTTPS", "SVCB", "CAA", "DS", "DNSKEY", "NAPTR", "TLSA",
              "AXFR", "IXFR", "TYPE65280")


def test_query_types_logged_by_name(start_hard, start_http, upstream):
    h = start_hard(config(start_http), upstream=upstream)
    for rdtype in TYPE_NAMES:
        port = udp_query(h, "fwd.test", rdtype, wait=1)
        wait_line(h, r":%d UDP fwd\.test\. %s: " % (port, rdtype))
    port = udp_query(h, "www.test", "ANY")
    wait_line(h, r":%d UDP www\.test\. ANY: " % port)
    assert "TYPE255" not in h.log()


def test_failure_modes_logged(start_hard, start_http, upstream):
    h = start_hard(config(start_http, "all"), upstream=upstream)
    harness.wait_answer(h, "down.test", ["127.0.1.2"])
    port = udp_query(h, "down.test")
    wait_line(h, r":%d UDP down\.test\. A: no address available, failure_mode all: "
                 r"NOERROR 127\.0\.1\.2$" % port)
    h.stop()


def test_failure_mode_none_and_silent_upstream_logged(start_hard, start_http,
                                                      silent_upstream):
    h = start_hard(config(start_http, "none"), upstream=silent_upstream,
                   extra="resolver_total_timeout = 0.5\n")
    harness.wait_until(lambda: "is down" in h.log(), what="the check to fail")
    port = udp_query(h, "down.test")
    wait_line(h, r":%d UDP down\.test\. A: no address available, failure_mode none, "
                 r"forwarded: no upstream reply, SERVFAIL$" % port)


def test_off_without_d_and_toggled_by_sigusr1(start_hard, start_http, upstream):
    h = start_hard(config(start_http), upstream=upstream, args=("-f",))
    harness.wait_answer(h, "www.test", ["127.0.1.1"])
    for _ in range(5):
        udp_query(h, "www.test")
        udp_query(h, "fwd.test")
    time.sleep(0.3)
    assert query_lines(h) == [], "query log on without -d or log_queries"
    h.signal(signal.SIGUSR1)
    harness.wait_until(lambda: "query log on (SIGUSR1)" in h.log(), what="query log on")
    port = udp_query(h, "www.test")
    wait_line(h, r":%d UDP www\.test\. A: answered" % port)
    h.signal(signal.SIGUSR1)
    harness.wait_until(lambda: "query log off (SIGUSR1)" in h.log(), what="query log off")
    before = len(query_lines(h))
    for _ in range(5):
        udp_query(h, "www.test")
    time.sleep(0.3)
    assert len(query_lines(h)) == before


def test_log_queries_option(start_hard, start_http, upstream):
    h = start_hard(config(start_http), upstream=upstream, args=("-f",),
                   extra="log_queries = yes\n")
    harness.wait_answer(h, "www.test", ["127.0.1.1"])
    assert "query log on (log_queries)" in h.log()
    port = udp_query(h, "www.test")
    wait_line(h, r":%d UDP www\.test\. A: answered" % port)
    # a reload that turns the option off turns the log off
    with open(h.conf) as f:
        text = f.read()
    with open(h.conf, "w") as f:
        f.write(text.replace("log_queries = yes", "log_queries = no"))
    h.signal(signal.SIGHUP)
    harness.wait_until(lambda: "query log off (log_queries)" in h.log(),
                       what="the reload to turn the query log off")
    before = len(query_lines(h))
    udp_query(h, "www.test")
    time.sleep(0.3)
    assert len(query_lines(h)) == before


def test_ipv6_client_and_escaped_name(start_hard, start_http, upstream):
    h = start_hard(config(start_http), upstream=upstream, listen=("::1",))
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        s.settimeout(5)
        q = harness.make_query("a\\.b.test", "A")
        s.sendto(q.to_wire(), ("::1", h.port))
        s.recvfrom(65535)
        port = s.getsockname()[1]
    wait_line(h, r"query \[::1\]:%d UDP a\\046b\.test\. A: forwarded" % port)
