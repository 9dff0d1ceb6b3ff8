"""SIGHUP (issue 5, SPEC section 6): reloads that add, remove and change
names, candidates, check settings, nameservers and the listen port while a
client queries without pause; an invalid file; what survives a reload."""

import os
import re
import select
import signal
import socket
import time

import dns.exception
import dns.flags
import dns.message
import pytest

import harness
from harness import addresses
from statehelpers import (QueryLoop, answer, assert_answers, candidates,
                          log_lines, name_block, sql, sql_value, wait_answer,
                          wait_log, wait_sql)

A, B, C, S = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
SUMMARY = r"reloaded .*: (\d+) names \((\d+) added, (\d+) removed, (\d+) changed\)"


def records(fwd):
    return ("--host-record=fwd.test,%s" % fwd,
            "--host-record=new.test,192.0.2.60",
            "--host-record=gone.test,192.0.2.40",
            "--host-record=status.test,192.0.2.50",
            "--host-record=third.test,192.0.2.70")


def reload(h, body, upstream, port=None, data_file="", extra=""):
    """Writes the new configuration over hard's file and sends SIGHUP;
    returns the monotonic time of the signal."""
    config = harness.hard_config(body, upstream.endpoint if hasattr(upstream, "endpoint")
                                 else upstream, port or h.port, h.listen,
                                 data_file, extra)
    with open(h.conf + ".new", "w") as f:
        f.write(config)
    os.replace(h.conf + ".new", h.conf)
    h.config = config
    t = time.monotonic()
    h.signal(signal.SIGHUP)
    return t


def summaries(h):
    return [tuple(int(x) for x in m.groups()) for m in
            (re.search(SUMMARY, line) for line in log_lines(h, SUMMARY))]


class Phases:
    """What each name may answer, over time.  A query is judged by the
    phases in force between its sending and its answer."""

    def __init__(self, allowed):
        self.phases = [(0.0, {k: set(v) for k, v in allowed.items()})]

    @property
    def current(self):
        return self.phases[-1][1]

    def begin(self, t, changes, transitional=True):
        """From t on, `changes` ({name: answers}) apply; with transitional,
        the old answers stay allowed too (until the next begin())."""
        new = {k: set(v) for k, v in self.current.items()}
        for name, answers in changes.items():
            new[name] = (new[name] | set(answers)) if transitional else set(answers)
        self.phases.append((t, new))

    def allowed(self, name, t0, t1):
        out = set()
        for i, (start, allowed) in enumerate(self.phases):
            end = self.phases[i + 1][0] if i + 1 < len(self.phases) else float("inf")
            if start <= t1 and end > t0:
                out |= allowed[name]
        return out


def test_reload_under_load(workdir, start_hard, start_http, start_upstream):
    up1 = start_upstream(*records("192.0.2.1"))
    up2 = start_upstream(*records("192.0.2.2"))
    sa, sb, sc = start_http(A), start_http(B), start_http(C)
    ss = start_http(S, status=503)
    db = os.path.join(workdir, "state", "har.db")
    opts = dict(check_frequency=0.2, check_timeout=1)
    names = {
        "keep.test": name_block("keep.test", [("a", sa.url()), ("b", sb.url())],
                                selection_method="all", failure_mode="servfail", **opts),
        "gone.test": name_block("gone.test", [("a", sa.url())],
                                failure_mode="servfail", **opts),
        "status.test": name_block("status.test", [("s", ss.url())],
                                  failure_mode="none", **opts),
    }
    body = lambda: "".join(names[k] for k in sorted(names))  # noqa: E731
    h = start_hard(body(), upstream=up1, data_file=db)
    wait_answer(h, "keep.test", [A, B])
    wait_answer(h, "gone.test", [A])
    assert answer(h, "status.test") == ["192.0.2.50"]
    assert answer(h, "new.test") == ["192.0.2.60"]
    wait_sql(db, "SELECT count(*) AS n FROM candidates WHERE name = 'gone.test'",
             lambda r: r[0]["n"] == 1)

    phases = Phases({
        "keep.test": {(A, B)}, "new.test": {("192.0.2.60",)},
        "gone.test": {(A,)}, "status.test": {("192.0.2.50",)},
        "fwd.test": {("192.0.2.1",)}})
    loop = QueryLoop(h.addr, h.port, sorted(phases.current)).start()
    old_port = h.port
    try:
        time.sleep(0.3)

        def step(changes, settle=None, expect_summary=None, port=None, ups=up1):
            n = len(summaries(h))
            t_sig = reload(h, body(), ups, port=port, data_file=db)
            phases.begin(t_sig, changes)
            wait_log(h, SUMMARY, n + 1, timeout=5)
            if port:
                loop.port = h.port = port
            t_app = time.monotonic()
            phases.begin(t_app, changes, transitional=False)
            if expect_summary:
                assert summaries(h)[-1] == expect_summary, summaries(h)
            # right after the reload, the new answers
            for name, want in changes.items():
                got = answer(h, name)
                got = tuple(got) if isinstance(got, list) else got
                assert got in want, (name, got, want)
            if settle:
                for name, want in settle.items():
                    wait_answer(h, name, list(want), timeout=5)
                phases.begin(time.monotonic(), {k: {v} for k, v in settle.items()},
                             transitional=False)
            time.sleep(0.3)

        # 1. a name is added: answered by hard at once (failure_mode all
        #    answers every address until its first check)
        names["new.test"] = name_block("new.test", [("a", sa.url())],
                                       failure_mode="all", **opts)
        step({"new.test": {(A,)}}, expect_summary=(4, 1, 0, 0))
        assert h.query("new.test").flags & dns.flags.AA

        # 2. a name is removed: forwarded upstream at once, rows deleted
        del names["gone.test"]
        step({"gone.test": {("192.0.2.40",)}}, expect_summary=(3, 0, 1, 0))
        wait_sql(db, "SELECT (SELECT count(*) FROM candidates WHERE name = 'gone.test')"
                 " + (SELECT count(*) FROM checks WHERE name = 'gone.test')"
                 " + (SELECT count(*) FROM names WHERE name = 'gone.test') AS n",
                 lambda r: r[0]["n"] == 0)

        # 3. a candidate list changes: b goes at once, a keeps its health
        #    (never SERVFAIL), c joins after its first check
        names["keep.test"] = name_block("keep.test", [("a", sa.url()), ("c", sc.url())],
                                        selection_method="all",
                                        failure_mode="servfail", **opts)
        step({"keep.test": {(A,), (A, C)}}, settle={"keep.test": (A, C)},
             expect_summary=(3, 0, 0, 1))

        # 4. a check setting changes: 503 now counts as up
        names["status.test"] = name_block("status.test", [("s", ss.url())],
                                          failure_mode="none",
                                          expect_status="{ 200, 503 }", **opts)
        step({"status.test": {("192.0.2.50",), (S,)}}, settle={"status.test": (S,)},
             expect_summary=(3, 0, 0, 1))

        # 5. the nameservers change: new queries go to the second upstream
        step({"fwd.test": {("192.0.2.2",)}}, ups=up2, expect_summary=(3, 0, 0, 0))
        assert "nameservers changed" in log_lines(h, SUMMARY)[-1]

        # 6. the listen port changes: the new one answers, the old one stops
        new_port = harness.free_port()
        t_port = time.monotonic()
        step({"keep.test": {(A, C)}}, port=new_port, ups=up2,
             expect_summary=(3, 0, 0, 0))
        assert "listeners re-bound" in log_lines(h, SUMMARY)[-1]
        assert answer(h, "keep.test", port=new_port) == [A, C]
        assert answer(h, "keep.test", port=new_port, tcp=True) == [A, C]
        assert h.udp_raw(harness.make_query("keep.test").to_wire(), timeout=2) is not None
        with pytest.raises(Exception):
            harness.query_at(h.addr, old_port, "keep.test", timeout=0.5)
        with pytest.raises(OSError):
            harness.tcp_connect(h.addr, old_port, timeout=0.5).close()
        time.sleep(0.5)
    finally:
        loop.stop()
    h.assert_alive()

    # every query of the background client got a right answer; a query
    # sent to the old port after the switch may go unanswered (by design)
    wrong = []
    for t0, t1, name, port, got in loop.results:
        if got == "TIMEOUT" and port == old_port and t1 >= t_port:
            continue
        if got not in phases.allowed(name, t0, t1):
            wrong.append((round(t0 - loop.results[0][0], 3), name, port, got,
                          sorted(phases.allowed(name, t0, t1))))
    assert len(loop.results) > 300, "too few queries: %d" % len(loop.results)
    assert not wrong, "%d of %d queries failed or were wrong, e.g. %s" % (
        len(wrong), len(loop.results), wrong[:8])
    late = [r for r in loop.results if r[1] - r[0] > 0.5 and r[4] != "TIMEOUT"]
    assert not late, "slow answers during reloads: %s" % late[:5]
    assert len(summaries(h)) == 6, log_lines(h, SUMMARY)


def ask_from_own_socket(h, port, qid):
    """Sends a forwarded name's query to hard's port from a socket of its
    own, whose reply the caller waits for; returns the socket."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((h.addr, 0))
    s.sendto(harness.make_query("fwd.test", qid=qid).to_wire(), (h.addr, port))
    return s


def wait_reload(h, count):
    """Waits for the count-th reload summary, failing at once on a failed
    reload."""
    harness.wait_until(lambda: len(summaries(h)) >= count
                       or log_lines(h, r"reload .*failed"), timeout=5,
                       what="reload %d" % count)
    assert not log_lines(h, r"reload .*failed"), h.log()[-2000:]


def test_reload_moves_the_port_back_while_forwards_are_pending(
        start_hard, start_scripted_upstream):
    """A query forwarded from port A waits for its upstream while a reload
    moves the port to B and another moves it back to A.  The second reload
    binds A again (it failed with "Address already in use" while A's socket
    was kept for the pending reply), A answers again, B no longer, and the
    replies pending on A and on B leave from the port they were asked on."""
    up = start_scripted_upstream()
    up.hold = True
    body = name_block("here.test", [("a", "http://%s:%d/" % (
        A, harness.dead_port(A)))], failure_mode="all", check_frequency=60)
    # long timeouts: the forwards wait for release(), with no second try
    extra = "resolver_timeout = 20\nresolver_total_timeout = 30\n"
    h = start_hard(body, upstream=up, extra=extra)
    port_a, port_b = h.port, harness.free_port()
    clients = {port_a: ask_from_own_socket(h, port_a, 0xA)}
    try:
        harness.wait_until(lambda: len(up.queries("fwd.test.")) == 1,
                           what="the forward from A at the upstream")
        reload(h, body, up, port=port_b, extra=extra)
        wait_reload(h, 1)
        h.port = port_b
        assert answer(h, "here.test") == [A]
        clients[port_b] = ask_from_own_socket(h, port_b, 0xB)
        harness.wait_until(lambda: len(up.queries("fwd.test.")) == 2,
                           what="the forward from B at the upstream")

        reload(h, body, up, port=port_a, extra=extra)
        wait_reload(h, 2)
        h.port = port_a
        assert "listeners re-bound" in log_lines(h, SUMMARY)[-1]
        assert answer(h, "here.test") == [A]
        assert answer(h, "here.test", tcp=True) == [A]
        with pytest.raises(OSError):
            harness.tcp_connect(h.addr, port_b, timeout=0.5).close()
        with pytest.raises(dns.exception.Timeout):
            harness.query_at(h.addr, port_b, "here.test", timeout=0.5)
        waiting, _, _ = select.select(list(clients.values()), [], [], 0)
        assert not waiting, "a forward was answered before its upstream replied"

        up.release()
        for port, client in clients.items():
            client.settimeout(10)
            data, source = client.recvfrom(65535)
            assert source == (h.addr, port), \
                "the reply to a query sent to port %d came from %s" % (port, source)
            reply = dns.message.from_wire(data)
            assert reply.id == (0xA if port == port_a else 0xB)
            got = addresses(reply) or harness.rcode_text(reply)
            assert got in (["192.0.2.77"], "SERVFAIL"), got
    finally:
        for client in clients.values():
            client.close()
    h.assert_alive()


def test_reload_invalid_file_keeps_old(workdir, start_hard, start_http, up_default):
    sa = start_http(A)
    up = up_default
    good = name_block("a.test", [("a", sa.url())], failure_mode="servfail")
    h = start_hard(good, upstream=up)
    wait_answer(h, "a.test", [A])
    old_port = h.port
    # a bad file: another port, a.test gone, b.test with a bad value
    bad_body = ("name b.test {\n"          # line 6 (after the 5 global lines)
                "    check_frequency = -1\n"  # line 7
                "    candidate b { check_address = \"%s\" }\n"
                "}\n"
                "colour = blue\n" % sa.url())  # line 10
    reload(h, bad_body, up, port=harness.free_port())
    errors = wait_log(h, r"%s:\d+: " % re.escape(h.conf), 2)
    wait_log(h, r"reload .*failed")
    lines = {int(re.search(r":(\d+): ", e).group(1)) for e in errors}
    assert lines & {6, 7} and 10 in lines, errors
    assert any(re.search(r"check_frequency|frequency", e) for e in errors), errors
    assert any("colour" in e for e in errors), errors
    assert not summaries(h), "an invalid file was applied"
    # the old configuration answers, on the old port, unchanged
    assert_answers(h, {"a.test": [A], "fwd.test": ["192.0.2.1"]}, duration=0.6)
    assert answer(h, "b.test") == "NXDOMAIN"  # forwarded: not configured
    h.assert_alive()
    # a valid file afterwards is applied
    reload(h, good + name_block("b.test", [("b", sa.url())], failure_mode="all"), up)
    wait_log(h, SUMMARY)
    assert summaries(h) == [(2, 1, 0, 0)]
    assert answer(h, "b.test") == [A]
    assert h.port == old_port


def test_reload_keeps_state_and_schedules(workdir, start_hard, start_http, up_default):
    """Addresses that stay keep health, counters and schedule: no new
    check happens (check_frequency 30), yet they are answered at once."""
    sa, sb, sc = start_http(A), start_http(B), start_http(C)
    db = os.path.join(workdir, "state", "har.db")
    keep = lambda ttl: name_block("keep.test", [("a", sa.url())],  # noqa: E731
                                  check_frequency=30, check_timeout=2,
                                  failure_mode="servfail", ttl=ttl)
    other = name_block("other.test", [("b", sb.url())], check_frequency=30,
                       check_timeout=2, failure_mode="servfail")
    h = start_hard(keep(0) + other, upstream=up_default, data_file=db)
    wait_answer(h, "keep.test", [A], timeout=5)
    wait_answer(h, "other.test", [B], timeout=5)
    wait_sql(db, "SELECT count(*) AS n FROM candidates WHERE healthy = 1",
             lambda r: r[0]["n"] == 2)
    before = candidates(db, "keep.test")
    requests = len(sa.request_log())
    assert requests == 1

    third = name_block("third.test", [("c", sc.url())], check_frequency=30,
                       check_timeout=2, failure_mode="servfail")
    reload(h, keep(5) + third, up_default, data_file=db)
    wait_log(h, SUMMARY)
    # kept: answered at once, with the new ttl, without a new check
    r = h.query("keep.test")
    assert addresses(r) == [A] and r.answer[0].ttl == 5
    # added: checked at once
    wait_answer(h, "third.test", [C], timeout=5)
    # removed: no longer answered (forwarded: NXDOMAIN upstream)
    assert answer(h, "other.test") == "NXDOMAIN"
    assert summaries(h) == [(2, 1, 1, 1)]
    time.sleep(1.2)
    assert len(sa.request_log()) == requests, "a kept address was checked again"
    wait_sql(db, "SELECT ttl FROM names WHERE name = 'keep.test'",
             lambda r: r == [{"ttl": 5}])
    after = candidates(db, "keep.test")
    for k in ("healthy", "successes", "checks", "last_check_time", "rtt"):
        assert after[("a", A)][k] == before[("a", A)][k], (k, before, after)
    assert sql_value(db, "SELECT count(*) FROM candidates WHERE name = 'other.test'") == 0
    assert sql(db, "SELECT name FROM names ORDER BY name") == \
        [{"name": "keep.test"}, {"name": "third.test"}]
    # an unchanged file: nothing added, removed or changed, nothing re-checked
    reload(h, keep(5) + third, up_default, data_file=db)
    wait_log(h, SUMMARY, 2)
    assert summaries(h)[-1] == (2, 0, 0, 0)
    assert_answers(h, {"keep.test": [A], "third.test": [C]}, duration=0.5)
    assert len(sa.request_log()) == requests
    assert len(summaries(h)) == 2


@pytest.fixture
def up_default(start_upstream):
    return start_upstream(*records("192.0.2.1"))


def test_reload_lowering_check_history_trims_rows(workdir, start_hard,
                                                  start_http, up_default):
    """A reload that lowers check_history leaves at most the new number of
    history rows per address, and the ring goes on from there."""
    web = start_http(A)
    body = name_block("hist.test", [("web", web.url())], check_frequency=0.1)
    db = os.path.join(workdir, "har.db")
    h = start_hard(body, upstream=up_default, data_file=db, extra="check_history = 10\n")
    count = "SELECT count(*) AS n FROM checks"
    wait_sql(db, count, lambda r: r[0]["n"] == 10,
             what="10 history rows")
    reload(h, body, up_default, data_file=db, extra="check_history = 3\n")
    wait_log(h, "reloaded")
    wait_sql(db, count, lambda r: r[0]["n"] == 3,
             what="history trimmed to 3 rows")
    newest = sql(db, "SELECT max(time) AS t FROM checks")[0]["t"]
    wait_sql(db, "SELECT count(*) AS n, max(time) AS t FROM checks",
             lambda r: r[0]["n"] == 3 and r[0]["t"] > newest + 0.3,
             what="new checks still written, 3 rows kept")


def test_reload_changed_check_decides_at_once(workdir, start_hard, start_http,
                                              up_default):
    """A reload that changes how an address is checked runs the new check at
    once, and its first result decides, whatever rise and fall say: the
    address does not stay answered for a check_frequency (here 30 s) after
    its check was pointed at a closed port, nor stay down after it was
    pointed back; nor for the rechecks fall and rise would want (here 10 s
    apart: the default 1 s would let them pass for "at once")."""
    sa = start_http(A)
    dead = "http://%s:%d/" % (A, harness.dead_port(A))

    def body(url, **opts):
        return name_block("chk.test", [("a", url)], check_frequency=30,
                          check_timeout=2, rise=3, fall=3,
                          recheck_frequency=10, failure_mode="servfail",
                          **opts)
    h = start_hard(body(sa.url()), upstream=up_default)
    wait_answer(h, "chk.test", [A], timeout=6)
    reload(h, body(dead), up_default)
    wait_answer(h, "chk.test", "SERVFAIL", timeout=6)
    wait_log(h, "chk.test candidate a: its check changed")
    reload(h, body(sa.url()), up_default)
    wait_answer(h, "chk.test", [A], timeout=6)
    # expect_status, too: 200 no longer counts
    reload(h, body(sa.url(), expect_status="{ 204 }"), up_default)
    wait_answer(h, "chk.test", "SERVFAIL", timeout=6)
    # a reload that changes nothing of the check runs none
    requests = len(sa.request_log())
    reload(h, body(sa.url(), expect_status="{ 204 }", ttl=4), up_default)
    wait_log(h, SUMMARY, count=4)
    time.sleep(0.5)
    assert len(sa.request_log()) == requests
    assert answer(h, "chk.test") == "SERVFAIL"
