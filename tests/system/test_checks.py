"""Health checks, candidate resolution and ranking (issue 3, SPEC sections 3
and 5), driven through DNS answers while the test changes real HTTP/TCP
servers on 127.0.0.2, 127.0.0.3, ... and ::1."""

import socket
import struct
import time

import dns.flags
import dns.message
import dns.rdatatype
import pytest

import harness
from harness import addresses, answer, wait_answer
from statehelpers import wait_log

A, B, C = "127.0.0.2", "127.0.0.3", "127.0.0.4"


def name_block(title, candidates, **opts):
    """candidates: [(candidate title, check_address, extra lines)]."""
    opts.setdefault("check_frequency", 0.2)
    # generous, so a slow check on a loaded machine does not flap a healthy
    # server; dead servers refuse connections and fail at once anyway
    opts.setdefault("check_timeout", 1)
    lines = ["name %s {" % title]
    lines += ["    %s = %s" % kv for kv in opts.items()]
    for cand, url, *extra in candidates:
        lines.append('    candidate "%s" {' % cand)
        if url:
            lines.append('        check_address = "%s"' % url)
        lines += ["        " + e for e in extra]
        lines.append("    }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def assert_stays(h, name, expected, duration, rdtype="A"):
    end = time.monotonic() + duration
    while time.monotonic() < end:
        got = answer(h, name, rdtype)
        assert got == expected, "%s %s: %s, wanted %s all along" % (
            name, rdtype, got, expected)
        time.sleep(0.05)


@pytest.fixture
def up(start_upstream):
    return start_upstream("--host-record=fallback.test,192.0.2.77,2001:db8::77",
                          "--host-record=v4only.test,192.0.2.50,2001:db8::50")


def test_failover_when_answered_server_dies(start_hard, start_http, up):
    sa, sb = start_http(A), start_http(B)
    freq, fall = 0.2, 1
    h = start_hard(name_block("www.test", [("a", sa.url()), ("b", sb.url())],
                              fall=fall, rise=1, failure_mode="servfail"),
                   upstream=up)
    def one_answered():
        got = answer(h, "www.test")
        return got if got in ([A], [B]) else None
    first = harness.wait_until(one_answered, 5, what="one healthy address answered")
    dead, other = (sa, sb) if first == [A] else (sb, sa)
    dead.stop()
    took = wait_answer(h, "www.test", [other.addr], timeout=5)
    # frequency x fall (a refused check is instant), and slack for a loaded
    # machine
    limit = freq * fall + 2.0
    assert took <= limit, "failover took %.2fs, limit %.2fs" % (took, limit)
    assert_stays(h, "www.test", [other.addr], 0.6)


def test_rise_and_fall(start_hard, start_http, up):
    sa, sb = start_http(A), start_http(B)
    freq, rise, fall = 0.2, 3, 2
    h = start_hard(name_block("www.test", [("a", sa.url()), ("b", sb.url())],
                              rise=rise, fall=fall, selection_method="all",
                              failure_mode="servfail"), upstream=up)
    wait_answer(h, "www.test", [A, B])
    sb.stop()
    took = wait_answer(h, "www.test", [A], timeout=5)
    assert took >= (fall - 1) * freq * 0.6, "down after %.2fs: fall = 2 ignored?" % took
    sb.start()
    took = wait_answer(h, "www.test", [A, B], timeout=5)
    assert took >= (rise - 1) * freq * 0.75, "back after %.2fs: rise = 3 ignored?" % took
    assert took <= rise * freq + freq + 3.0


def test_best_rtt_picks_fastest(start_hard, start_http, up):
    # delays far above a loaded machine's jitter in a check's RTT
    sa, sb = start_http(A, delay=0.3), start_http(B)
    h = start_hard(name_block("www.test", [("a", sa.url()), ("b", sb.url())],
                              check_timeout=1, failure_mode="servfail"), upstream=up)
    wait_answer(h, "www.test", [B])
    assert_stays(h, "www.test", [B], 0.6)
    r = h.query("www.test", "A")
    assert r.flags & dns.flags.AA and len(r.answer[0]) == 1
    sa.set(delay=0)
    sb.set(delay=0.4)
    wait_answer(h, "www.test", [A], timeout=5)


def test_group_rtt_rr_rotation(start_hard, start_http, up):
    sa, sb, sc = start_http(A), start_http(B), start_http(C, delay=0.3)
    h = start_hard(name_block("rr.test", [("a", sa.url()), ("b", sb.url()),
                                          ("c", sc.url())],
                              check_timeout=1, selection_method="group_rtt_rr",
                              group_rtt_threshold=0.1, failure_mode="servfail"),
                   upstream=up)

    def both_seen():
        return {tuple(answer(h, "rr.test")) for _ in range(6)} == {(A,), (B,)}
    harness.wait_until(both_seen, 5, interval=0.05, what="rotation over a and b")
    seq = []
    for i in range(20):
        r = h.query("rr.test", "A", tcp=(i % 5 == 4))
        got = addresses(r)
        assert len(got) == 1, "group_rtt_rr answers one address: %s" % got
        seq.append(got[0])
    assert C not in seq, "c (300 ms slower) is outside the threshold: %s" % seq
    changes = sum(x != y for x, y in zip(seq, seq[1:]))
    assert changes >= 16, "not round-robin: %s" % seq


def test_max_rtt_excludes_slow(start_hard, start_http, up):
    # b's smoothed RTT stays below max_rtt unless a check of it is slowed
    # by a whole second, which a loaded machine does not do
    sa, sb = start_http(A, delay=0.6), start_http(B)
    h = start_hard(name_block("www.test", [("a", sa.url()), ("b", sb.url())],
                              check_timeout=1, max_rtt=0.3, selection_method="all",
                              failure_mode="servfail"), upstream=up)
    wait_answer(h, "www.test", [B])
    assert_stays(h, "www.test", [B], 0.8)
    sb.stop()  # a is healthy but too slow: nothing is available
    wait_answer(h, "www.test", "SERVFAIL")
    sa.set(delay=0)  # its smoothed RTT falls below max_rtt within a few checks
    wait_answer(h, "www.test", [A], timeout=5)


def test_failure_mode_none_forwards(start_hard, start_http, up):
    sa = start_http(A)
    h = start_hard(name_block("fallback.test", [("a", sa.url())], failure_mode="none"),
                   upstream=up)
    wait_answer(h, "fallback.test", [A])
    assert h.query("fallback.test").flags & dns.flags.AA
    sa.stop()
    wait_answer(h, "fallback.test", ["192.0.2.77"])  # the upstream's record
    r = h.query("fallback.test", "A")
    assert r.answer[0].ttl == 77
    # no IPv6 candidate at all: NODATA, never the upstream's AAAA
    r = h.query("fallback.test", "AAAA")
    assert harness.rcode_text(r) == "NOERROR" and r.answer == []
    sa.start()
    wait_answer(h, "fallback.test", [A])


def test_failure_mode_all_fails_open(start_hard, start_http, up):
    sa, sb = start_http(A), start_http(B, delay=0.05)
    h = start_hard(name_block("open.test", [("a", sa.url()), ("b", sb.url())],
                              check_timeout=1, failure_mode="all"), upstream=up)
    wait_answer(h, "open.test", [A])
    sa.stop()
    wait_answer(h, "open.test", [B])
    sb.stop()
    wait_answer(h, "open.test", [A, B])
    r = h.query("open.test", "A")
    assert r.flags & dns.flags.AA and r.answer[0].ttl == 0


def test_failure_mode_servfail(start_hard, start_http, up):
    sa = start_http(A)
    h = start_hard(name_block("sf.test", [("a", sa.url())], failure_mode="servfail",
                              ttl=9), upstream=up)
    wait_answer(h, "sf.test", [A])
    assert h.query("sf.test").answer[0].ttl == 9
    sa.stop()
    wait_answer(h, "sf.test", "SERVFAIL")
    r = h.query("sf.test", "A", tcp=True)
    assert harness.rcode_text(r) == "SERVFAIL"
    sa.start()
    wait_answer(h, "sf.test", [A])


def test_unknown_until_first_check(start_hard, start_http, up):
    # slow enough that a loaded machine still asks before the check is done
    sa = start_http(A, delay=3.0)
    h = start_hard(name_block("slow.test", [("a", sa.url())], failure_mode="servfail",
                              check_frequency=10, check_timeout=6), upstream=up)
    # no check has completed yet: the address is unknown, not available
    assert answer(h, "slow.test") == "SERVFAIL"
    wait_answer(h, "slow.test", [A], timeout=10)


def test_expect_status(start_hard, start_http, up):
    s = start_http(A)
    body = "".join(
        name_block(t, [("a", s.url())], failure_mode="servfail", **opts)
        for t, opts in [("default.test", {}), ("s503.test", {"expect_status": "{ 503 }"}),
                        ("s301.test", {"expect_status": "{ 200, 301 }"})])
    h = start_hard(body, upstream=up)
    wait_answer(h, "default.test", [A])
    wait_answer(h, "s301.test", [A])
    assert answer(h, "s503.test") == "SERVFAIL"
    s.set(status=503)
    wait_answer(h, "default.test", "SERVFAIL")
    wait_answer(h, "s503.test", [A])
    wait_answer(h, "s301.test", "SERVFAIL")
    s.set(status=301)  # redirects are not followed: 301 is just a status
    wait_answer(h, "s301.test", [A])
    wait_answer(h, "default.test", "SERVFAIL")
    wait_answer(h, "s503.test", "SERVFAIL")
    # the checks identify themselves
    agents = {req[2] for req in s.request_log()}
    assert agents == {"har/0.1.0"}, agents


def test_tcp_checks(start_hard, start_listener, up):
    la, lb = start_listener(A), start_listener(B)
    body = name_block("tcp.test", [("a", "tcp://%s:%d" % (A, la.port)),
                                   ("b", "%s:%d" % (B, lb.port))],
                      check_method="tcp", selection_method="all",
                      failure_mode="servfail")
    h = start_hard(body, upstream=up)
    wait_answer(h, "tcp.test", [A, B])
    la.close()
    wait_answer(h, "tcp.test", [B])
    lb.close()
    wait_answer(h, "tcp.test", "SERVFAIL")
    la.reopen()
    wait_answer(h, "tcp.test", [A])
    lb.reopen()
    wait_answer(h, "tcp.test", [A, B])


def test_server_that_stops_answering(start_hard, start_http, up):
    """A server that accepts but never answers: timeout, then down."""
    sa, sb = start_http(A), start_http(B)
    # check_timeout is long beside the frequency: the check that times out
    # may have connected a little before the server was made to hang (it
    # reads its control file per request), so "down" can come a little
    # sooner than check_timeout after the change; a check that did not
    # wait for its timeout would fail within a frequency.
    freq, timeout = 0.3, 1.5
    h = start_hard(name_block("hang.test", [("a", sa.url()), ("b", sb.url())],
                              check_frequency=freq, check_timeout=timeout,
                              selection_method="all", failure_mode="servfail"),
                   upstream=up)
    wait_answer(h, "hang.test", [A, B])
    sa.set(delay=30)
    took = wait_answer(h, "hang.test", [B], timeout=10)
    assert took >= timeout - 0.5, \
        "down after %.2fs, before check_timeout %.1f s ran out" % (took, timeout)
    assert took <= freq + timeout + 2.0
    assert_stays(h, "hang.test", [B], 0.8)
    sa.set(delay=0)
    wait_answer(h, "hang.test", [A, B], timeout=10)


def test_listener_that_never_accepts(start_hard, start_http, start_listener, up):
    hang = start_listener(A, kind="hang")
    good = start_http(B)
    # A query waiting behind a hanging check would wait about check_timeout
    # (1 s); a loaded machine may delay one by a fraction of that.
    h = start_hard(name_block("hang.test", [("hang", "http://%s:%d/" % (A, hang.port)),
                                            ("good", good.url())],
                              check_frequency=0.3, check_timeout=1.0,
                              selection_method="all", failure_mode="servfail"),
                   upstream=up)
    wait_answer(h, "hang.test", [B])
    # checks keep timing out; answers stay right and prompt
    end = time.monotonic() + 2.5
    while time.monotonic() < end:
        t0 = time.monotonic()
        assert answer(h, "hang.test") == [B]
        assert time.monotonic() - t0 < 0.5, "a query stalled behind hanging checks"
        time.sleep(0.05)


@pytest.fixture
def certs(workdir):
    return harness.make_certs(workdir)


def test_https_checks_with_test_ca(start_hard, start_http, up, certs):
    cert, key = certs["secure.test"]
    s = start_http(A, cert=cert, key=key)
    body = "".join([
        name_block("secure.test", [("s", s.url("secure.test"), "address = { %s }" % A)],
                   failure_mode="servfail", ca_file='"%s"' % certs["ca"]),
        # the same server, but the URL's host is not in its certificate
        name_block("wronghost.test", [("w", s.url("other.test"), "address = { %s }" % A)],
                   failure_mode="servfail", ca_file='"%s"' % certs["ca"]),
        # the right host, but the system CAs do not know the test CA
        name_block("noca.test", [("n", s.url("secure.test"), "address = { %s }" % A)],
                   failure_mode="servfail"),
    ])
    h = start_hard(body, upstream=up)
    wait_answer(h, "secure.test", [A])
    assert_stays(h, "wronghost.test", "SERVFAIL", 0.8)
    assert answer(h, "noca.test") == "SERVFAIL"
    # SNI and Host carry the URL's host, not the address
    with open(s.requests + ".sni") as f:
        snis = set(f.read().split())
    assert "secure.test" in snis, snis
    hosts = {req[0] for req in s.request_log()}
    assert hosts == {"secure.test:%d" % s.port}, hosts


def test_https_other_host_with_its_own_cert(start_hard, start_http, up, certs):
    cert, key = certs["other.test"]
    s = start_http(B, cert=cert, key=key)
    h = start_hard(name_block("other.test", [("o", s.url("other.test"),
                                              "address = { %s }" % B)],
                              failure_mode="servfail", ca_file='"%s"' % certs["ca"]),
                   upstream=up)
    wait_answer(h, "other.test", [B])


def test_aaaa_from_ipv6_candidate(start_hard, start_http, up):
    s6, s4 = start_http("::1"), start_http(A)
    h = start_hard(name_block("dual.test", [("six", s6.url()), ("four", s4.url())],
                              selection_method="all", failure_mode="servfail", ttl=15),
                   upstream=up)
    wait_answer(h, "dual.test", [A])
    wait_answer(h, "dual.test", ["::1"], rdtype="AAAA")
    r = h.query("dual.test", "AAAA")
    assert r.flags & dns.flags.AA and r.answer[0].ttl == 15
    s6.stop()
    wait_answer(h, "dual.test", "SERVFAIL", rdtype="AAAA")
    assert answer(h, "dual.test", "A") == [A]
    s6.start()
    wait_answer(h, "dual.test", ["::1"], rdtype="AAAA")


def test_nodata_for_ipv4_only_name(start_hard, start_http, up):
    s = start_http(A)
    h = start_hard(name_block("v4only.test", [("a", s.url())], ttl=7), upstream=up)
    wait_answer(h, "v4only.test", [A])
    for alive in (True, False):
        for tcp in (False, True):
            r = h.query("v4only.test", "AAAA", tcp=tcp)
            assert harness.rcode_text(r) == "NOERROR"
            assert r.answer == [], "AAAA must be NODATA, not forwarded: %s" % r
            assert r.flags & dns.flags.AA
            soa = [rr for rr in r.authority if rr.rdtype == dns.rdatatype.SOA]
            assert soa and soa[0].ttl == 7 and soa[0][0].minimum == 7
        if alive:
            s.stop()
            wait_answer(h, "v4only.test", ["192.0.2.50"])  # failure_mode none


def test_candidate_host_resolved_through_upstream(start_hard, start_http, start_upstream):
    port = harness.free_port(A, B)
    up = start_upstream("--host-record=cand.test,%s" % A,
                        "--host-record=cand.test,%s" % B)
    sa, sb = start_http(A, port=port), start_http(B, port=port)
    h = start_hard(name_block("svc.test", [("cand.test", "http://cand.test:%d/" % port)],
                              selection_method="all", failure_mode="servfail"),
                   upstream=up)
    wait_answer(h, "svc.test", [A, B])
    sb.stop()
    wait_answer(h, "svc.test", [A])
    for s in (sa, sb):
        hosts = {req[0] for req in s.request_log()}
        assert hosts == {"cand.test:%d" % port}, "Host header: %s" % hosts


def test_candidate_default_check_address(start_hard, start_http, start_upstream):
    """No check_address: http://TITLE/ (port 80 is not ours to use, so the
    candidate is down and the name fails open to the resolved addresses)."""
    up = start_upstream("--host-record=plain.test,127.0.0.5")
    h = start_hard(name_block("def.test", [("plain.test", None)],
                              failure_mode="all"), upstream=up)
    wait_answer(h, "def.test", ["127.0.0.5"])


def test_candidate_addresses_follow_dns_changes(start_hard, start_http, start_upstream):
    port = harness.free_port(A, B)
    # restarted on its port below: one below the ephemeral range, so no
    # client socket can take it meanwhile
    up = start_upstream("--host-record=moving.test,%s" % A, ttl=1,
                        port=harness.dead_port())
    start_http(A, port=port), start_http(B, port=port)
    h = start_hard(name_block("svc.test", [("moving", "http://moving.test:%d/" % port)],
                              selection_method="all", failure_mode="servfail"),
                   upstream=up)
    wait_answer(h, "svc.test", [A])
    # the upstream goes away: resolution fails, the known address stays
    up.stop()
    assert_stays(h, "svc.test", [A], 2.0)
    # it comes back with another address: A vanishes, B appears
    start_upstream("--host-record=moving.test,%s" % B, ttl=1, port=up.port)
    # A failed resolution is retried after 5 s (check.c RESOLVE_RETRY), and
    # may itself have waited resolver_total_timeout (3 s): about 9 s at
    # worst, doubled for a loaded machine.
    wait_answer(h, "svc.test", [B], timeout=20)
    h.assert_alive()


@pytest.mark.parametrize("host", ["nx.test", "refused.invalid"],
                         ids=["nxdomain", "refused"])
def test_unresolvable_candidate_takes_failure_mode(start_hard, start_http,
                                                   start_upstream, host):
    """A candidate whose host does not resolve has addresses nobody could
    check, not "no address": failure_mode applies to A and AAAA, never a
    (cacheable) NODATA."""
    up = start_upstream("--host-record=lost.test,192.0.2.80,2001:db8::80",
                        "--host-record=lostall.test,192.0.2.81,2001:db8::81")
    url = "http://%s:%d/" % (host, harness.dead_port())
    h = start_hard(name_block("lostsf.test", [("gone", url)], ttl=30,
                              failure_mode="servfail")
                   + name_block("lost.test", [("gone", url)], ttl=30)
                   + name_block("lostall.test", [("gone", url)], ttl=30,
                                failure_mode="all"),
                   upstream=up)
    wait_log(h, r"cannot resolve %s" % host, count=3)
    for tcp in (False, True):
        for rdtype in ("A", "AAAA"):
            assert answer(h, "lostsf.test", rdtype, tcp=tcp) == "SERVFAIL"
    # none: forwarded, the upstream's records
    assert answer(h, "lost.test", "A") == ["192.0.2.80"]
    assert answer(h, "lost.test", "AAAA") == ["2001:db8::80"]
    # all, with no address known to fail open to: forwarded as well
    assert answer(h, "lostall.test", "A") == ["192.0.2.81"]
    assert answer(h, "lostall.test", "AAAA") == ["2001:db8::81"]


def test_unresolvable_candidate_beside_a_resolved_one(start_hard, start_http,
                                                      start_upstream):
    """NODATA only when every candidate is resolved and none has an address
    of the family: an IPv4-only server beside an unresolvable host gives
    failure_mode for AAAA; once that host is gone from the file, NODATA."""
    sa = start_http(A)
    up = start_upstream("--host-record=four.test,%s" % A)
    h = start_hard(name_block("mix.test",
                              [("four", "http://four.test:%d/" % sa.port),
                               ("gone", "http://nx.test:%d/" % sa.port)],
                              failure_mode="servfail"),
                   upstream=up)
    wait_answer(h, "mix.test", [A])
    assert answer(h, "mix.test", "AAAA") == "SERVFAIL"
    h2 = start_hard(name_block("mix.test",
                               [("four", "http://four.test:%d/" % sa.port)],
                               failure_mode="servfail", ttl=3),
                    upstream=up)
    wait_answer(h2, "mix.test", [A])
    r = h2.query("mix.test", "AAAA")
    assert harness.rcode_text(r) == "NOERROR" and r.answer == []
    assert r.flags & dns.flags.AA and r.authority[0].ttl == 3


def test_shared_address_answered_once(start_hard, start_http, up):
    """Two candidates checking one address (two ports of one server): one
    record for it (RFC 2181 section 5), and one share of the round-robin."""
    s1, s2, sb = start_http(A), start_http(A), start_http(B)
    h = start_hard(name_block("dup.test", [("one", s1.url()), ("two", s2.url())],
                              selection_method="all", check_frequency=60)
                   + name_block("duprr.test", [("one", s1.url()), ("two", s2.url()),
                                               ("b", sb.url())],
                                selection_method="group_rtt_rr",
                                check_frequency=60),
                   upstream=up)
    wait_log(h, r"address .* is up", count=5)    # every check has passed
    # counted on the wire: dnspython would merge the duplicates
    wire = harness.make_query("dup.test", "A").to_wire()
    reply = h.udp_raw(wire)
    with h.tcp() as s:
        harness.tcp_send(s, wire)
        (length,) = struct.unpack("!H", harness.recv_exact(s, 2))
        tcp_reply = harness.recv_exact(s, length)
    for raw in (reply, tcp_reply):
        assert struct.unpack("!H", raw[6:8])[0] == 1, "ANCOUNT of %r" % raw
        assert addresses(dns.message.from_wire(raw)) == [A]
    seen = [tuple(answer(h, "duprr.test")) for _ in range(40)]
    assert seen.count((A,)) == seen.count((B,)) == 20, seen


# --------------------------------------- closing with a reset (issue 12)


def time_wait_sockets(addr, port):
    """Sockets in TIME_WAIT with addr:port (IPv4) at either end
    (/proc/net/tcp).  The address too, not the port alone: another test's
    connection may have the same port number on another address."""
    # /proc/net/tcp prints the address as the 32-bit number read in host order
    endpoint = "%08X:%04X" % (struct.unpack("=I", socket.inet_aton(addr))[0], port)
    found = []
    with open("/proc/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if state == "06" and endpoint in (local, remote):
                found.append(line)
    return found


@pytest.mark.parametrize("method", ["tcp", "http"])
def test_checks_close_with_a_reset(start_hard, start_listener, start_http, up, method):
    """A decided check's connection is reset, not closed with FINs: neither
    hard nor the server keeps a TIME_WAIT socket per check."""
    if method == "tcp":
        server = start_listener(A)
        url = "tcp://%s:%d" % (A, server.port)
    else:
        server = start_http(A)
        url = server.url()
    h = start_hard(name_block("reset.test", [("a", url)], check_method=method,
                              check_frequency=0.1, failure_mode="servfail"), upstream=up)
    wait_answer(h, "reset.test", [A])
    time.sleep(1.0)  # about ten checks
    assert answer(h, "reset.test") == [A]
    assert time_wait_sockets(A, server.port) == []
