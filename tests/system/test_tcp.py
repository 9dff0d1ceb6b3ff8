"""DNS over TCP (RFC 7766): length prefix, pipelining, idle timeout, the
connection cap."""

import socket
import time

import dns.flags
import pytest

import harness
from harness import addresses, tcp_recv, tcp_send

BODY = """
name www.test {
    ttl = 30
    selection_method = all
    failure_mode = all
    check_frequency = 60
    candidate "web1" { check_address = "http://127.0.1.1:%(dead)d/" }
    candidate "six" { check_address = "http://[::1]:%(dead)d/" }
}
"""


@pytest.fixture
def hard(start_hard, upstream):
    return start_hard(BODY % {"dead": harness.dead_port()}, upstream=upstream,
                      extra="tcp_idle_timeout = 1\ntcp_max_connections = 2\n")


def test_pipelined_a_and_aaaa(hard):
    """glibc sends A and AAAA back to back on one connection."""
    qa = harness.make_query("www.test", "A", qid=101)
    qaaaa = harness.make_query("www.test", "AAAA", qid=102)
    with hard.tcp() as s:
        wire = b""
        for q in (qa, qaaaa):
            w = q.to_wire()
            wire += len(w).to_bytes(2, "big") + w
        s.sendall(wire)  # both in one segment
        r1, r2 = tcp_recv(s), tcp_recv(s)
    assert (r1.id, r2.id) == (101, 102), "answered out of order"
    assert addresses(r1) == ["127.0.1.1"]
    assert addresses(r2, "AAAA") == ["::1"]
    for r in (r1, r2):
        assert r.flags & dns.flags.AA and r.answer[0].ttl == 30


def test_pipelined_mixed_local_and_forwarded(hard):
    queries = [harness.make_query("fwd.test", "A", qid=1),
               harness.make_query("www.test", "A", qid=2),
               harness.make_query("txt.test", "TXT", qid=3),
               harness.make_query("nothere.test", "A", qid=4)]
    with hard.tcp() as s:
        s.sendall(b"".join(len(w).to_bytes(2, "big") + w
                           for w in (q.to_wire() for q in queries)))
        replies = {r.id: r for r in (tcp_recv(s) for _ in queries)}
    assert sorted(replies) == [1, 2, 3, 4]
    assert addresses(replies[1]) == ["192.0.2.1"]
    assert addresses(replies[2]) == ["127.0.1.1"]
    assert replies[3].answer and harness.rcode_text(replies[3]) == "NOERROR"
    assert harness.rcode_text(replies[4]) == "NXDOMAIN"
    for q in queries:
        assert replies[q.id].question == q.question


def test_sequential_queries_on_one_connection(hard):
    with hard.tcp() as s:
        for i in range(5):
            tcp_send(s, harness.make_query("www.test", "A", qid=500 + i).to_wire())
            r = tcp_recv(s)
            assert r.id == 500 + i and addresses(r) == ["127.0.1.1"]
            time.sleep(0.1)


def test_message_split_across_segments(hard):
    wire = harness.make_query("www.test", "A", qid=9).to_wire()
    msg = len(wire).to_bytes(2, "big") + wire
    with hard.tcp() as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(msg), 3):
            s.sendall(msg[i:i + 3])
            time.sleep(0.01)
        r = tcp_recv(s)
    assert r.id == 9 and addresses(r) == ["127.0.1.1"]


def test_idle_timeout_closes_connection(hard):
    s = hard.tcp()
    try:
        t0 = time.monotonic()
        harness.wait_until(lambda: harness.closed_by_peer(s, 0.1), timeout=4,
                           what="hard to close an idle connection")
        elapsed = time.monotonic() - t0
        assert 0.5 <= elapsed <= 3.0, "idle close after %.2fs (timeout 1s)" % elapsed
    finally:
        s.close()


def test_idle_timer_restarts_after_a_query(hard):
    with hard.tcp() as s:
        time.sleep(0.6)
        tcp_send(s, harness.make_query("www.test", "A", qid=1).to_wire())
        assert tcp_recv(s).id == 1
        time.sleep(0.6)  # 1.2 s after connect, 0.6 s after the query
        assert not harness.closed_by_peer(s), "closed while not idle for 1 s"
        tcp_send(s, harness.make_query("www.test", "A", qid=2).to_wire())
        assert tcp_recv(s).id == 2
        harness.wait_until(lambda: harness.closed_by_peer(s, 0.1), timeout=4,
                           what="idle close")


@pytest.fixture
def capped(start_hard, upstream):
    """A long idle timeout, so only the cap closes connections."""
    return start_hard(BODY % {"dead": harness.dead_port()}, upstream=upstream,
                      extra="tcp_idle_timeout = 30\ntcp_max_connections = 2\n")


def test_connection_cap_never_stalls_new_clients(capped):
    hard = capped
    idle = [hard.tcp() for _ in range(6)]
    try:
        time.sleep(0.1)
        # a new client is still served, over TCP and UDP
        for i in range(3):
            with hard.tcp() as s:
                tcp_send(s, harness.make_query("www.test", "A", qid=i).to_wire())
                s.settimeout(2)
                r = tcp_recv(s)
                assert r.id == i and addresses(r) == ["127.0.1.1"]
        assert addresses(hard.query("www.test", "A")) == ["127.0.1.1"]
        # at most tcp_max_connections = 2 stay open: the older idle ones go
        harness.wait_until(
            lambda: sum(not harness.closed_by_peer(c) for c in idle) <= 2,
            timeout=2, what="idle connections beyond the cap to be closed")
        assert harness.closed_by_peer(idle[0]), "the oldest idle connection stays"
    finally:
        for c in idle:
            c.close()
    hard.assert_alive()


def test_cap_with_half_sent_messages(capped):
    hard = capped
    """Connections that stall mid-message count against the cap too; once they
    are gone, new clients are served again."""
    half = []
    try:
        for _ in range(4):
            c = hard.tcp()
            c.sendall(b"\x00\x30\x12")  # a length and one byte of 48
            half.append(c)
        # held open: new clients are still served (TCP and UDP)
        r = hard.query("www.test", "A", tcp=True, timeout=3)
        assert addresses(r) == ["127.0.1.1"]
        assert addresses(hard.query("www.test", "A")) == ["127.0.1.1"]
    finally:
        for c in half:
            c.close()
    r = hard.query("www.test", "A", tcp=True, timeout=3)
    assert addresses(r) == ["127.0.1.1"]
    hard.assert_alive()
