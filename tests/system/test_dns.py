"""Authoritative answers for configured names (SPEC section 4), over UDP and
TCP: flags, ID, question, case, TTL, NODATA with SOA, EDNS0, truncation.

The configured names fail open (failure_mode = all) and their addresses are
checked against a port where nothing listens, so the expected answer is the
same whether or not health checks run: every configured address."""

import dns.flags
import dns.query
import dns.rdataclass
import dns.rcode
import dns.rdatatype
import pytest

import harness
from harness import addresses

BIG = ["127.1.0.%d" % i for i in range(1, 41)]


def body(dead):
    check = 'check_address = "http://127.0.0.1:%d/"' % dead
    return """
name www.test {
    ttl = 300
    selection_method = all
    failure_mode = all
    check_frequency = 60
    candidate "web1" { %(check)s
        address = { 127.0.1.1 } }
    candidate "web2" { %(check)s
        address = { "127.0.1.2" } }
}
name "Mixed.Test." {
    ttl = 5
    failure_mode = all
    check_frequency = 60
    candidate "m1" { check_address = "http://127.0.1.3:%(dead)d/" }
}
name v6.test {
    ttl = 60
    selection_method = all
    failure_mode = all
    check_frequency = 60
    candidate "six" { check_address = "http://[::1]:%(dead)d/" }
    candidate "four" { check_address = "http://127.0.1.4:%(dead)d/" }
}
name v4only.test {
    ttl = 42
    failure_mode = all
    check_frequency = 60
    candidate "v4" { %(check)s
        address = { 127.0.1.5 } }
}
name big.test {
    ttl = 10
    selection_method = all
    failure_mode = all
    check_frequency = 60
    candidate "many" { %(check)s
        address = { %(big)s } }
}
""" % {"check": check, "dead": dead, "big": ", ".join(BIG)}


@pytest.fixture
def hard(start_hard, start_upstream):
    # The upstream knows the configured names too, with other data: an answer
    # from it would show that hard forwarded what it should have answered.
    up = start_upstream("--host-record=www.test,192.0.2.99",
                        "--host-record=v4only.test,192.0.2.50,2001:db8::50",
                        "--host-record=big.test,192.0.2.51")
    h = start_hard(body(harness.dead_port()), upstream=up)
    h.upstream = up
    return h


proto = pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])


def assert_authoritative(r, rcode="NOERROR"):
    assert harness.rcode_text(r) == rcode
    assert r.flags & dns.flags.QR
    assert r.flags & dns.flags.AA, "AA not set: %s" % dns.flags.to_text(r.flags)
    assert r.flags & dns.flags.RA, "RA not set: %s" % dns.flags.to_text(r.flags)
    assert not r.flags & dns.flags.TC


@proto
def test_a_answer(hard, tcp):
    r = hard.query("www.test", "A", tcp=tcp, qid=0x1234)
    assert r.id == 0x1234
    assert_authoritative(r)
    assert r.flags & dns.flags.RD
    assert sorted(addresses(r)) == ["127.0.1.1", "127.0.1.2"]
    assert len(r.answer) == 1 and r.answer[0].ttl == 300
    assert len(r.question) == 1
    assert r.question[0].rdtype == dns.rdatatype.A
    hard.assert_alive()


@proto
def test_rd_copied_both_ways(hard, tcp):
    r = hard.query("www.test", "A", tcp=tcp, rd=False)
    assert_authoritative(r)
    assert not r.flags & dns.flags.RD
    r = hard.query("www.test", "A", tcp=tcp, rd=True)
    assert r.flags & dns.flags.RD


@proto
def test_case_insensitive_match_and_question_case_kept(hard, tcp):
    r = hard.query("WwW.TeSt", "A", tcp=tcp, qid=4242)
    assert_authoritative(r)
    assert r.id == 4242
    assert r.question[0].name.to_text() == "WwW.TeSt.", \
        "question not echoed with the client's letter case"
    assert sorted(addresses(r)) == ["127.0.1.1", "127.0.1.2"]


@proto
def test_trailing_dot_and_case_in_config(hard, tcp):
    r = hard.query("mixed.test", "A", tcp=tcp)
    assert_authoritative(r)
    assert addresses(r) == ["127.0.1.3"]
    assert r.answer[0].ttl == 5
    r = hard.query("MIXED.TEST.", "A", tcp=tcp)
    assert addresses(r) == ["127.0.1.3"]


@proto
def test_aaaa_answer(hard, tcp):
    r = hard.query("v6.test", "AAAA", tcp=tcp)
    assert_authoritative(r)
    assert addresses(r, "AAAA") == ["::1"]
    assert r.answer[0].ttl == 60
    r = hard.query("v6.test", "A", tcp=tcp)
    assert addresses(r) == ["127.0.1.4"]


@proto
def test_nodata_for_missing_family(hard, tcp):
    r = hard.query("v4only.test", "AAAA", tcp=tcp)
    assert_authoritative(r)
    assert r.answer == [], "AAAA for an IPv4-only name must be NODATA: %s" % r
    soa = [rr for rr in r.authority if rr.rdtype == dns.rdatatype.SOA]
    assert len(soa) == 1, "NODATA needs an SOA in authority: %s" % r
    rrset = soa[0]
    assert rrset.name.to_text().lower() == "v4only.test."
    assert rrset.ttl == 42
    s = rrset[0]
    assert s.mname.to_text().lower() == "v4only.test."
    assert s.rname.to_text().lower() == "hostmaster.v4only.test."
    assert (s.serial, s.refresh, s.retry, s.expire, s.minimum) == \
        (1, 3600, 600, 86400, 42)
    # the A query of the same name is still answered
    assert addresses(hard.query("v4only.test", "A", tcp=tcp)) == ["127.0.1.5"]


@proto
def test_unconfigured_subdomain_not_answered(hard, tcp):
    # Exact match only: a name below a configured one is forwarded.
    r = hard.query("sub.www.test", "A", tcp=tcp)
    assert harness.rcode_text(r) == "NXDOMAIN"
    direct = hard.upstream.query("sub.www.test", "A")
    assert r.flags == direct.flags and r.authority == direct.authority


@proto
def test_edns_opt_echoed(hard, tcp):
    r = hard.query("www.test", "A", tcp=tcp, edns=0, payload=4096)
    assert_authoritative(r)
    assert r.edns == 0, "query with OPT must get OPT back"
    assert r.payload == 1232
    r = hard.query("v4only.test", "AAAA", tcp=tcp, edns=0, payload=1400)
    assert r.edns == 0 and r.payload == 1232 and r.answer == []
    r = hard.query("www.test", "A", tcp=tcp)
    assert r.edns == -1, "no OPT in the answer to a query without one"
    assert r.additional == []


@proto
def test_edns_badvers(hard, tcp):
    r = hard.query("www.test", "A", tcp=tcp, edns=1, payload=1232)
    assert r.rcode() == dns.rcode.BADVERS, harness.rcode_text(r)
    assert r.edns == 0
    assert r.answer == []


def test_udp_truncation_without_edns(hard):
    r = hard.query("big.test", "A")
    assert r.flags & dns.flags.TC, "a 40-address answer does not fit 512 bytes"
    assert r.flags & dns.flags.AA
    assert r.answer == []
    assert r.question[0].name.to_text() == "big.test."


def test_udp_truncation_honours_edns_payload(hard):
    r = hard.query("big.test", "A", edns=0, payload=4096)
    assert not r.flags & dns.flags.TC
    assert sorted(addresses(r)) == sorted(BIG)
    # a payload below 512 counts as 512: still too small
    r = hard.query("big.test", "A", edns=0, payload=400)
    assert r.flags & dns.flags.TC
    assert r.answer == []
    assert r.edns == 0


def test_tcp_full_answer(hard):
    r = hard.query("big.test", "A", tcp=True)
    assert not r.flags & dns.flags.TC
    assert_authoritative(r)
    assert sorted(addresses(r)) == sorted(BIG)
    assert r.answer[0].ttl == 10


def test_listens_on_ipv6_loopback(start_hard, upstream):
    h = start_hard(body(harness.dead_port()), upstream=upstream,
                   listen=("127.0.0.1", "::1"))
    for tcp in (False, True):
        r = h.query("www.test", "A", tcp=tcp, addr="::1")
        assert_authoritative(r)
        assert sorted(addresses(r)) == ["127.0.1.1", "127.0.1.2"]
        r = h.query("fwd.test", "A", tcp=tcp, addr="::1")
        assert addresses(r) == ["192.0.2.1"]
        r = h.query("www.test", "A", tcp=tcp, addr="127.0.0.1")
        assert sorted(addresses(r)) == ["127.0.1.1", "127.0.1.2"]


@proto
def test_any_answered_from_own_selection(hard, tcp):
    """ANY (RFC 8482) for a configured name: hard's own A and AAAA records,
    never the upstream's (which has 192.0.2.99 for www.test)."""
    r = hard.query("www.test", "ANY", tcp=tcp)
    assert_authoritative(r)
    assert sorted(addresses(r)) == ["127.0.1.1", "127.0.1.2"], r
    assert {rrset.rdtype for rrset in r.answer} == {dns.rdatatype.A}, r
    assert r.answer[0].ttl == 300
    r = hard.query("v6.test", "ANY", tcp=tcp)
    assert_authoritative(r)
    assert addresses(r) == ["127.0.1.4"] and addresses(r, "AAAA") == ["::1"], r
    # the same with class ANY
    q = harness.make_query("v4only.test", "ANY")
    q.question[0].rdclass = dns.rdataclass.ANY
    r = (dns.query.tcp if tcp else dns.query.udp)(q, hard.addr, port=hard.port,
                                                  timeout=2)
    assert_authoritative(r)
    assert addresses(r) == ["127.0.1.5"] and addresses(r, "AAAA") == [], r
    # another type of a configured name is still forwarded
    r = hard.query("www.test", "TXT", tcp=tcp)
    assert not r.flags & dns.flags.AA


def test_truncated_forward_keeps_opt(start_hard, start_upstream):
    """A forwarded reply too big for the client's UDP size is cut with TC
    set and keeps its OPT record (RFC 6891 section 7)."""
    chunks = ",".join(["x" * 200] * 8)
    up = start_upstream("--txt-record=bigtxt.test,%s" % chunks)
    h = start_hard(body(harness.dead_port()), upstream=up)
    # first (dnsmasq 2.90 puts OPT in every later reply on a TCP connection
    # that once carried a query with one): a query without OPT gets none
    r = h.query("bigtxt.test", "TXT")
    assert r.flags & dns.flags.TC and r.edns == -1
    full = h.query("bigtxt.test", "TXT", tcp=True, edns=0, payload=1232)
    assert sum(len(s) for rd in full.answer[0] for s in rd.strings) == 1600
    r = h.query("bigtxt.test", "TXT", edns=0, payload=1232)
    assert r.flags & dns.flags.TC and r.answer == []
    assert r.edns == 0, "the truncated reply lost its OPT record"
    r = h.query("bigtxt.test", "TXT", edns=0, payload=600, qid=0x3131)
    assert r.flags & dns.flags.TC and r.edns == 0 and r.id == 0x3131
