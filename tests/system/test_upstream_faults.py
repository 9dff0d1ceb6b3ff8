"""Forwarding when the upstream misbehaves (issue 16 items 2, 4, 5, 6 and 8;
har.conf.5 FORWARDING): a silent upstream gets a few tries per query from
a bounded number of sockets; a reply larger than 512 bytes is relayed from
the one UDP exchange; a refusing upstream answers every query in flight
at once, glibc's A and AAAA pair included; while every nameserver is down
a query waits resolver_timeout at most; extended rcodes are logged and
counted whole."""

import collections
import os
import select
import socket
import subprocess
import time

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

import harness
import namespace
from namespace import run_in_namespace, set_resolv_conf
from harness import addresses
from statehelpers import sql, wait_log, wait_sql

CONFIGURED = """
name www.test {
    failure_mode = all
    candidate "web1" { check_address = "http://127.0.1.1:%d/" }
}
"""
HERE = os.path.dirname(os.path.abspath(__file__))


def configured():
    return CONFIGURED % harness.dead_port()


def open_descriptors(h):
    return len(os.listdir("/proc/%d/fd" % h.pid))


def settled(read, quiet=0.5, timeout=10):
    """read()'s value once it has not changed for `quiet` seconds."""
    value, since = read(), time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return value
    raise AssertionError("no settled value within %.0f s (last %r)" % (timeout, value))


# ------------------------------------------------------- item 2: tries


def test_silent_upstream_gets_three_tries_not_one_per_timeout(
        start_hard, start_scripted_upstream):
    """resolver_timeout 0.05 s, resolver_total_timeout 2 s: the query is
    sent three times (0, 0.05 and 0.1 s), then waited for; it was sent
    every 0.05 s, 40 times."""
    up = start_scripted_upstream(silent=True)
    h = start_hard(configured(), upstream=up.endpoint,
                   extra="resolver_timeout = 0.05\nresolver_total_timeout = 2\n")
    r = h.query("lost.test", "A", timeout=10)
    assert harness.rcode_text(r) == "SERVFAIL"
    sent = settled(lambda: len(up.queries("lost.test.")))
    assert 1 <= sent <= 3, "the query was sent %d times" % sent


def test_more_than_three_nameservers_each_asked_once(
        start_hard, start_scripted_upstream):
    """With more nameservers than three tries, each gets the query once."""
    silent = [start_scripted_upstream(silent=True) for _ in range(4)]
    h = start_hard(configured(), upstream=[s.endpoint for s in silent],
                   extra="resolver_timeout = 0.1\nresolver_total_timeout = 2\n")
    assert harness.rcode_text(h.query("lost.test", "A", timeout=10)) == "SERVFAIL"
    asked = settled(lambda: [len(s.queries("lost.test.")) for s in silent])
    assert asked == [1, 1, 1, 1], asked


def test_silent_upstream_load_is_bounded(start_hard, start_scripted_upstream):
    """The issue's case: resolver_timeout 0.01 and 1,000 client queries to
    a silent upstream.  It was 48,597 datagrams from 1,519 ports and 1,526
    descriptors; now at most 3 datagrams per query, fewer ports than
    queries, and at most 256 UDP sockets open at once."""
    queries = 1000
    up = start_scripted_upstream(silent=True)
    h = start_hard(configured(), upstream=up.endpoint,
                   extra="resolver_timeout = 0.01\n")
    before = open_descriptors(h)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(10)]
    answered, most = 0, before
    try:
        for s in socks:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for i in range(queries):
            socks[i % len(socks)].sendto(
                harness.make_query("q%d.test" % i, "A").to_wire(), (h.addr, h.port))
            if i % 50 == 49:
                most = max(most, open_descriptors(h))
        # Every query gets SERVFAIL within resolver_total_timeout (3 s)
        # of hard reading it; a query a loaded machine dropped gets none.
        deadline = time.monotonic() + 20
        while answered < queries and time.monotonic() < deadline:
            most = max(most, open_descriptors(h))
            ready, _, _ = select.select(socks, [], [], 0.05)
            for s in ready:
                r = dns.message.from_wire(s.recv(65535))
                assert harness.rcode_text(r) == "SERVFAIL"
                answered += 1
    finally:
        for s in socks:
            s.close()
    assert answered >= queries * 0.95, answered
    received = settled(lambda: len(up.queries()))
    per_name = collections.Counter(q[2] for q in up.queries())
    ports = collections.Counter(q[1] for q in up.queries())
    assert max(per_name.values()) <= 3, per_name.most_common(3)
    assert received <= 3 * queries, received
    assert len(ports) < queries, "%d source ports for %d datagrams" % (len(ports), received)
    assert max(ports.values()) <= 32, ports.most_common(3)
    assert most - before <= 256 + 4, \
        "%d descriptors open at most, %d before" % (most, before)
    h.assert_alive()


# -------------------------------------------------- item 4: large UDP


def big_txt(query):
    """A reply of about 1,000 bytes for TXT, an A otherwise."""
    r = dns.message.make_response(query)
    name = query.question[0].name
    if query.question[0].rdtype == dns.rdatatype.TXT:
        strings = " ".join('"%s"' % (chr(97 + i) * 190) for i in range(5))
        r.answer.append(dns.rrset.from_text(name, 60, "IN", "TXT", strings))
    else:
        r.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "192.0.2.77"))
    return r


def test_large_udp_reply_relayed_from_udp_only_upstream(
        start_hard, start_scripted_upstream, workdir):
    """A 1,000-byte reply to a client that offered 1,232 bytes comes
    from the one UDP exchange, with an upstream that has no TCP listener
    (c-ares took any UDP reply over 512 bytes for a truncated one, asked
    again over TCP, was refused: SERVFAIL and the server marked down)."""
    up = start_scripted_upstream()
    up.reply_with = big_txt
    db = os.path.join(workdir, "har.db")
    h = start_hard(configured(), upstream=up.endpoint, data_file=db)
    for i in range(3):
        r = h.query("big%d.test" % i, "TXT", edns=0, payload=1232, timeout=5)
        assert harness.rcode_text(r) == "NOERROR"
        assert not r.flags & dns.flags.TC
        size = len(r.to_wire())
        assert 900 < size <= 1232, size
        assert sum(len(s) for s in r.answer[0][0].strings) == 950
    assert len(up.queries("big0.test.")) == 1
    rows = wait_sql(db, "SELECT up, errors FROM nameservers", lambda r: r)
    assert rows == [{"up": 1, "errors": 0}], rows
    assert "asking the other nameservers first" not in h.log()


def test_tcp_refusal_of_a_udp_only_upstream_does_not_mark_it_down(
        start_hard, start_scripted_upstream, workdir):
    """A client's query over TCP (after a truncated reply, say) to an
    upstream that answers UDP only is refused over TCP: that query gets
    SERVFAIL at once, but the nameserver, which has just answered over
    UDP, is not marked down, and UDP queries go on being forwarded to it
    as before (the original marked it down: "asking the other nameservers
    first", and the data file said up 0)."""
    up = start_scripted_upstream()
    db = os.path.join(workdir, "har.db")
    h = start_hard(configured(), upstream=up.endpoint, data_file=db)
    assert addresses(h.query("first.test", timeout=5)) == [up.address]
    r = h.query("over-tcp.test", tcp=True, timeout=5)
    assert harness.rcode_text(r) == "SERVFAIL"
    assert addresses(h.query("after.test", timeout=5)) == [up.address]
    rows = wait_sql(db, "SELECT up FROM nameservers", lambda r: r)
    assert rows == [{"up": 1}], rows
    assert "until it answers again" not in h.log(), h.log()[-2000:]


def test_truncated_upstream_reply_relayed_with_tc(start_hard, start_scripted_upstream):
    """An upstream's truncated reply goes to the client as it is, TC set,
    and the client asks again over TCP (here a UDP-only upstream, so that
    TCP query is refused: SERVFAIL), and its nameserver is not marked down
    for a UDP reply that came."""
    up = start_scripted_upstream()

    def truncated(query):
        r = dns.message.make_response(query)
        r.flags |= dns.flags.TC
        return r
    up.reply_with = truncated
    h = start_hard(configured(), upstream=up.endpoint)
    r = h.query("cut.test", "A", timeout=5)
    assert r.flags & dns.flags.TC and harness.rcode_text(r) == "NOERROR"
    assert len(up.queries("cut.test.")) == 1
    assert "asking the other nameservers first" not in h.log()


# -------------------------------------------------- item 5: refusals


@pytest.mark.parametrize("then", ["nothing", "live"])
def test_refusing_upstream_answers_a_and_aaaa_pair_at_once(start_hard, upstream, then):
    """glibc sends A and AAAA back to back from one socket.  c-ares sent
    both over one connected socket: the ICMP error of the first was
    reported to the second's send, so AAAA had its answer at once and A
    waited for resolver_timeout (3 s here, so that it is unmistakable).
    Both go on at once: to SERVFAIL when the refusing nameserver is the
    only one, to the next nameserver when there is one (that case passed
    before too: once the first pair has marked it down, it is asked
    last)."""
    refusing = "127.0.0.1:%d" % harness.dead_port()
    h = start_hard(configured(), upstream=[refusing] + (
        [upstream.endpoint] if then == "live" else []),
        extra="resolver_timeout = 3\nresolver_total_timeout = 6\n")
    expected = "SERVFAIL" if then == "nothing" else "NOERROR"
    for i in range(10):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(10)
            t0 = time.monotonic()
            for rdtype, qid in (("A", 2 * i), ("AAAA", 2 * i + 1)):
                s.sendto(harness.make_query("fwd.test", rdtype, qid=qid).to_wire(),
                         (h.addr, h.port))
            for _ in range(2):
                r = dns.message.from_wire(s.recv(65535))
                elapsed = time.monotonic() - t0
                assert harness.rcode_text(r) == expected
                assert elapsed < 1.5, "pair %d: %s after %.1f s (resolver_timeout 3)" % (
                    i, dns.rdatatype.to_text(r.question[0].rdtype), elapsed)
    h.assert_alive()


@pytest.mark.skipif(namespace.unavailable() is not None,
                    reason=str(namespace.unavailable()))
def test_getent_through_refusing_upstream(workdir):
    """glibc's getaddrinfo(AF_UNSPEC), as `getent ahosts`, in a private
    namespace whose resolv.conf names hard: with the only nameserver
    refusing, each lookup fails at once (EAI_AGAIN after SERVFAIL), not
    after resolver_timeout."""
    config = harness.hard_config(
        configured(), "127.0.0.1:5300", 53,
        extra="resolver_timeout = 3\nresolver_total_timeout = 6\n")

    def body(resolv_conf):
        set_resolv_conf(resolv_conf, "nameserver 127.0.0.1\n")
        h = harness.Hard(workdir, config, ["127.0.0.1"], 53)
        runs = []
        try:
            h.wait_ready()
            for _ in range(8):
                t0 = time.monotonic()
                r = subprocess.run(["getent", "ahosts", "dual.test."],
                                   capture_output=True, text=True, timeout=60)
                runs.append({"seconds": time.monotonic() - t0,
                             "status": r.returncode})
        finally:
            h.stop()
        return {"runs": runs, "log": h.log()}

    result = run_in_namespace(workdir, body)
    log = result["log"]
    assert "dual.test. AAAA" in log and "dual.test. A:" in log, log[-3000:]
    for mark in ("Sanitizer", "runtime error:"):     # hard under SANITIZE=1
        assert mark not in log, log[-4000:]
    for run in result["runs"]:
        assert run["status"] == 2, run        # not found
        assert run["seconds"] < 1.5, "lookups took %s s (resolver_timeout 3); log:\n%s" % (
            [round(x["seconds"], 2) for x in result["runs"]], log[-3000:])


# ------------------------------------------------- item 6: all down


def test_all_nameservers_down_servfail_within_resolver_timeout(
        start_hard, start_scripted_upstream):
    """Once every nameserver is marked down, a query gets SERVFAIL after
    resolver_timeout (0.5 s), not resolver_total_timeout (6 s); the first
    timely reply, to a probe of the second nameserver, restores
    forwarding."""
    first = start_scripted_upstream(silent=True)
    second = start_scripted_upstream(silent=True, address="192.0.2.88")
    h = start_hard(configured(), upstream=[first.endpoint, second.endpoint],
                   extra="resolver_timeout = 0.5\nresolver_total_timeout = 6\n")
    # A first query marks both down (its SERVFAIL comes at 6 s: not waited for)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(harness.make_query("first.test", "A").to_wire(), (h.addr, h.port))
    assert len(wait_log(h, r"nameserver .* did not answer in time", 2)) == 2
    for i in range(4):
        t0 = time.monotonic()
        r = h.query("down%d.test" % i, "A", timeout=10)
        elapsed = time.monotonic() - t0
        assert harness.rcode_text(r) == "SERVFAIL"
        assert elapsed < 3, "SERVFAIL after %.1f s while all are down" % elapsed
    # The second answers again: the probes (one a second) find it.
    second.silent = False

    def forwarded():
        return addresses(h.query("back.test", "A", timeout=5)) == ["192.0.2.88"]
    harness.wait_until(forwarded, timeout=10, interval=0.1,
                       what="a reply from the second nameserver")
    assert "nameserver %s answering again" % second.endpoint in h.log()
    for i in range(3):
        assert addresses(h.query("up%d.test" % i, "A", timeout=5)) == ["192.0.2.88"]
    h.assert_alive()


def test_lost_datagram_does_not_mark_a_busy_nameserver_down(
        start_hard, start_scripted_upstream):
    """A query left unanswered while its nameserver answers others is a
    lost datagram, not a dead server: it is sent again, and the server
    stays up, so that other queries do not fall to the short wait of a
    host whose every nameserver is down."""
    up = start_scripted_upstream()

    def lose_one(query):
        if query.question[0].name.to_text().startswith("lost."):
            return None
        return up._reply(query, up.address)
    up.reply_with = lose_one
    h = start_hard(configured(), upstream=up.endpoint,
                   extra="resolver_timeout = 1\nresolver_total_timeout = 3\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as lost:
        lost.sendto(harness.make_query("lost.test", "A").to_wire(), (h.addr, h.port))
        i = 0
        while not select.select([lost], [], [], 0.05)[0]:
            assert addresses(h.query("ok%d.test" % i, "A", timeout=5)) == ["192.0.2.77"]
            i += 1
        assert harness.rcode_text(dns.message.from_wire(lost.recv(65535))) == "SERVFAIL"
    assert len(up.queries("lost.test.")) == 3
    assert "did not answer in time" not in h.log()


def test_all_down_single_nameserver_recovers(start_hard, start_scripted_upstream):
    """One nameserver, down: each query still goes to it and waits
    resolver_timeout; its first timely reply marks it up."""
    up = start_scripted_upstream(silent=True)
    h = start_hard(configured(), upstream=up.endpoint,
                   extra="resolver_timeout = 0.5\nresolver_total_timeout = 6\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(harness.make_query("first.test", "A").to_wire(), (h.addr, h.port))
    wait_log(h, r"nameserver .* did not answer in time")
    t0 = time.monotonic()
    assert harness.rcode_text(h.query("down.test", "A", timeout=10)) == "SERVFAIL"
    assert time.monotonic() - t0 < 3
    up.silent = False
    assert addresses(h.query("back.test", "A", timeout=5)) == ["192.0.2.77"]
    assert "nameserver %s answering again" % up.endpoint in h.log()


# ------------------------------------------------ item 8: BADVERS


def badvers(query):
    r = dns.message.make_response(query)
    r.use_edns(0)
    r.set_rcode(dns.rcode.BADVERS)
    return r


def test_extended_rcode_logged_and_counted(start_hard, start_scripted_upstream, workdir):
    """An upstream's BADVERS (16: 0 in the header, 1 in OPT) is logged and
    counted as BADVERS, not as NOERROR (the header's 4 bits)."""
    up = start_scripted_upstream()
    up.reply_with = badvers
    db = os.path.join(workdir, "har.db")
    h = start_hard(configured(), upstream=up.endpoint, data_file=db)
    for i in range(2):
        r = h.query("v%d.test" % i, "A", edns=1, timeout=5)
        assert r.rcode() == dns.rcode.BADVERS
    wait_log(h, r"v1\.test\. A: forwarded: upstream BADVERS$")
    rows = wait_sql(db, "SELECT rcode, replies FROM nameserver_replies",
                    lambda r: r == [{"rcode": "BADVERS", "replies": 2}])
    assert sql(db, "SELECT queries FROM nameservers") == [{"queries": 2}], rows
