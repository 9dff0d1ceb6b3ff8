"""DNS over TCP (RFC 7766): length prefix, pipelining, idle timeout, the
connection cap, the memory bounds against clients that do not read their
answers, and running out of file descriptors."""

import os
import signal
import socket
import time

import dns.flags
import dns.message
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


@pytest.fixture
def capped(start_hard, upstream):
    """A long idle timeout, so only the cap closes connections."""
    return start_hard(BODY % {"dead": harness.dead_port()}, upstream=upstream,
                      extra="tcp_idle_timeout = 30\ntcp_max_connections = 2\n")


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


def read_until_eof(sock, timeout=10):
    """Every message the peer sends until it closes; EOFError for a message
    cut short, ConnectionResetError for a reset."""
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    messages = []
    while data:
        assert len(data) >= 2, "%d stray bytes before EOF" % len(data)
        length = int.from_bytes(data[:2], "big")
        if len(data) < 2 + length:
            raise EOFError("closed in the middle of a %d-byte message" % length)
        messages.append(dns.message.from_wire(data[2:2 + length]))
        data = data[2 + length:]
    return messages


def test_half_close_gets_every_answer_then_eof(capped):
    """A client that sends its queries and then shuts down its sending side
    (shutdown(SHUT_WR)) gets the answers to all of them, the forwarded ones
    too, and then the connection closes (well before tcp_idle_timeout, 30 s:
    hard closes it, not its idle timer)."""
    hard = capped
    queries = [harness.make_query("www.test", "A", qid=31),
               harness.make_query("fwd.test", "A", qid=32),
               harness.make_query("txt.test", "TXT", qid=33)]
    with hard.tcp() as s:
        s.sendall(b"".join(len(w).to_bytes(2, "big") + w
                           for w in (q.to_wire() for q in queries)))
        s.shutdown(socket.SHUT_WR)
        replies = {r.id: r for r in read_until_eof(s)}
    assert sorted(replies) == [31, 32, 33], \
        "answers before EOF: %s" % sorted(replies)
    assert addresses(replies[31]) == ["127.0.1.1"]
    assert addresses(replies[32]) == ["192.0.2.1"]
    assert harness.rcode_text(replies[33]) == "NOERROR" and replies[33].answer
    hard.assert_alive()


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


# ------------------------------------------------ clients that do not read

BIG_COUNT = 1000   # addresses: a 16 KB answer over TCP


def big_body(dead):
    """big.test answers 1000 loopback addresses (failure_mode = all: every
    check is refused at once, nothing outside 127/8 is ever connected to);
    small.test one."""
    ips = ", ".join('"127.0.%d.%d"' % (2 + i // 250, 1 + i % 250)
                    for i in range(BIG_COUNT))
    return """
name big.test {
    check_method = tcp
    failure_mode = all
    check_frequency = 60
    candidate "big" { check_address = "tcp://big.test:%(dead)d" address = { %(ips)s } }
}
name small.test {
    check_method = tcp
    failure_mode = all
    check_frequency = 60
    candidate "small" { check_address = "tcp://127.0.1.1:%(dead)d" }
}
""" % {"dead": dead, "ips": ips}


def framed(name, rdtype, first_id, count):
    """count length-prefixed queries with IDs first_id, first_id + 1, ..."""
    out = []
    for i in range(count):
        w = harness.make_query(name, rdtype, qid=(first_id + i) % 65536).to_wire()
        out.append(len(w).to_bytes(2, "big") + w)
    return out


def send_without_reading(sock, messages, seconds):
    """Sends as many whole messages as the socket takes within seconds,
    reading nothing; returns how many were sent."""
    data = b"".join(messages)
    size = len(messages[0])
    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + seconds
    while sent < len(data) and time.monotonic() < deadline:
        try:
            sent += sock.send(data[sent:sent + 65536])
        except BlockingIOError:
            time.sleep(0.01)
    # finish the message cut in the middle, if the socket takes it
    while sent % size and time.monotonic() < deadline + 2:
        try:
            sent += sock.send(data[sent:sent + size - sent % size])
        except BlockingIOError:
            time.sleep(0.01)
    sock.setblocking(True)
    return sent // size


def read_ids(sock, count, timeout=20):
    """Reads count length-prefixed messages; returns their IDs in order."""
    sock.settimeout(timeout)
    buffer = bytearray()
    ids = []
    at = 0
    while len(ids) < count:
        while len(buffer) - at >= 2:
            length = int.from_bytes(buffer[at:at + 2], "big")
            if len(buffer) - at < 2 + length:
                break
            ids.append(int.from_bytes(buffer[at + 2:at + 4], "big"))
            at += 2 + length
        if len(ids) >= count:
            break
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise EOFError("closed after %d of %d answers" % (len(ids), count))
        del buffer[:at]
        at = 0
        buffer += chunk
    return ids


def prompt_answers(hard):
    """Another client is answered at once, over UDP and TCP."""
    for tcp in (False, True):
        t0 = time.monotonic()
        r = hard.query("small.test", "A", tcp=tcp, timeout=2.0)
        assert addresses(r) == ["127.0.1.1"]
        assert time.monotonic() - t0 < 1.5


@pytest.fixture
def measurable_memory(monkeypatch):
    """Under ASan, freed memory waits in a quarantine of up to 256 MB, and
    hard's RSS says nothing of its own bounds: no quarantine for it then."""
    if os.environ.get("HAR_SANITIZED") == "1":
        options = os.environ.get("ASAN_OPTIONS", "")
        monkeypatch.setenv("ASAN_OPTIONS", (options + ":" if options else "")
                           + "quarantine_size_mb=0")


@pytest.fixture
def big(measurable_memory, start_hard, upstream):
    """Idle connections are kept 30 s: only the output bounds act."""
    h = start_hard(big_body(harness.dead_port()), upstream=upstream,
                   extra="tcp_idle_timeout = 30\ntcp_max_connections = 1000\n")
    r = h.query("big.test", "A", tcp=True)
    assert len(addresses(r)) == BIG_COUNT
    return h


def test_client_that_never_reads_does_not_grow_memory(big):
    """Pipelined queries for a 16 KB answer, never read: hard stops reading
    the connection once 64 KiB wait for it, instead of answering them all
    into memory (hundreds of MB before).  The queries that waited are
    answered, in order, once the client reads."""
    hard = big
    before = hard.rss_kib()
    count = 3000   # 48 MB of answers
    with hard.tcp() as s:
        sent = send_without_reading(s, framed("big.test", "A", 0, count), 3)
        assert sent > 100
        time.sleep(1)
        grown = hard.rss_kib() - before
        assert grown < 16 * 1024, \
            "RSS grew by %d KiB for one client that does not read" % grown
        prompt_answers(hard)
        assert read_ids(s, sent) == [i % 65536 for i in range(sent)]
    hard.assert_alive()


class CountingUpstream:
    """A nameserver that reads queries over TCP and never answers; counts
    them (UDP is bound too, and silent)."""

    def __init__(self, addr="127.0.0.1"):
        import threading
        self.port = harness.free_port(addr)
        self.endpoint = "%s:%d" % (addr, self.port)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((addr, self.port))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, self.port))
        self.sock.listen(16)
        self.queries = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        import select as select_module
        peers, buffers = [self.sock], {}
        while not self.stopping.is_set():
            readable, _, _ = select_module.select(peers, [], [], 0.05)
            for r in readable:
                if r is self.sock:
                    c, _ = r.accept()
                    peers.append(c)
                    buffers[c] = b""
                    continue
                chunk = r.recv(65536)
                if not chunk:
                    peers.remove(r)
                    r.close()
                    continue
                buffers[r] += chunk
                while len(buffers[r]) >= 2:
                    length = int.from_bytes(buffers[r][:2], "big")
                    if len(buffers[r]) < 2 + length:
                        break
                    buffers[r] = buffers[r][2 + length:]
                    self.queries += 1
        for p in peers:
            p.close()

    def stop(self):
        self.stopping.set()
        self.thread.join(2)
        self.udp.close()


def test_forwarded_queries_in_flight_per_connection_are_bounded(start_hard):
    """At most 32 forwarded queries of one connection are in flight; the
    rest wait, unread, until answers come back."""
    counting = CountingUpstream()
    try:
        # long timeouts: none of the 32 may end (and let more through)
        # before the count below, however slow the machine
        hard = start_hard("", upstream=counting.endpoint,
                          extra="resolver_timeout = 10\n"
                          "resolver_total_timeout = 10\n")
        with hard.tcp() as s:
            s.sendall(b"".join(framed("fwd.test", "A", 0, 100)))
            harness.wait_until(lambda: counting.queries >= 32, timeout=5,
                               what="32 queries at the upstream")
            time.sleep(0.5)
            assert counting.queries == 32, \
                "%d forwarded queries in flight" % counting.queries
    finally:
        counting.stop()


@pytest.mark.parametrize("half_close", [False, True])
def test_pipelined_forwarded_queries_beyond_the_bound_are_all_answered(hard,
                                                                       half_close):
    """With half_close, the queries hard has not read yet when the client
    shuts down its side (over 32 in flight, the rest wait) are answered
    too, and then the connection closes."""
    with hard.tcp() as s:
        s.sendall(b"".join(framed("fwd.test", "A", 1000, 100)))
        if half_close:
            s.shutdown(socket.SHUT_WR)
            replies = read_until_eof(s)
        else:
            s.settimeout(5)
            replies = [tcp_recv(s) for _ in range(100)]
    assert sorted(r.id for r in replies) == list(range(1000, 1100)), \
        "%d of 100 answered" % len(replies)
    assert all(addresses(r) == ["192.0.2.1"] for r in replies)


TCP_CLOSE = 7   # tcp_states.h: what a reset leaves


def connection_reset(sock):
    """True when the peer reset the connection; reads nothing (TCP_INFO
    starts with the state)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == TCP_CLOSE


@pytest.mark.parametrize("half_close", [False, True])
def test_client_that_reads_nothing_is_reset_after_idle_timeout(start_hard,
                                                               upstream,
                                                               half_close):
    """Its answers stop flowing, so the connection is idle: after
    tcp_idle_timeout it is reset, which frees the kernel's queue too (a
    FIN would wait behind answers the client never reads).  Shutting down
    its sending side changes nothing to that."""
    hard = start_hard(big_body(harness.dead_port()), upstream=upstream,
                      extra="tcp_idle_timeout = 1\n")
    with hard.tcp() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sent = send_without_reading(s, framed("big.test", "A", 0, 200), 2)
        assert sent > 50
        if half_close:
            s.shutdown(socket.SHUT_WR)
        harness.wait_until(lambda: connection_reset(s), timeout=5,
                           what="the connection to be reset")
    prompt_answers(hard)


def test_total_output_of_all_connections_is_capped(big):
    """400 clients that do not read, each holding more than 64 KiB: over
    16 MiB in all, those with most unsent output are reset, the memory
    stays bounded, and clients that read are served."""
    hard = big
    before = hard.rss_kib()
    clients = []
    queries = b"".join(framed("big.test", "A", 0, 12))
    try:
        for _ in range(400):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            # a small window, so the kernel holds little and hard the rest
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
            c.connect((hard.addr, hard.port))
            c.sendall(queries)
            clients.append(c)
        # hard answers them all into its output before it sheds: wait for
        # the shedding, then a little for the answers that follow it
        harness.wait_until(
            lambda: "closing the connections with the most" in hard.log(),
            timeout=20, what="the connections with the most output to be reset")
        time.sleep(1)
        grown = hard.rss_kib() - before
        prompt_answers(hard)
        assert grown < 24 * 1024, \
            "RSS grew by %d KiB for 400 clients that do not read" % grown
        reset = sum(connection_reset(c) for c in clients)
        assert 0 < reset < 400, "%d of 400 connections reset" % reset
        assert hard.log().count("closing the connections with the most") == 1
    finally:
        for c in clients:
            c.close()
    harness.wait_until(
        lambda: "TCP output back under 16 MiB after closing %d connections"
        % reset in hard.log(), timeout=5, what="the end of the shedding logged")
    hard.assert_alive()


def test_query_longer_than_any_query_closes_the_connection(capped):
    """The input is bounded: a length prefix over 4096 (a UDP query's
    limit) ends the connection at once, before the bytes are sent."""
    hard = capped
    with hard.tcp() as s:
        s.sendall((5000).to_bytes(2, "big") + b"\x12\x34")
        harness.wait_until(lambda: harness.closed_by_peer(s, 0.1), timeout=2,
                           what="hard to close the connection")
    assert addresses(hard.query("www.test", "A", tcp=True)) == ["127.0.1.1"]


# ------------------------------------------------ out of file descriptors

SMALL = """
name small.test {
    check_method = tcp
    failure_mode = all
    check_frequency = 60
    candidate "small" { check_address = "tcp://127.0.1.1:%d" }
}
"""


def test_out_of_descriptors_does_not_spin(start_hard, upstream):
    """The open file limit lowered under hard's feet to 8 more than it has
    open, and 40 clients: accept() fails with EMFILE while the listener
    stays readable.  hard pauses accepting instead of spinning, logs once
    per streak, answers UDP meanwhile and TCP again once connections
    close.  (A limit too low at start lowers the connection cap instead,
    test_descriptors.py.)"""
    hard = start_hard(SMALL % harness.dead_port(), upstream=upstream,
                      extra="tcp_idle_timeout = 30\ntcp_max_connections = 100\n")
    hard.limit_descriptors(8)
    clients = [hard.tcp() for _ in range(40)]
    try:
        harness.wait_until(lambda: "cannot accept" in hard.log(), timeout=3,
                           what="accept to fail")
        before = hard.cpu_seconds()
        time.sleep(2)
        used = hard.cpu_seconds() - before
        assert used < 0.3, "%.2f s of CPU in 2 s out of descriptors" % used
        assert hard.log().count("cannot accept") == 1
        assert addresses(hard.query("small.test", "A")) == ["127.0.1.1"]
    finally:
        for c in clients:
            c.close()
    r = hard.query("small.test", "A", tcp=True, timeout=3)
    assert addresses(r) == ["127.0.1.1"]
    # descriptors come back one by one: one streak, ended after a quiet second
    harness.wait_until(lambda: "accepting TCP connections again after" in hard.log(),
                       timeout=3, what="the end of the streak to be logged")
    assert hard.log().count("cannot accept") == 1
    hard.assert_alive()


def test_start_raises_the_open_file_limit(start_hard, upstream):
    """tcp_max_connections = 1000 needs more than a soft limit of 64: hard
    raises it, as the hard limit allows, at start and on reload."""
    hard = start_hard(SMALL % harness.dead_port(), upstream=upstream,
                      nofile=(64, 4096), extra="tcp_max_connections = 1000\n")
    soft, limit = hard.nofile_limit()
    assert 1000 < soft <= 4096 and limit == 4096
    assert "raised the open file limit from 64 to %d" % soft in hard.log()
    with open(hard.conf) as f:
        config = f.read()
    with open(hard.conf, "w") as f:
        f.write(config.replace("tcp_max_connections = 1000",
                               "tcp_max_connections = 2000"))
    hard.signal(signal.SIGHUP)
    harness.wait_until(lambda: hard.nofile_limit()[0] > 2000, timeout=5,
                       what="the limit raised on reload")
    assert addresses(hard.query("small.test", "A", tcp=True)) == ["127.0.1.1"]


def test_start_warns_when_the_open_file_limit_is_too_low(start_hard, upstream):
    hard = start_hard(SMALL % harness.dead_port(), upstream=upstream,
                      nofile=(64, 64), extra="tcp_max_connections = 1000\n")
    assert hard.nofile_limit() == (64, 64)
    warning = [line for line in hard.log().splitlines()
               if "open files, but the limit is 64 (hard limit 64)" in line]
    assert len(warning) == 1 and "tcp_max_connections = 1000" in warning[0] \
        and "LimitNOFILE" in warning[0]
    assert addresses(hard.query("small.test", "A")) == ["127.0.1.1"]
