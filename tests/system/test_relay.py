"""What a relayed (forwarded) reply carries (relay.c; har.conf.5 FORWARDING,
hard.8): never an address of a configured name that hard did not vet, and
no edns-tcp-keepalive but hard's own.

- a CNAME chain that reaches a configured name ends in hard's own answer for
  it: its selection and TTL, SERVFAIL under failure_mode servfail, every
  address under all, the upstream's records under none, NODATA with hard's
  SOA for a family the name does not have;
- A and AAAA records of a configured name elsewhere (an MX's additional
  section) are removed;
- the ipv4hint and ipv6hint of an HTTPS or SVCB record of (or pointing at) a
  configured name are hard's selection, or removed;
- RFC 7828 option 11 is removed over UDP and carries hard's tcp_idle_timeout
  over TCP.

The upstream is dnsmasq where it can serve the records, else a scripted
nameserver (dnspython) answering over UDP and TCP.  The configured name's
server is a real HTTP server on 127.0.0.2 (healthy) or a dead port."""

import os
import socket
import struct
import threading

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rdtypes.svcbbase
import dns.rrset
import pytest

import harness
from harness import addresses
from statehelpers import sql, sql_value, stable_value

UNVETTED = "127.0.0.98"         # the upstream's address for api.test
UNVETTED6 = "2001:db8::98"
KEEPALIVE = 11                  # RFC 7828 edns-tcp-keepalive

proto = pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])


def api_config(check_url, mode="servfail", ttl=33, extra=""):
    return """
name api.test {
    ttl = %d
    failure_mode = %s
    check_frequency = 0.5
    %s
    candidate "web" { check_address = "%s" }
}
""" % (ttl, mode, extra, check_url)


def healthy_hard(start_hard, start_http, upstream, **kw):
    web = start_http("127.0.0.2")
    h = start_hard(api_config(web.url(), **kw), upstream=upstream)
    harness.wait_answer(h, "api.test", ["127.0.0.2"], timeout=10)
    return h


def down_hard(start_hard, upstream, mode, extra=""):
    dead = harness.dead_port("127.0.0.2")
    h = start_hard(api_config("http://127.0.0.2:%d/" % dead, mode=mode,
                              extra=extra), upstream=upstream)
    return h


def all_addresses(r):
    """Every A and AAAA address anywhere in the reply, hints included."""
    found = []
    for section in (r.answer, r.authority, r.additional):
        for rrset in section:
            for rd in rrset:
                if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                    found.append(rd.address)
                if rrset.rdtype in (dns.rdatatype.HTTPS, dns.rdatatype.SVCB):
                    found.extend(hints(rd))
    return found


def hints(rd):
    out = []
    for key in (dns.rdtypes.svcbbase.ParamKey.IPV4HINT,
                dns.rdtypes.svcbbase.ParamKey.IPV6HINT):
        if key in rd.params:
            out.extend(rd.params[key].addresses)
    return out


def rrset_of(r, section, name, rdtype):
    for rrset in section:
        if rrset.name == dns.name.from_text(name) and \
                rrset.rdtype == dns.rdatatype.from_text(rdtype):
            return rrset
    return None


# ------------------------------------------------------- scripted upstream


class Wire:
    """A reply as a message or as raw bytes, for to_wire()."""

    def __init__(self, reply):
        self.reply = reply

    def to_wire(self):
        if isinstance(self.reply, bytes):
            return self.reply
        return self.reply.to_wire()


class RelayUpstream(harness.ScriptedUpstream):
    """harness.ScriptedUpstream answering over UDP and TCP with what
    respond(query, tcp) returns (a dns.message.Message, or raw bytes)."""

    def __init__(self, respond):
        self.respond = respond
        self.tcp_queries = 0
        for attempt in range(5):
            super().__init__()
            self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.listener.bind((self.addr, self.port))
                break
            except OSError:
                self.listener.close()
                super().stop()
                if attempt == 4:
                    raise
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.tcp_thread = threading.Thread(target=self._serve_tcp, daemon=True)
        self.tcp_thread.start()

    def _reply(self, query, address):
        return Wire(self.respond(query, False))

    def _serve_tcp(self):
        while self.running:
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,),
                             daemon=True).start()

    def _connection(self, conn):
        conn.settimeout(5)
        try:
            while self.running:
                (length,) = struct.unpack("!H", harness.recv_exact(conn, 2))
                q = dns.message.from_wire(harness.recv_exact(conn, length))
                self.tcp_queries += 1
                wire = Wire(self.respond(q, True)).to_wire()
                conn.sendall(struct.pack("!H", len(wire)) + wire)
        except (EOFError, OSError, dns.exception.DNSException):
            pass
        finally:
            conn.close()

    def stop(self):
        super().stop()
        self.listener.close()
        self.tcp_thread.join(2)


@pytest.fixture
def scripted():
    started = []

    def start(respond):
        u = RelayUpstream(respond)
        started.append(u)
        return u
    yield start
    for u in started:
        u.stop()


def response(query, *answer, additional=(), tc=False, keepalive=None):
    """The reply to query with the given records (presentation strings),
    RFC 7828 option 11 carrying keepalive (in 100 ms units) when set."""
    r = dns.message.make_response(query)
    r.flags |= dns.flags.RA
    if tc:
        r.flags |= dns.flags.TC
    for section, records in ((r.answer, answer), (r.additional, additional)):
        for text in records:
            section.append(dns.rrset.from_text(*text.split(None, 4)))
    if keepalive is not None:
        r.use_edns(0, payload=1232, options=[
            dns.edns.GenericOption(KEEPALIVE, struct.pack("!H", keepalive))])
    return r


def options(r, code):
    return [o for o in r.options if o.otype == code]


# ------------------------------------------------------ item 7: keepalive


def keepalive_upstream(query, tcp):
    """Every reply carries the upstream's keepalive, 37 s (370)."""
    return response(query, "%s 60 IN TXT \"hi\"" % query.question[0].name,
                    keepalive=370)


def query_with_keepalive(h, tcp):
    q = harness.make_query("txt.test", "TXT", edns=0)
    q.use_edns(0, payload=1232, options=[dns.edns.GenericOption(KEEPALIVE, b"")])
    if tcp:
        return dns.query.tcp(q, h.addr, port=h.port, timeout=3)
    return dns.query.udp(q, h.addr, port=h.port, timeout=3)


def test_keepalive_removed_over_udp(start_hard, scripted):
    up = scripted(keepalive_upstream)
    h = start_hard("", upstream=up)
    direct = dns.query.udp(harness.make_query("txt.test", "TXT", edns=0),
                           up.addr, port=up.port, timeout=3)
    assert options(direct, KEEPALIVE), "the scripted upstream sends option 11"
    r = query_with_keepalive(h, tcp=False)
    assert r.answer, r
    assert r.edns == 0
    assert options(r, KEEPALIVE) == [], \
        "RFC 7828 3.2.1: no edns-tcp-keepalive over UDP; got %s" % r.options


@pytest.mark.parametrize("idle,units", [(10, 100), (7.55, 75), (86400, 65535)])
def test_keepalive_is_hards_idle_timeout_over_tcp(start_hard, scripted, idle,
                                                  units):
    up = scripted(keepalive_upstream)
    h = start_hard("", upstream=up, extra="tcp_idle_timeout = %s\n" % idle)
    r = query_with_keepalive(h, tcp=True)
    assert r.answer, r
    got = options(r, KEEPALIVE)
    assert len(got) == 1, r.options
    (timeout,) = struct.unpack("!H", got[0].to_wire())
    assert timeout == units, \
        "keepalive %d (x100 ms): the upstream's 370, not hard's %s s" % (
            timeout, idle)


# --------------------------------------------------- item 12: CNAME chains


@pytest.fixture
def chain_upstream(start_upstream):
    """dnsmasq: alias.test -> api.test (with the upstream's unvetted A),
    an MX whose target is api.test, and a chain to an unconfigured name."""
    return start_upstream(
        "--host-record=api.test,%s" % UNVETTED,
        "--cname=alias.test,api.test",
        "--cname=alias2.test,alias.test",
        "--mx-host=mx.test,api.test,10",
        "--host-record=other.test,192.0.2.7",
        "--cname=plain.test,other.test",
    )


@proto
def test_chain_ends_in_hards_answer(start_hard, start_http, chain_upstream, tcp):
    direct = chain_upstream.query("alias.test", "A", tcp=tcp)
    assert addresses(direct) == [UNVETTED]
    h = healthy_hard(start_hard, start_http, chain_upstream)
    for name in ("alias.test", "alias2.test", "ALIAS.test"):
        r = h.query(name, "A", tcp=tcp, qid=4242)
        assert r.id == 4242
        assert harness.rcode_text(r) == "NOERROR"
        assert addresses(r) == ["127.0.0.2"], r
        assert UNVETTED not in all_addresses(r)
        a = rrset_of(r, r.answer, "api.test", "A")
        assert a is not None and a.ttl == 33, "hard's TTL: %s" % r
        cname = rrset_of(r, r.answer, name, "CNAME")
        assert cname is not None, "the upstream's CNAME is kept: %s" % r
        assert r.question[0].name.to_text() == name + "."
    # ANY: hard's answer to ANY for api.test, its A records (no IPv6)
    r = h.query("alias.test", "ANY", tcp=tcp)
    assert addresses(r) == ["127.0.0.2"] and UNVETTED not in all_addresses(r), r


@proto
def test_chain_servfail_when_name_fails(start_hard, chain_upstream, tcp):
    h = down_hard(start_hard, chain_upstream, "servfail")
    harness.wait_answer(h, "api.test", "SERVFAIL", timeout=10)
    r = h.query("alias.test", "A", tcp=tcp, edns=0)
    assert harness.rcode_text(r) == "SERVFAIL", r
    assert not r.answer and not r.authority
    assert r.edns == 0, "the client's OPT is answered"
    assert r.question[0].name.to_text() == "alias.test."
    harness.wait_until(
        lambda: [l for l in h.log().splitlines() if "alias.test. A: forwarded: "
                 "upstream NOERROR, rewritten for api.test: SERVFAIL" in l],
        5, what="the query log line; log:\n" + h.log()[-2000:])


@proto
def test_chain_failure_all_every_address_cut_to_fit(start_hard, start_upstream,
                                                    tcp):
    """failure_mode all: every address of the name (40 here), which no
    longer fits 512 bytes: cut with TC for a UDP client after the rewrite,
    whole over TCP."""
    many = ["127.3.0.%d" % i for i in range(1, 41)]
    up = start_upstream("--host-record=api.test,%s" % UNVETTED,
                        "--cname=alias.test,api.test")
    h = down_hard(start_hard, up, "all",
                  extra="selection_method = all\n    candidate \"more\" { "
                  "check_address = \"http://127.0.0.2:%d/\"\n address = { %s } }"
                  % (harness.dead_port("127.0.0.2"), ", ".join(many)))
    harness.wait_until(lambda: len(addresses(h.query("api.test", "A", tcp=True)))
                       == 41, 10, what="fail-open answer")
    r = h.query("alias.test", "A", tcp=tcp)
    if not tcp:
        assert r.flags & dns.flags.TC, "a 41-address answer exceeds 512 bytes"
        assert not r.answer
        return
    assert not r.flags & dns.flags.TC
    assert sorted(addresses(r)) == sorted(many + ["127.0.0.2"])
    assert UNVETTED not in all_addresses(r)


@proto
def test_chain_failure_none_keeps_upstream(start_hard, chain_upstream, tcp):
    """failure_mode none: hard forwards a query of the name itself, so the
    upstream's records of it stand at the end of a chain too."""
    h = down_hard(start_hard, chain_upstream, "none")
    harness.wait_answer(h, "api.test", [UNVETTED], timeout=10)
    r = h.query("alias.test", "A", tcp=tcp)
    assert addresses(r) == [UNVETTED]


@proto
def test_chain_nodata_family(start_hard, start_http, chain_upstream, tcp):
    """api.test has no IPv6 address (an IP literal check address): AAAA
    through the chain is NODATA with hard's SOA for api.test."""
    h = healthy_hard(start_hard, start_http, chain_upstream)
    r = h.query("alias.test", "AAAA", tcp=tcp)
    assert harness.rcode_text(r) == "NOERROR"
    assert addresses(r, "AAAA") == []
    assert rrset_of(r, r.answer, "alias.test", "CNAME") is not None
    soa = rrset_of(r, r.authority, "api.test", "SOA")
    assert soa is not None and soa.ttl == 33, r


@proto
def test_additional_addresses_of_configured_name_removed(
        start_hard, start_http, chain_upstream, tcp):
    direct = chain_upstream.query("mx.test", "MX", tcp=tcp)
    assert UNVETTED in all_addresses(direct)
    h = healthy_hard(start_hard, start_http, chain_upstream)
    r = h.query("mx.test", "MX", tcp=tcp)
    assert rrset_of(r, r.answer, "mx.test", "MX") is not None
    assert UNVETTED not in all_addresses(r), r


@proto
def test_unconfigured_chain_relayed_unchanged(start_hard, start_http,
                                              chain_upstream, tcp):
    h = healthy_hard(start_hard, start_http, chain_upstream)
    r = h.query("plain.test", "A", tcp=tcp)
    direct = chain_upstream.query("plain.test", "A", tcp=tcp)
    assert r.answer == direct.answer and r.flags == direct.flags


def test_chain_query_logged(start_hard, start_http, chain_upstream):
    h = healthy_hard(start_hard, start_http, chain_upstream)
    h.query("alias.test", "A")
    harness.wait_until(
        lambda: [l for l in h.log().splitlines() if "alias.test. A: forwarded: "
                 "upstream NOERROR, rewritten for api.test: NOERROR 127.0.0.2"
                 in l], 5, what="the query log line; log:\n" + h.log()[-2000:])


def signed_upstream(query, tcp):
    """nx.test: CNAME to api.test, NXDOMAIN for api.test; sig.test: a
    signed chain (AD set), with api.test's unvetted, signed A."""
    name = query.question[0].name.to_text()
    soa = "test. 60 IN SOA ns.test. hostmaster.test. 1 2 3 4 60"
    sig = "60 IN RRSIG %s 8 2 60 20300101000000 20200101000000 1 test. AAAA"
    if name == "nx.test.":
        r = response(query, "nx.test. 60 IN CNAME api.test.")
        r.set_rcode(dns.rcode.NXDOMAIN)
        r.authority.append(dns.rrset.from_text(*soa.split(None, 4)))
        return r
    r = response(query, "sig.test. 60 IN CNAME api.test.",
                 "sig.test. " + sig % "CNAME",
                 "api.test. 60 IN A %s" % UNVETTED, "api.test. " + sig % "A")
    r.flags |= dns.flags.AD
    r.authority.append(dns.rrset.from_text(*soa.split(None, 4)))
    return r


@proto
def test_chain_rcode_authority_and_signatures(start_hard, start_http, scripted,
                                              tcp):
    """The name is hard's to answer: NOERROR though the upstream said
    NXDOMAIN of it, hard's authority section (none with addresses), and the
    upstream's signatures of its records gone, with the AD flag."""
    up = scripted(signed_upstream)
    h = healthy_hard(start_hard, start_http, up)
    r = h.query("nx.test", "A", tcp=tcp)
    assert harness.rcode_text(r) == "NOERROR", r
    assert addresses(r) == ["127.0.0.2"] and not r.authority, r
    r = h.query("sig.test", "A", tcp=tcp)
    assert addresses(r) == ["127.0.0.2"] and not r.authority, r
    assert not r.flags & dns.flags.AD, "AD after a rewrite"
    covered = [rd.type_covered for rrset in r.answer
               if rrset.rdtype == dns.rdatatype.RRSIG for rd in rrset]
    assert covered == [dns.rdatatype.CNAME], \
        "the CNAME's signature stays, api.test's A's goes: %s" % r


def test_unreadable_reply_servfail(start_hard, start_http, scripted):
    """A reply cut short after a record of a configured name: SERVFAIL."""
    def broken(query, tcp):
        wire = response(query, "%s 60 IN CNAME api.test." % query.question[0].name,
                        "api.test. 60 IN A %s" % UNVETTED).to_wire()
        return wire[:6] + b"\x00\x03" + wire[8:] + b"\xc0\x0c\x00"
    up = scripted(broken)
    h = healthy_hard(start_hard, start_http, up)
    for tcp in (False, True):
        r = h.query("broken.test", "A", tcp=tcp)
        assert harness.rcode_text(r) == "SERVFAIL", r
        assert not r.answer


def forward_pointer_reply(query):
    """The reply to query (other.test A) with an A record whose owner is a
    compression pointer forward, to api.test spelled out as the owner of
    a later TXT record: glibc and ldns read such a name, dnspython does
    not."""
    head = response(query).to_wire()[:12]
    question = query.to_wire()[12:]
    answer_at = 12 + len(question)
    a_record = 16  # pointer, type, class, TTL, length, address
    txt_owner = answer_at + a_record
    pointer = struct.pack("!H", 0xc000 | txt_owner)
    a = pointer + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(UNVETTED)
    txt = b"\x03api\x04test\x00" + struct.pack("!HHIH", 16, 1, 60, 2) + b"\x01x"
    counts = struct.pack("!HHHH", 1, 1, 0, 1)
    return head[:4] + counts + question + a + txt


@proto
def test_forward_pointer_to_configured_name(start_hard, start_http, scripted, tcp):
    """An address of a configured name whose owner is a compression pointer
    forward in the message (found by fuzz_relay: an HTTPS record's hints
    so) is removed like any other: relay.c used to give up on such a name
    and pass the record on, while glibc reads it as api.test.  The client
    reads the reply raw (dnspython refuses forward pointers)."""
    up = scripted(lambda query, tcp: forward_pointer_reply(query))
    h = healthy_hard(start_hard, start_http, up)
    wire = dns.message.make_query("other.test", "A").to_wire()
    if tcp:
        with socket.create_connection((h.addr, h.port), timeout=3) as conn:
            conn.sendall(struct.pack("!H", len(wire)) + wire)
            (length,) = struct.unpack("!H", harness.recv_exact(conn, 2))
            reply = harness.recv_exact(conn, length)
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(3)
            sock.sendto(wire, (h.addr, h.port))
            reply = sock.recv(65535)
    assert socket.inet_aton(UNVETTED) not in reply, reply
    r = dns.message.from_wire(reply)
    assert harness.rcode_text(r) in ("NOERROR", "SERVFAIL"), r
    assert UNVETTED not in all_addresses(r), r


def test_chain_wakes_idle_name(start_hard, start_http, chain_upstream):
    """A reply hard answers the name in counts as a query of it."""
    h = healthy_hard(start_hard, start_http, chain_upstream,
                     extra="idle_after = 1\n    idle_check_frequency = 60")
    harness.wait_until(lambda: "api.test is idle" in h.log(), 10,
                       what="api.test to go idle")
    assert addresses(h.query("alias.test", "A")) == ["127.0.0.2"]
    harness.wait_until(lambda: "api.test is no longer idle (queried)"
                       in h.log(), 5, what="api.test to wake")


def test_relayed_counted_once(workdir, start_hard, start_http, chain_upstream):
    """Three relayed queries rewritten with api.test's answer: three in
    totals forwarded, none in api.test's counters."""
    db = os.path.join(workdir, "har.db")
    web = start_http("127.0.0.2")
    h = start_hard(api_config(web.url()), upstream=chain_upstream, data_file=db)
    harness.wait_answer(h, "api.test", ["127.0.0.2"], timeout=10)

    def counters():
        stable_value(db, "SELECT group_concat(value) FROM totals"
                     " WHERE counter NOT LIKE 'checks%'", quiet=1.5, timeout=15)
        out = {(r["counter"], r["kind"]): r["value"]
               for r in sql(db, "SELECT * FROM totals")}
        out.update({("api.test", k): v for r in
                    sql(db, "SELECT * FROM name_counters") for k, v in r.items()
                    if k != "name"})
        out[("api.test", "queries")] = sql_value(
            db, "SELECT queries FROM names WHERE name = 'api.test'")
        return out
    before = counters()
    for tcp in (False, True, False):
        assert addresses(h.query("alias.test", "A", tcp=tcp)) == ["127.0.0.2"]
    after = counters()
    changed = {k: after[k] - before.get(k, 0) for k in after
               if after[k] != before.get(k, 0) and not k[0].startswith("check")}
    assert changed == {("queries", "udp"): 2, ("queries", "tcp"): 1,
                       ("forwarded", ""): 3,
                       ("tcp_connections_accepted", ""): 1}, changed


def test_truncated_reply_cut(start_hard, start_http, scripted):
    """An upstream reply with TC set carries part of the records: when they
    would change, the client gets the question alone, with TC."""
    up = scripted(lambda q, tcp: response(
        q, "%s 60 IN CNAME api.test." % q.question[0].name,
        "api.test. 60 IN A %s" % UNVETTED, tc=True))
    h = healthy_hard(start_hard, start_http, up)
    for tcp in (False, True):
        r = h.query("cut.test", "A", tcp=tcp)
        assert r.flags & dns.flags.TC, r
        assert not r.answer and UNVETTED not in all_addresses(r)


# --------------------------------------------------- item 11: HTTPS hints


def https_upstream(query, tcp):
    name = query.question[0].name.to_text()
    qtype = query.question[0].rdtype
    records = []
    additional = []
    if qtype == dns.rdatatype.HTTPS and name == "api.test.":
        records.append("api.test. 300 IN HTTPS 1 . alpn=h2 ipv4hint=%s "
                       "ipv6hint=%s" % (UNVETTED, UNVETTED6))
    elif qtype == dns.rdatatype.HTTPS and name == "svc.test.":
        records.append("svc.test. 300 IN HTTPS 1 api.test. alpn=h2 "
                       "mandatory=ipv4hint ipv4hint=%s" % UNVETTED)
        additional.append("api.test. 300 IN A %s" % UNVETTED)
    elif qtype == dns.rdatatype.HTTPS and name == "alias.test.":
        records.append("alias.test. 300 IN HTTPS 0 api.test.")
    elif qtype == dns.rdatatype.SVCB and name == "_dns.api.test.":
        records.append("_dns.api.test. 300 IN SVCB 1 api.test. alpn=dot "
                       "ipv4hint=%s" % UNVETTED)
    elif qtype == dns.rdatatype.SVCB and name == "api.test.":
        records.append("api.test. 300 IN SVCB 1 cdn.test. ipv4hint=192.0.2.55 "
                       "port=8443")
    elif qtype == dns.rdatatype.HTTPS:
        records.append("%s 300 IN HTTPS 1 . ipv4hint=192.0.2.44" % name)
    return response(query, *records, additional=additional)


@proto
def test_https_hints_are_hards_selection(start_hard, start_http, scripted, tcp):
    up = scripted(https_upstream)
    h = healthy_hard(start_hard, start_http, up)
    r = h.query("api.test", "HTTPS", tcp=tcp)
    (rd,) = rrset_of(r, r.answer, "api.test", "HTTPS")
    assert hints(rd) == ["127.0.0.2"], \
        "ipv4hint hard's checked address, ipv6hint gone (no IPv6): %s" % rd
    assert dns.rdtypes.svcbbase.ParamKey.ALPN in rd.params, "alpn kept"
    assert UNVETTED not in all_addresses(r)


@proto
def test_https_target_hints_and_additional(start_hard, start_http, scripted,
                                           tcp):
    """A ServiceMode record whose target is a configured name: its hints are
    hard's, and the upstream's A for the target in the additional section
    goes.  An SVCB record too; an AliasMode record has no hints to change."""
    up = scripted(https_upstream)
    h = healthy_hard(start_hard, start_http, up)
    r = h.query("svc.test", "HTTPS", tcp=tcp)
    (rd,) = rrset_of(r, r.answer, "svc.test", "HTTPS")
    assert hints(rd) == ["127.0.0.2"], rd
    assert UNVETTED not in all_addresses(r), r
    r = h.query("_dns.api.test", "SVCB", tcp=tcp)
    (rd,) = rrset_of(r, r.answer, "_dns.api.test", "SVCB")
    assert hints(rd) == ["127.0.0.2"], rd
    r = h.query("api.test", "SVCB", tcp=tcp)
    (rd,) = rrset_of(r, r.answer, "api.test", "SVCB")
    assert hints(rd) == [], "the hints of another name than api.test: %s" % rd
    assert rd.params[dns.rdtypes.svcbbase.ParamKey.PORT].port == 8443
    r = h.query("alias.test", "HTTPS", tcp=tcp)
    assert r.answer == up.respond(harness.make_query("alias.test", "HTTPS"),
                                  tcp).answer
    r = h.query("elsewhere.test", "HTTPS", tcp=tcp)
    (rd,) = rrset_of(r, r.answer, "elsewhere.test", "HTTPS")
    assert hints(rd) == ["192.0.2.44"], "other names' hints are relayed"


@proto
@pytest.mark.parametrize("mode", ["servfail", "all", "none"])
def test_https_hints_removed_when_name_fails(start_hard, scripted, tcp, mode):
    """No available address: no hint (not even under failure_mode all, whose
    addresses were not found available), and mandatory loses the key.  The
    upstream's A record of the target in the additional section stands
    under failure_mode none only, as a query of the name gets it then."""
    up = scripted(https_upstream)
    h = down_hard(start_hard, up, mode)
    harness.wait_until(lambda: "127.0.0.2" in h.log(), 10,
                       what="a first check of api.test")
    for name in ("api.test", "svc.test"):
        r = h.query(name, "HTTPS", tcp=tcp)
        assert harness.rcode_text(r) == "NOERROR"
        (rd,) = rrset_of(r, r.answer, name, "HTTPS")
        assert hints(rd) == [], rd
        assert dns.rdtypes.svcbbase.ParamKey.MANDATORY not in rd.params, rd
        extra = []
        if mode == "none":
            extra = [rd.address for rrset in r.additional for rd in rrset]
        assert all_addresses(r) == extra, r
