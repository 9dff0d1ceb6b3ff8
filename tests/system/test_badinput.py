"""Bad input (SPEC section 4): the right rcode or a drop, never a crash or a
stall.  After each case hard must still answer a normal query."""

import glob
import os
import random
import re
import signal
import socket
import struct
import subprocess
import time

import dns.message
import dns.opcode
import dns.rcode
import pytest

import harness
from harness import addresses

BODY = """
name www.test {
    ttl = 30
    failure_mode = all
    check_frequency = 60
    candidate "web1" { check_address = "http://127.0.1.1:%d/" }
}
"""

QNAME = b"\x03www\x04test\x00"
# How long to wait for a reply hard must send (udp_raw's 0.5 s default is
# kept where a drop is expected): a loaded machine may take a while.
REPLY_TIMEOUT = 3.0


@pytest.fixture
def hard(start_hard, upstream):
    h = start_hard(BODY % harness.dead_port(), upstream=upstream)
    yield h
    # the test's own checks ran; now hard must still be alive and answering
    h.assert_alive()
    for tcp in (False, True):
        r = h.query("www.test", "A", tcp=tcp)
        assert addresses(r) == ["127.0.1.1"], "hard stopped answering after bad input"


def header(qid=0x4242, flags=0x0100, qd=1, an=0, ns=0, ar=0):
    return struct.pack("!6H", qid, flags, qd, an, ns, ar)


def question(qname=QNAME, qtype=1):
    return qname + struct.pack("!HH", qtype, 1)


def parse_reply(wire):
    """(id, flags, rcode) of a reply, read from the header only."""
    qid, flags = struct.unpack("!HH", wire[:4])
    return qid, flags, flags & 0xF


@pytest.mark.parametrize("size", [0, 1, 5, 11])
def test_short_packet_dropped(hard, size):
    assert hard.udp_raw(header()[:size]) is None


def test_qr_set_dropped(hard):
    assert hard.udp_raw(header(flags=0x8100) + question()) is None
    # even a well-formed response with answers
    assert hard.udp_raw(header(flags=0x8580, an=0) + question()) is None


@pytest.mark.parametrize("qd", [0, 2])
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_qdcount_not_one_formerr(hard, qd, tcp):
    wire = header(qid=0x1111, qd=qd) + question() * qd
    if tcp:
        with hard.tcp() as s:
            harness.tcp_send(s, wire)
            (length,) = struct.unpack("!H", harness.recv_exact(s, 2))
            reply = harness.recv_exact(s, length)
    else:
        reply = hard.udp_raw(wire, timeout=REPLY_TIMEOUT)
    assert reply is not None, "QDCOUNT=%d must get FORMERR, not silence" % qd
    qid, flags, rcode = parse_reply(reply)
    assert qid == 0x1111
    assert flags & 0x8000, "QR not set"
    assert rcode == dns.rcode.FORMERR


@pytest.mark.parametrize("opcode", [dns.opcode.IQUERY, dns.opcode.STATUS,
                                    dns.opcode.NOTIFY, dns.opcode.UPDATE, 7])
def test_other_opcodes_notimp(hard, opcode):
    wire = header(qid=0x2222, flags=(opcode << 11) | 0x0100) + question()
    reply = hard.udp_raw(wire, timeout=REPLY_TIMEOUT)
    assert reply is not None, "opcode %d must get NOTIMP" % opcode
    qid, flags, rcode = parse_reply(reply)
    assert qid == 0x2222 and flags & 0x8000
    assert (flags >> 11) & 0xF == opcode, "opcode not echoed"
    assert rcode == dns.rcode.NOTIMP


GARBAGE = {
    "truncated-question": header() + b"\x03www\x04te",
    "no-qtype": header() + QNAME,
    "label-past-end": header() + b"\x3fabc",
    "pointer-loop": header() + b"\xc0\x0c" + struct.pack("!HH", 1, 1),
    "bad-label-type": header() + b"\x80abc\x00" + struct.pack("!HH", 1, 1),
    "counts-lie": header(an=5, ns=5, ar=5) + question(),
    "long-name": header() + b"\x3f" + b"a" * 63 + (b"\x3f" + b"b" * 63) * 4
    + b"\x00" + struct.pack("!HH", 1, 1),
    "trailing-junk-opt": header(ar=1) + question() + b"\x00\x00\x29\x04",
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage_formerr_or_drop(hard, name):
    reply = hard.udp_raw(GARBAGE[name])
    if reply is not None:
        assert len(reply) >= 12
        qid, flags, rcode = parse_reply(reply)
        assert qid == 0x4242 and flags & 0x8000
        assert rcode == dns.rcode.FORMERR, "rcode %d for %s" % (rcode, name)


def opt_record(owner=b"\x00", rdata=b""):
    """An OPT record offering 1232 bytes, with owner and RDATA as given."""
    return owner + struct.pack("!HHIH", 41, 1232, 0, len(rdata)) + rdata


COOKIE = struct.pack("!HH", 10, 8) + b"\x01" * 8
# RFC 6891 6.1.1 and 6.1.2: malformed, so FORMERR.  (header counts, what
# follows the question, whether the FORMERR carries an OPT: only when the
# query's own was well formed)
MALFORMED_EDNS = {
    "opt-owner-not-root": (dict(ar=1), opt_record(b"\x01x\x00"), 0),
    "opt-option-overruns-rdlen": (dict(ar=1), opt_record(
        rdata=struct.pack("!HH", 10, 9) + b"\x01" * 8), 0),
    "opt-option-header-cut": (dict(ar=1), opt_record(rdata=COOKIE + b"\x00\x0c"), 0),
    "opt-in-answer": (dict(an=1), opt_record(), 0),
    "opt-in-authority": (dict(ns=1), opt_record(), 0),
    "bytes-after-question": (dict(), b"\x00\x00\x00\x00", 0),
    "bytes-after-opt": (dict(ar=1), opt_record(rdata=COOKIE) + b"\x00", 1),
}


@pytest.fixture
def hard_silent_upstream(start_hard, silent_upstream):
    """hard with www.test, forwarding every other name to an upstream that
    never answers but keeps what it receives."""
    h = start_hard(BODY % harness.dead_port(), upstream=silent_upstream)
    silent_upstream.sock.setblocking(False)
    return h, silent_upstream


def received(upstream):
    """The datagrams the silent upstream got since last asked."""
    got = []
    while True:
        try:
            got.append(upstream.sock.recv(65535))
        except BlockingIOError:
            return got


@pytest.mark.parametrize("case", sorted(MALFORMED_EDNS))
@pytest.mark.parametrize("qname", [QNAME, b"\x03fwd\x04test\x00"],
                         ids=["configured", "forwarded"])
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_malformed_edns_formerr_never_forwarded(hard_silent_upstream, case,
                                                qname, tcp):
    """An OPT not owned by the root, with an option past its RDLEN, outside
    the additional section, or bytes after the last record: FORMERR (with
    no OPT when the query's was not well formed) at once, for a configured
    name and for one hard would forward; the upstream never sees it.  The
    same query well formed is answered (or forwarded)."""
    h, upstream = hard_silent_upstream
    counts, tail, opt_back = MALFORMED_EDNS[case]
    wire = header(qid=0x6161, **counts) + question(qname) + tail
    if tcp:
        with h.tcp() as s:
            s.settimeout(REPLY_TIMEOUT)
            harness.tcp_send(s, wire)
            (length,) = struct.unpack("!H", harness.recv_exact(s, 2))
            reply = harness.recv_exact(s, length)
    else:
        reply = h.udp_raw(wire, timeout=REPLY_TIMEOUT)
    assert reply is not None, "%s: no reply within %.0f s" % (case, REPLY_TIMEOUT)
    qid, flags, rcode = parse_reply(reply)
    assert (qid, rcode) == (0x6161, dns.rcode.FORMERR), \
        "%s: rcode %s" % (case, dns.rcode.to_text(rcode))
    assert flags & 0x8000 and struct.unpack("!H", reply[10:12])[0] == opt_back
    # A forwarded query would have been sent before the reply came back.
    assert not [d for d in received(upstream) if qname in d.lower()], \
        "%s was forwarded" % case
    well_formed = header(qid=0x6262, ar=1) + question(qname) + opt_record(rdata=COOKIE)
    if qname == QNAME:
        assert parse_reply(h.udp_raw(well_formed, timeout=REPLY_TIMEOUT))[2] == 0
    else:
        h.udp_raw(well_formed, timeout=0.2)
        harness.wait_until(lambda: [d for d in received(upstream) if qname in d],
                           REPLY_TIMEOUT, what="the well-formed query forwarded")


def test_random_fuzz(hard):
    """A few thousand random and mutated packets; hard keeps answering."""
    rnd = random.Random(1234)
    good = harness.make_query("www.test", "A").to_wire()
    fwd = harness.make_query("fwd.test", "A", edns=0).to_wire()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(2000):
        kind = i % 3
        if kind == 0:
            pkt = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 80)))
        else:
            base = bytearray(good if kind == 1 else fwd)
            for _ in range(rnd.randint(1, 4)):
                base[rnd.randrange(len(base))] = rnd.getrandbits(8)
            pkt = bytes(base[:rnd.randint(2, len(base))]) if rnd.random() < 0.3 \
                else bytes(base)
        sock.sendto(pkt, (hard.addr, hard.port))
        if i % 500 == 0:
            hard.assert_alive()
    sock.close()
    time.sleep(0.2)
    hard.assert_alive()


def test_tcp_half_sent_then_close(hard):
    for partial in (b"\x00", b"\x00\x40", b"\x00\x40" + header() + b"\x03ww"):
        s = hard.tcp()
        s.sendall(partial)
        s.close()
    with hard.tcp() as s:
        s.sendall(b"\x00\x40" + header())  # held open, half sent
        # other clients are not stalled meanwhile
        assert addresses(hard.query("www.test", "A", tcp=True)) == ["127.0.1.1"]
        assert addresses(hard.query("www.test", "A")) == ["127.0.1.1"]


def test_tcp_oversized_length(hard):
    # the largest length, with fewer bytes behind it, then close
    with hard.tcp() as s:
        s.sendall(b"\xff\xff" + header() + question())
        assert addresses(hard.query("www.test", "A", tcp=True)) == ["127.0.1.1"]
    # the largest length, completely sent: a 65535-byte garbage message
    with hard.tcp() as s:
        s.settimeout(3)
        s.sendall(b"\xff\xff" + header(qid=0x3333) + question() + b"\x00" * (65535 - 12 - len(question())))
        try:
            data = s.recv(65537)
        except (ConnectionResetError, TimeoutError, OSError):
            data = b""
        if data:  # answered: must be a well-formed reply with our ID
            assert len(data) >= 14
            assert struct.unpack("!H", data[2:4])[0] == 0x3333


def test_tcp_short_length_closes(hard):
    """A length below 12 closes the connection (decisions)."""
    with hard.tcp() as s:
        s.sendall(b"\x00\x05hello")
        harness.wait_until(lambda: harness.closed_by_peer(s, 0.1), timeout=3,
                           what="hard to close a connection with length 5")


def test_tcp_garbage_then_valid_on_same_connection(hard):
    """FORMERR for a bad message, the connection still serves the next one."""
    with hard.tcp() as s:
        harness.tcp_send(s, header(qid=0x5555, qd=2) + question() * 2)
        (length,) = struct.unpack("!H", harness.recv_exact(s, 2))
        reply = harness.recv_exact(s, length)
        assert parse_reply(reply)[0] == 0x5555 and parse_reply(reply)[2] == dns.rcode.FORMERR
        harness.tcp_send(s, harness.make_query("www.test", "A", qid=6).to_wire())
        r = harness.tcp_recv(s)
        assert r.id == 6 and addresses(r) == ["127.0.1.1"]


def test_many_tcp_connections_opened_and_dropped(hard):
    for _ in range(200):
        s = hard.tcp()
        s.close()
    assert addresses(hard.query("www.test", "A", tcp=True)) == ["127.0.1.1"]


def test_query_class_chaos_forwarded_or_answered(hard):
    """A configured name in another class is not ours to answer as IN."""
    wire = header(qid=0x7777) + question(QNAME, 1)[:-2] + struct.pack("!H", 3)
    reply = hard.udp_raw(wire, timeout=3)
    assert reply is not None, "a CH query must get an answer (forwarded or error)"
    msg = dns.message.from_wire(reply)
    assert msg.id == 0x7777
    for rrset in msg.answer:
        assert rrset.rdclass != 1 or rrset.rdtype != 1, \
            "IN A records in the answer to a CH query: %s" % msg


LEAK_INPUTS = sorted(glob.glob(os.path.join(harness.REPO, "tests", "fuzz",
                                            "corpus", "query", "query-leak-*.bin")))
SANITIZED = os.environ.get("HAR_SANITIZED") == "1"


def tsig_query(qid, tsigs):
    """A query for www.test with `tsigs` TSIG records (empty MACs)."""
    rdata = b"\x00" + b"\x00" * 5 + b"\x01" + struct.pack("!HHHHH", 300, 0, qid, 0, 0)
    record = b"\x00" + struct.pack("!HHIH", 250, 255, 0, len(rdata)) + rdata
    return header(qid=qid, ar=tsigs) + question() + record * tsigs


def test_two_tsig_records_formerr(hard):
    """More than one TSIG (RFC 8945 5.1): FORMERR; one is let through."""
    reply = hard.udp_raw(tsig_query(0x5151, 2), timeout=REPLY_TIMEOUT)
    assert reply is not None and parse_reply(reply) == (0x5151, 0x8181, 1)
    reply = hard.udp_raw(tsig_query(0x5152, 1), timeout=REPLY_TIMEOUT)
    assert reply is not None and parse_reply(reply)[2] == dns.rcode.NOERROR


def send_leak_inputs(port, rounds):
    """Each crafted query `rounds` times over UDP (and once over TCP);
    returns the rcodes of the replies."""
    assert len(LEAK_INPUTS) >= 2, "the fuzz corpus lost its leak inputs"
    rcodes = set()
    for path in LEAK_INPUTS:
        with open(path, "rb") as f:
            wire = f.read()
        for _ in range(rounds):
            reply = harness.udp_exchange("127.0.0.1", port, wire, 3)
            assert reply is not None
            rcodes.add(parse_reply(reply)[2])
        with harness.tcp_connect("127.0.0.1", port, 3) as s:
            harness.tcp_send(s, wire)
            (length,) = struct.unpack("!H", harness.recv_exact(s, 2))
            rcodes.add(parse_reply(harness.recv_exact(s, length))[2])
    return rcodes


def test_crafted_queries_formerr(hard):
    assert send_leak_inputs(hard.port, 2) == {dns.rcode.FORMERR}


def test_crafted_queries_leak_nothing(workdir, start_hard, upstream):
    """The inputs the fuzzer found leaking (two TSIG records: ldns 1.8.3's
    ldns_wire2pkt loses one RR a packet) leave nothing behind: checked by
    LeakSanitizer in a SANITIZE=1 build, by valgrind otherwise."""
    body = BODY % harness.dead_port()
    if SANITIZED:
        h = start_hard(body, upstream=upstream, args=("-f",))
        send_leak_inputs(h.port, 50)
        assert h.stop() == 0, h.log()[-6000:]
        assert "LeakSanitizer" not in h.log(), h.log()[-6000:]
        return
    port = harness.free_port()
    conf = os.path.join(workdir, "leak.conf")
    with open(conf, "w") as f:
        f.write(harness.hard_config(body, upstream.endpoint, port))
    log = os.path.join(workdir, "valgrind.log")
    proc = subprocess.Popen(
        ["valgrind", "--leak-check=full", "--errors-for-leak-kinds=definite",
         "--error-exitcode=9", "--log-file=" + log, harness.HARD, "-f", "-c", conf],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        harness.wait_until(
            lambda: harness.udp_exchange("127.0.0.1", port, header(qd=0), 0.5),
            30, what="hard under valgrind to answer")
        send_leak_inputs(port, 20)
        os.kill(proc.pid, signal.SIGTERM)
        status = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with open(log) as f:
        report = f.read()
    assert status == 0, report[-6000:]
    assert re.search(r"definitely lost: 0 bytes|no leaks are possible", report), \
        report[-6000:]
