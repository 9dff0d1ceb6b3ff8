"""The fail-safe set-ups of contrib/resolv.conf.md (issue 17 item 6), as
glibc and musl see them: failsafe.py runs the real hard, dnsmasq as the
upstream (and as the per-domain forwarder of set-up (c)), and the C
libraries' resolvers in private namespaces with their own resolv.conf.
The outcomes asserted here are the ones the document states; the times
are in its table, not here."""

import os

import pytest

import failsafe
import namespace
from failsafe import (CANDIDATE, CANDIDATE6, CONFIGURED, DUAL, ELSEWHERE,
                      FORWARDED, UNCHECKED)

# The slow states only where they tell something: a hung hard costs glibc
# its whole 2 x 5 s in (a) and (c), and musl 5 s whenever nothing answers.
PLAN = {
    "a": ["healthy", "hung", "stopped"],
    "b": ["healthy", "servfail", "hung", "stopped"],
    "c": ["healthy", "servfail", "stopped"],
}
CLIENTS = ("glibc", "glibc-v4", "musl")
BOTH = sorted([CANDIDATE, CANDIDATE6])


@pytest.fixture(scope="module")
def report():
    if namespace.unavailable():
        pytest.skip(namespace.unavailable())
    if os.geteuid() != 0:
        pytest.skip("needs root: makes network, mount and PID namespaces "
                    "(unshare) with its own /etc/resolv.conf")
    got = failsafe.measure(PLAN, repeat=3, timeout=300)
    assert not got["problems"], "\n".join(got["problems"])
    assert got["musl"], "no musl client: contrib/install-deps test installs musl-tools"
    return got


def seen(report, setup, state, client, name):
    """The outcome of every lookup: the addresses (sorted), or "fails"."""
    for row in report["rows"]:
        if (row["setup"], row["state"]) == (setup, state):
            return [sorted(r["addresses"]) if r["status"] == 0 else "fails"
                    for r in row["results"][client][name]]
    raise AssertionError("no row for (%s) %s" % (setup, state))


def assert_all(report, setup, state, name, wanted, clients=CLIENTS):
    for client in clients:
        got = seen(report, setup, state, client, name)
        assert got and all(g == wanted for g in got), \
            "(%s) hard %s, %s %s: %s, wanted %s" % (setup, state, client, name,
                                                   got, wanted)


@pytest.mark.parametrize("setup", sorted(PLAN))
def test_healthy_hard_answers_from_its_checks(report, setup):
    """Every set-up works while hard answers; the configured names are
    hard's checked servers (in (b) musl may take the upstream's: below)."""
    glibc = ("glibc", "glibc-v4")
    unspec = ("glibc", "musl") if setup != "b" else ("glibc",)
    assert_all(report, setup, "healthy", CONFIGURED, [CANDIDATE],
               CLIENTS if setup != "b" else glibc)
    assert_all(report, setup, "healthy", DUAL, BOTH, unspec)
    assert_all(report, setup, "healthy", DUAL, [CANDIDATE], ("glibc-v4",))
    assert_all(report, setup, "healthy", FORWARDED, [ELSEWHERE])


def test_a_alone_fails_when_hard_is_down_and_never_bypasses(report):
    """(a): a stopped or hung hard fails every lookup; nothing else is
    asked, so no unchecked address is ever seen."""
    for state in ("hung", "stopped"):
        for name in (CONFIGURED, DUAL, FORWARDED):
            assert_all(report, "a", state, name, "fails")


def test_b_second_nameserver_bypasses_the_checks(report):
    """(b): with hard stopped or hung every name still resolves, the
    configured ones to the upstream's unchecked record.  A SERVFAIL from
    hard sends every lookup there too, including glibc's A and AAAA lookup
    of the IPv4-only name: while a name fails under failure_mode servfail,
    hard answers its AAAA query SERVFAIL too, not NODATA (issue 16 item
    13), so glibc moves on to the next nameserver for both."""
    for state in ("hung", "stopped"):
        assert_all(report, "b", state, CONFIGURED, [UNCHECKED])
        assert_all(report, "b", state, DUAL, [UNCHECKED])
        assert_all(report, "b", state, FORWARDED, [ELSEWHERE])
    assert_all(report, "b", "servfail", CONFIGURED, [UNCHECKED])
    assert_all(report, "b", "servfail", DUAL, [UNCHECKED])
    assert_all(report, "b", "servfail", FORWARDED, [ELSEWHERE])


def test_b_musl_races_hard_against_the_upstream(report):
    """musl asks both nameservers at once and takes the first reply to
    each query: even with hard healthy, each answer is hard's or the
    upstream's."""
    for name in (CONFIGURED, DUAL):
        got = seen(report, "b", "healthy", "musl", name)
        assert got and all(g != "fails" and set(g) <= {CANDIDATE, CANDIDATE6, UNCHECKED}
                           for g in got), got


def test_c_forwarder_keeps_forwarded_names_and_never_bypasses(report):
    """(c): while hard answers SERVFAIL or is stopped, forwarded names keep
    resolving through the forwarder, and the configured name fails rather
    than get the upstream's record."""
    for state in ("servfail", "stopped"):
        assert_all(report, "c", state, CONFIGURED, "fails")
        assert_all(report, "c", state, DUAL, "fails")
        assert_all(report, "c", state, FORWARDED, [ELSEWHERE])
