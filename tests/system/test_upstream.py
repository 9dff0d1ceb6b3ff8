"""The upstream nameservers (SPEC section 7, har.conf.5 FORWARDING): a dead
nameserver costs one timeout, not one per query, and is taken back when it
answers; silence is bounded by resolver_total_timeout however many
nameservers there are; forwarded queries carry hard's own random IDs from
changing source ports, and a reply must match ID and question."""

import collections
import socket
import time

import dns.exception
import dns.message
import pytest

import harness
from harness import addresses

CONFIGURED = """
name www.test {
    failure_mode = all
    candidate "web1" { check_address = "http://127.0.1.1:%d/" }
}
"""


def timed_query(h, name, timeout=8, **kw):
    t0 = time.monotonic()
    r = h.query(name, "A", timeout=timeout, **kw)
    return r, time.monotonic() - t0


def test_dead_first_nameserver_costs_one_timeout(start_hard, upstream,
                                                 silent_upstream):
    h = start_hard(CONFIGURED % harness.dead_port(),
                   upstream=[silent_upstream.endpoint, upstream.endpoint],
                   extra="resolver_timeout = 0.8\n")
    r, first = timed_query(h, "fwd.test")
    assert addresses(r) == ["192.0.2.1"]
    assert first >= 0.7, "the first query should have waited for the silent server"
    slow = []
    for i in range(20):
        r, elapsed = timed_query(h, "fwd.test", qid=i)
        assert addresses(r) == ["192.0.2.1"]
        if elapsed > 0.6:   # resolver_timeout 0.8 when waiting for it
            slow.append(elapsed)
    assert not slow, "queries still wait for the dead nameserver: %s" % slow
    down = [l for l in h.log().splitlines()
            if silent_upstream.endpoint in l and "did not answer" in l]
    assert len(down) == 1, "the change of state is logged once: %s" % down


def test_dead_nameserver_taken_back(start_hard, upstream,
                                    start_scripted_upstream):
    first = start_scripted_upstream(silent=True, address="192.0.2.77")
    h = start_hard(CONFIGURED % harness.dead_port(),
                   upstream=[first.endpoint, upstream.endpoint],
                   extra="resolver_timeout = 0.5\n")
    assert addresses(timed_query(h, "fwd.test")[0]) == ["192.0.2.1"]
    probes_while_dead = len(first.queries())
    # It answers again: a probe (at most one a second) finds it, and from
    # then on it is asked first again, being first in the list.
    first.silent = False

    def back():
        return addresses(h.query("fwd.test", "A", timeout=3)) == ["192.0.2.77"]
    harness.wait_until(back, timeout=5, interval=0.1,
                       what="the first nameserver to be asked first again")
    assert len(first.queries()) > probes_while_dead
    assert "nameserver %s answering again" % first.endpoint in h.log()
    for _ in range(5):
        r, elapsed = timed_query(h, "fwd.test")
        assert addresses(r) == ["192.0.2.77"]


def test_down_nameserver_probed_not_asked_first(start_hard, upstream,
                                                start_scripted_upstream):
    """While it stays silent, a down server gets about one probe a second,
    not every query."""
    first = start_scripted_upstream(silent=True)
    h = start_hard(CONFIGURED % harness.dead_port(),
                   upstream=[first.endpoint, upstream.endpoint],
                   extra="resolver_timeout = 0.5\n")
    timed_query(h, "fwd.test")
    before = len(first.queries())
    t0 = time.monotonic()
    count = 0
    while time.monotonic() - t0 < 2.0:
        r, elapsed = timed_query(h, "fwd.test")
        assert addresses(r) == ["192.0.2.1"] and elapsed < 0.4
        count += 1
    probes = len(first.queries()) - before
    assert count > 20
    assert 1 <= probes <= 4, "%d probes for %d queries in 2 s" % (probes, count)


@pytest.mark.parametrize("silent_count", [1, 2, 3])
def test_silence_bounded_by_total_timeout(start_hard, start_scripted_upstream,
                                          silent_count):
    """Defaults: resolver_timeout 1, resolver_total_timeout 3: SERVFAIL after
    3 s with one silent nameserver or three (it was 9 s with three)."""
    silent = [start_scripted_upstream(silent=True) for _ in range(silent_count)]
    h = start_hard(CONFIGURED % harness.dead_port(),
                   upstream=[s.endpoint for s in silent])
    r, elapsed = timed_query(h, "fwd.test", qid=4321)
    assert harness.rcode_text(r) == "SERVFAIL" and r.id == 4321
    assert 2.7 <= elapsed <= 4.0, "SERVFAIL after %.1f s" % elapsed
    # Every server was asked, and the lone one asked again each second (a
    # lost datagram is resent, as a stub resolver would).
    asked = [len(s.queries()) for s in silent]
    assert all(n >= 1 for n in asked), asked
    assert sum(asked) >= 3, asked


def test_total_timeout_option(start_hard, start_scripted_upstream):
    silent = [start_scripted_upstream(silent=True) for _ in range(3)]
    h = start_hard(CONFIGURED % harness.dead_port(),
                   upstream=[s.endpoint for s in silent],
                   extra="resolver_timeout = 0.2\nresolver_total_timeout = 0.9\n")
    r, elapsed = timed_query(h, "fwd.test")
    assert harness.rcode_text(r) == "SERVFAIL"
    assert 0.8 <= elapsed <= 1.8, "SERVFAIL after %.1f s" % elapsed


def test_late_reply_of_first_server_still_used(start_hard, start_scripted_upstream,
                                               silent_upstream):
    """A try hard stopped waiting for may still answer: the first reply of
    any try goes to the client."""
    import threading
    slow = start_scripted_upstream(silent=True, address="192.0.2.88")
    h = start_hard(CONFIGURED % harness.dead_port(),
                   upstream=[slow.endpoint, silent_upstream.endpoint],
                   extra="resolver_timeout = 0.3\nresolver_total_timeout = 2.5\n")

    def answer_late():
        # after the first try timed out and the second server was asked
        time.sleep(0.6)
        slow.silent = False
    threading.Thread(target=answer_late, daemon=True).start()
    # the second round asks slow again; its answer reaches the client
    r, elapsed = timed_query(h, "late.test")
    assert addresses(r) == ["192.0.2.88"]
    assert elapsed < 2.4


def test_query_ids_are_hards_own(start_hard, start_scripted_upstream):
    up = start_scripted_upstream()
    # a long resolver_timeout: a reply that a loaded machine delays is not
    # a lost one, resent (and counted twice)
    h = start_hard(CONFIGURED % harness.dead_port(), upstream=up.endpoint,
                   extra="resolver_timeout = 10\nresolver_total_timeout = 20\n")
    for i in range(100):
        r = h.query("id%d.test" % i, "A", qid=4242)
        assert r.id == 4242 and addresses(r) == ["192.0.2.77"]
    ids = [q[0] for q in up.queries()]
    assert len(ids) == 100
    assert ids.count(4242) <= 2, "the client's ID reached the upstream"
    assert len(set(ids)) >= 95, "IDs repeat: %d distinct of 100" % len(set(ids))


def test_source_port_changes(start_hard, start_scripted_upstream):
    """One query at a time: a new source port for each.  Many at once: no
    port carries more than 32 queries."""
    up = start_scripted_upstream()
    # a long resolver_timeout: the upstream, a thread of this test, answers
    # 400 queries one by one, and on a loaded machine the last ones more
    # than the default second late: not to be resent (and counted twice)
    h = start_hard(CONFIGURED % harness.dead_port(), upstream=up.endpoint,
                   extra="resolver_timeout = 10\nresolver_total_timeout = 20\n")
    for i in range(40):
        h.query("seq%d.test" % i, "A")
    ports = [q[1] for q in up.queries()]
    assert len(set(ports)) >= 39, "%d ports for 40 sequential queries" % len(set(ports))

    socks = []
    try:
        for i in range(400):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(3)
            wire = harness.make_query("burst%d.test" % i, "A").to_wire()
            s.sendto(wire, (h.addr, h.port))
            socks.append((s, wire))
        for s, wire in socks:
            # A burst this size can overflow hard's own receive buffer on a
            # loaded machine (the kernel drops the query): asked again, as
            # a stub resolver would.
            for attempt in range(3):
                try:
                    reply = s.recvfrom(65535)[0]
                    break
                except socket.timeout:
                    if attempt == 2:
                        raise
                    s.sendto(wire, (h.addr, h.port))
            assert dns.message.from_wire(reply).answer
    finally:
        for s, _ in socks:
            s.close()
    forwarded = [q for q in up.queries() if q[2].startswith("burst")]
    assert len({q[2] for q in forwarded}) == 400, len({q[2] for q in forwarded})
    burst = collections.Counter(q[1] for q in forwarded)
    assert max(burst.values()) <= 32, "a source port carried %d queries" % max(burst.values())


def test_reply_must_match_id_and_question(start_hard, start_scripted_upstream):
    up = start_scripted_upstream()
    up.spoof = True
    h = start_hard(CONFIGURED % harness.dead_port(), upstream=up.endpoint)
    for tcp in (False,):
        for i in range(10):
            r = h.query("match%d.test" % i, "A", tcp=tcp)
            assert addresses(r) == ["192.0.2.77"], "a spoofed reply was relayed"


def test_refused_first_nameserver_skipped_at_once(start_hard, upstream):
    """A nameserver whose port is closed (ICMP unreachable, TCP reset) costs
    no timeout at all."""
    h = start_hard(CONFIGURED % harness.dead_port(),
                   upstream=["127.0.0.1:%d" % harness.dead_port(), upstream.endpoint],
                   extra="resolver_timeout = 1.5\n")
    for tcp in (False, True):
        for _ in range(3):
            r, elapsed = timed_query(h, "fwd.test", tcp=tcp)
            assert addresses(r) == ["192.0.2.1"]
            assert elapsed < 1.0, "%.1f s behind a refusing nameserver" % elapsed


def test_reload_keeps_nameserver_health(start_hard, upstream, silent_upstream):
    import signal
    h = start_hard(CONFIGURED % harness.dead_port(),
                   upstream=[silent_upstream.endpoint, upstream.endpoint],
                   extra="resolver_timeout = 0.8\n")
    timed_query(h, "fwd.test")
    h.signal(signal.SIGHUP)
    harness.wait_until(lambda: "reloaded" in h.log(), what="the reload")
    r, elapsed = timed_query(h, "fwd.test")
    assert addresses(r) == ["192.0.2.1"] and elapsed < 0.6  # not 0.8


def test_forward_flood_is_bounded(start_hard, silent_upstream):
    """At most 4096 forwarded queries are held at once; the rest get
    SERVFAIL at once, logged once, and forwarding resumes afterwards."""
    import select
    # The held queries end with SERVFAIL after HELD seconds: the replies
    # counted below, all before that, are the ones refused at once.  Long
    # enough for a loaded machine to send the 6000 queries well before.
    HELD = 8
    h = start_hard(CONFIGURED % harness.dead_port(), upstream=silent_upstream,
                   extra="resolver_timeout = %d\nresolver_total_timeout = %d\n"
                   % (HELD / 2, HELD))
    rss_before = h.rss_kib()
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sent = 0
    servfail_fast = 0
    t0 = time.monotonic()
    try:
        for i in range(6000):
            s = socks[i % len(socks)]
            s.sendto(harness.make_query("flood%d.test" % i, "A").to_wire(),
                     (h.addr, h.port))
            sent += 1
            if i % 200 == 199:
                time.sleep(0.01)   # let hard read: the test is about holding
        deadline = min(time.monotonic() + 1.5, t0 + HELD - 0.5)
        while time.monotonic() < deadline:
            ready, _, _ = select.select(socks, [], [], 0.1)
            for s in ready:
                r = dns.message.from_wire(s.recv(65535))
                assert harness.rcode_text(r) == "SERVFAIL"
                servfail_fast += 1
    finally:
        for s in socks:
            s.close()
    assert time.monotonic() - t0 < HELD - 0.3
    # hard holds 4096 and refuses the rest at once (some may be lost in
    # the socket buffers, never more than a few hundred)
    assert servfail_fast >= 6000 - 4096 - 500, servfail_fast
    grown = h.rss_kib() - rss_before
    assert grown < 40 * 1024, "RSS grew %d KiB" % grown
    lines = [l for l in h.log().splitlines() if "forwarded queries in flight" in l]
    assert len(lines) == 1, lines
    # once the held ones have timed out (HELD seconds after hard read
    # each, which a loaded machine may do well after the sending ended),
    # forwarding works again: a query is held for the silent upstream
    # instead of refused at once
    def forwarded_again():
        try:
            r = h.query("after.test", "A", timeout=1.0)
        except dns.exception.Timeout:
            return True
        assert harness.rcode_text(r) == "SERVFAIL"
        return False
    harness.wait_until(forwarded_again, HELD + 15, 0.2,
                       what="a query forwarded again")
    assert "forwarding again after" in h.log()
    h.assert_alive()


@pytest.mark.parametrize("order", ["refused_first", "failing_first"])
def test_nameserver_failing_inside_send(start_hard, order):
    """127.255.255.255 is loopback's broadcast address: connecting a UDP
    socket to it fails at once (EACCES), so the try ends inside the send
    itself, nested in the end of a try refused by ICMP.  Every query gets
    SERVFAIL at once and hard lives on."""
    refused = "127.0.0.1:%d" % harness.dead_port()
    failing = "127.255.255.255:53"
    servers = [refused, failing] if order == "refused_first" else [failing, refused]
    h = start_hard(CONFIGURED % harness.dead_port(), upstream=servers)
    for i in range(20):
        r, elapsed = timed_query(h, "n%d.test" % i, qid=i)
        assert harness.rcode_text(r) == "SERVFAIL" and r.id == i
        assert elapsed < 1.0
    h.assert_alive()


def test_late_reply_keeps_slow_server_behind(start_hard, upstream,
                                             start_scripted_upstream):
    """A reply later than resolver_timeout reaches the client, but does not
    mark its server up again: it stays behind the prompt one."""
    slow = start_scripted_upstream(silent=True, address="192.0.2.88")
    h = start_hard(CONFIGURED % harness.dead_port(),
                   upstream=[slow.endpoint, upstream.endpoint],
                   extra="resolver_timeout = 0.3\n")
    r, _ = timed_query(h, "fwd.test")       # marks slow down
    assert addresses(r) == ["192.0.2.1"]
    slow.silent = False
    slow.delay = 0.6
    for _ in range(20):     # 3 s: probes at about 1 s and 2 s, answered late
        r, elapsed = timed_query(h, "fwd.test")
        assert addresses(r) == ["192.0.2.1"] and elapsed < 0.4
        time.sleep(0.15)
    assert "answering again" not in h.log()
