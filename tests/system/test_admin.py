"""The operator's controls (issue 10, items 1 and 2): a candidate's
admin_state (drain, down, up, auto) changed by SIGHUP without touching the
checks, and a drain asked for by the server itself through drain_status.
Real hard, real HTTP servers, the data file read with the sqlite3 CLI."""

import os
import re
import subprocess
import time

import pytest

import harness
from harness import addresses
from statehelpers import (SQLITE3, answer, assert_answers, candidates, log_lines,
                          name_block, sql, sql_value, wait_answer, wait_log,
                          wait_sql)
from test_reload import reload

A, B = "127.0.0.2", "127.0.0.3"


@pytest.fixture
def up(start_upstream):
    return start_upstream("--host-record=fwd.test,192.0.2.1")


def db_path(workdir):
    return os.path.join(workdir, "state", "har.db")


def ranking(db, name):
    """The ranking view's rows of name, by ip_address."""
    return {r["ip_address"]: r for r in
            sql(db, "SELECT * FROM ranking WHERE name = '%s'" % name)}


def wait_answer_within(h, name, expected, since, limit):
    """Polls until name answers expected; fails unless that happened at most
    limit seconds after the monotonic time since."""
    def probe():
        got = answer(h, name, timeout=0.5)
        return got if got == expected else None
    harness.wait_until(probe, timeout=limit + 2.0, interval=0.02,
                       what="%s answering %s" % (name, expected))
    took = time.monotonic() - since
    assert took <= limit, "%s answered %s only %.2f s after the SIGHUP" % (
        name, expected, took)


def test_drain_and_back_keeps_health(workdir, start_hard, start_http, up):
    """admin_state = drain takes a candidate out of the answers at once
    after the SIGHUP (long before a check could) and auto puts it back as
    fast; neither reload checks it again nor changes its recorded health
    or RTT, and each change is logged and shown in candidates and
    ranking."""
    # b slower by far more than a loaded machine's jitter: one check each
    # decides which is answered.
    sa, sb = start_http(A), start_http(B, delay=0.2)
    # One round of checks at start, then none for a minute: any check
    # during the test would be one the reload caused.
    common = dict(check_frequency=60, check_timeout=2)
    db = db_path(workdir)

    def body(state):
        extra = ("admin_state = %s" % state,) if state else ()
        return name_block("www.test", [("a", sa.url(), *extra),
                                       ("b", sb.url())], **common)
    h = start_hard(body(None), upstream=up, data_file=db)
    wait_answer(h, "www.test", [A])
    wait_sql(db, "SELECT count(*) AS n FROM candidates WHERE checks = 1",
             lambda r: r[0]["n"] == 2)
    before = candidates(db, "www.test")[("a", A)]
    assert before["admin_state"] == "auto" and before["healthy"] == 1, before
    requests = len(sa.request_log())
    assert ranking(db, "www.test")[A]["reason"] == "healthy"

    # "At once": the next check is a minute away; 3 s leaves a loaded
    # machine room to parse and apply the reload.
    t = reload(h, body("drain"), up, data_file=db)
    wait_answer_within(h, "www.test", [B], t, 3.0)
    wait_log(h, r"www\.test candidate a: admin_state auto -> drain")
    row = wait_sql(db, "SELECT * FROM candidates WHERE candidate_name = 'a'",
                   lambda r: r[0]["admin_state"] == "drain")[0]
    for column in ("healthy", "rtt", "checks", "last_check_time", "successes"):
        assert row[column] == before[column], (column, row, before)
    view = ranking(db, "www.test")
    assert (view[A]["admin_state"], view[A]["reason"], view[A]["answered"]) \
        == ("drain", "admin drain", 0), view
    assert (view[B]["reason"], view[B]["answered"], view[B]["rank"]) \
        == ("healthy", 1, 1), view
    assert view[A]["rank"] == 2

    t = reload(h, body(None), up, data_file=db)
    wait_answer_within(h, "www.test", [A], t, 3.0)
    wait_log(h, r"www\.test candidate a: admin_state drain -> auto")
    row = wait_sql(db, "SELECT * FROM candidates WHERE candidate_name = 'a'",
                   lambda r: r[0]["admin_state"] == "auto")[0]
    for column in ("healthy", "rtt", "checks", "last_check_time", "successes"):
        assert row[column] == before[column], (column, row, before)
    assert len(sa.request_log()) == requests, "a reload of admin_state checked again"
    assert not log_lines(h, r"check changed"), h.log()
    # a changed admin_state is a changed name in the reload summary (waited
    # for: the answer may change before the second summary is logged)
    summary = r"reloaded .*\(0 added, 0 removed, 1 changed\)"
    wait_log(h, summary, count=2)
    assert len(log_lines(h, summary)) == 2, h.log()


def test_down_survives_failure_mode_all(workdir, start_hard, start_http, up):
    """admin_state = down is never answered, not even when failure_mode =
    all answers every other address; its checks go on."""
    sa, sb = start_http(A, status=503), start_http(B, status=503)
    db = db_path(workdir)
    h = start_hard(name_block("www.test", [("a", sa.url(), "admin_state = down"),
                                           ("b", sb.url())],
                              failure_mode="all", selection_method="all",
                              check_frequency=0.3),
                   upstream=up, data_file=db)
    wait_sql(db, "SELECT count(*) AS n FROM candidates WHERE healthy = 0",
             lambda r: r[0]["n"] == 2)
    for _ in range(5):
        assert answer(h, "www.test") == [B]
    view = ranking(db, "www.test")
    assert (view[A]["reason"], view[A]["answered"]) == ("admin down", 0), view
    assert (view[B]["reason"], view[B]["answered"]) == ("failure_mode all", 1), view
    # the checks of a down candidate go on, so its health is known
    checks = sql_value(db, "SELECT checks FROM candidates WHERE candidate_name = 'a'")
    sa.set(status=200)
    wait_sql(db, "SELECT healthy, checks FROM candidates WHERE candidate_name = 'a'",
             lambda r: r[0]["healthy"] == 1 and r[0]["checks"] > checks)
    # healthy but down: still not answered; b fails open alone
    for _ in range(5):
        assert answer(h, "www.test") == [B]
    assert ranking(db, "www.test")[A]["reason"] == "admin down"


def test_up_answered_while_its_server_is_down(workdir, start_hard, start_http, up):
    """admin_state = up answers an address whose checks fail, as healthy;
    the failing checks are still run and recorded."""
    sa, sb = start_http(A, status=500), start_http(B)
    db = db_path(workdir)
    h = start_hard(name_block("www.test", [("a", sa.url(), "admin_state = up"),
                                           ("b", sb.url())],
                              selection_method="all", check_frequency=0.3),
                   upstream=up, data_file=db)
    wait_answer(h, "www.test", [A, B])
    # a has never succeeded, so it has no RTT: ranked after b
    assert addresses(h.query("www.test")) == [B, A]
    sb.set(status=500)
    wait_sql(db, "SELECT count(*) AS n FROM candidates WHERE healthy = 0",
             lambda r: r[0]["n"] == 2)
    wait_answer(h, "www.test", [A])
    row = wait_sql(db, "SELECT * FROM candidates WHERE candidate_name = 'a'",
                   lambda r: r[0]["checks"] >= 3)[0]
    assert (row["healthy"], row["last_check_status"], row["admin_state"]) \
        == (0, 500, "up"), row
    assert row["successes"] == 0 and row["response_errors"] == row["checks"], row
    view = ranking(db, "www.test")
    assert (view[A]["reason"], view[A]["answered"], view[A]["rank"]) \
        == ("admin up", 1, 1), view
    assert (view[B]["reason"], view[B]["answered"]) == ("down", 0), view


def test_drain_status_from_the_server(workdir, start_hard, start_http, up):
    """A server that answers its health check with a drain_status leaves
    the answers while another address is healthy, is answered when it is
    the last one, and comes back when it answers 200 again; it stays up,
    its RTT measured, its checks successes."""
    sa, sb = start_http(A), start_http(B, delay=0.05)
    db = db_path(workdir)
    h = start_hard(name_block("www.test", [("a", sa.url()), ("b", sb.url())],
                              drain_status="{ 503 }", fall=2,
                              check_frequency=0.3),
                   upstream=up, data_file=db)
    wait_answer(h, "www.test", [A])

    sa.set(status=503)
    wait_answer(h, "www.test", [B], timeout=6)
    wait_log(h, r"www\.test candidate a address 127\.0\.0\.2 is draining \(HTTP 503\)")
    row = wait_sql(db, "SELECT * FROM candidates WHERE candidate_name = 'a'",
                   lambda r: r[0]["draining"] == 1)[0]
    assert (row["healthy"], row["last_check_status"], row["admin_state"]) \
        == (1, 503, "auto"), row
    assert row["rtt"] is not None and row["response_errors"] == 0, row
    # the history follows within data_file_interval (the drain came at once)
    wait_sql(db, "SELECT min(success) AS s FROM checks WHERE status = 503",
             lambda r: r[0]["s"] is not None)
    assert sql_value(db, "SELECT min(success) FROM checks WHERE status = 503") == 1
    view = ranking(db, "www.test")
    assert (view[A]["reason"], view[A]["answered"]) == ("draining", 0), view
    assert (view[B]["reason"], view[B]["answered"]) == ("healthy", 1), view
    assert not log_lines(h, r"127\.0\.0\.2 is down"), h.log()

    # the last one: a draining address is answered rather than none
    sb.set(status=500)
    wait_answer(h, "www.test", [A], timeout=6)
    wait_sql(db, "SELECT reason, answered FROM ranking WHERE ip_address = '%s'" % A,
             lambda r: r == [{"reason": "draining", "answered": 1}])

    # b healthy again: a leaves; a no longer draining: back as the fastest
    sb.set(status=200)
    wait_answer(h, "www.test", [B], timeout=6)
    sa.set(status=200)
    wait_answer(h, "www.test", [A], timeout=6)
    wait_log(h, r"candidate a address 127\.0\.0\.2 is no longer draining \(HTTP 200\)")
    wait_sql(db, "SELECT draining FROM candidates WHERE candidate_name = 'a'",
             lambda r: r == [{"draining": 0}])


def test_draining_server_that_fails_stays_drained(workdir, start_hard,
                                                  start_http, up):
    """A draining server that then stops answering is not put back into
    the answers while its failures count up to fall."""
    sa, sb = start_http(A), start_http(B, delay=0.05)
    h = start_hard(name_block("www.test", [("a", sa.url()), ("b", sb.url())],
                              drain_status="{ 503 }", fall=5,
                              check_frequency=0.2),
                   upstream=up)
    wait_answer(h, "www.test", [A])
    sa.set(status=503)
    wait_answer(h, "www.test", [B], timeout=6)
    sa.stop()
    deadline = time.monotonic() + 1.5  # several failed checks, fewer than fall
    while time.monotonic() < deadline:
        assert answer(h, "www.test") == [B]
        time.sleep(0.05)


def test_data_file_of_schema_1_upgraded(workdir, start_hard, start_http, up):
    """A data file of schema version 1 (before admin_state) is upgraded in
    place: the new columns are added, its rows kept, user_version 5."""
    db = db_path(workdir)
    os.makedirs(os.path.dirname(db))
    subprocess.run([SQLITE3, db,
                    "CREATE TABLE names(name TEXT PRIMARY KEY, queries INTEGER);"
                    "CREATE TABLE candidates(name TEXT, candidate_name TEXT,"
                    " ip_address TEXT, family INTEGER, healthy INTEGER,"
                    " rtt REAL, checks INTEGER,"
                    " PRIMARY KEY(name, candidate_name, ip_address));"
                    "INSERT INTO names VALUES('www.test', 7);"
                    "INSERT INTO candidates VALUES('www.test', 'a', '%s', 4, 1,"
                    " 0.004, 9);"
                    "PRAGMA user_version = 1;" % A], check=True)
    # The server is slow, so that the first check does not complete (and
    # replace the restored RTT) before the row is read, even on a loaded
    # machine where the first flush comes late.
    s = start_http(A, delay=8.0)
    h = start_hard(name_block("www.test", [("a", s.url(), "admin_state = drain")],
                              check_frequency=30, check_timeout=15),
                   upstream=up, data_file=db)
    # Upgraded before the first answer; waited for all the same, since
    # wait_ready may return (after its 2 s) before a slow start is done.
    wait_sql(db, "PRAGMA user_version", lambda r: r[0]["user_version"] == 5)
    # restored healthy and drained: the last address, so answered
    assert answer(h, "www.test") == [A]
    row = wait_sql(db, "SELECT * FROM candidates",
                   lambda r: r[0]["admin_state"] == "drain")[0]
    assert (row["healthy"], row["rtt"], row["draining"]) == (1, 0.004, 0), row
    assert ranking(db, "www.test")[A]["reason"] == "admin drain"
    h.assert_alive()


def test_check_drain_status_and_admin_states(workdir):
    """hard -t names the file and line of a drain_status a tcp check
    cannot see (bad values: test_config.py), and takes every admin_state
    and a status in both drain_status and expect_status."""
    path = os.path.join(workdir, "har.conf")
    cases = [
        ("name www.test {\n"
         "    check_method = tcp\n"
         "    drain_status = { 503 }\n"
         "    candidate a { check_address = \"127.0.0.2:80\" }\n"
         "}\n", 3, r"drain_status needs check_method http"),
    ]
    for body, line, reason in cases:
        with open(path, "w") as f:
            f.write('nameservers = { 127.0.0.1:5300 }\ndata_file = ""\n' + body)
        res = harness.run_hard("-t", "-c", path)
        assert res.returncode == 1, res
        assert re.search(r"^%s:%d: .*%s" % (re.escape(path), line + 2, reason),
                         res.stderr, re.M), res.stderr
    with open(path, "w") as f:
        f.write('nameservers = { 127.0.0.1:5300 }\ndata_file = ""\n'
                "name www.test {\n"
                "    drain_status = { 503, 418 }\n"
                "    expect_status = { 200, 503 }\n"
                "    candidate a { admin_state = drain }\n"
                "    candidate b { admin_state = down }\n"
                "    candidate c { admin_state = up }\n"
                "    candidate d { admin_state = auto }\n"
                "}\n")
    res = harness.run_hard("-t", "-c", path)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_every_address_down_is_servfail_not_forwarded(workdir, start_hard,
                                                      start_http,
                                                      start_upstream):
    """failure_mode = all with every candidate set down: SERVFAIL, since
    forwarding would hand back the upstream's records of those very
    servers (here the upstream has one)."""
    sa = start_http(A)
    u = start_upstream("--host-record=www.test,%s" % A)
    h = start_hard(name_block("www.test", [("a", sa.url(), "admin_state = down")],
                              failure_mode="all"), upstream=u)
    # healthy by its check (a fixed sleep could end before the check did)
    wait_log(h, r"candidate a address 127\.0\.0\.2 is up")
    for _ in range(3):
        assert answer(h, "www.test") == "SERVFAIL"
    assert u.query("www.test", "A").answer, "the upstream has the record"


def test_drain_status_needs_no_body(workdir, start_hard, start_http, up):
    """A drain status inside an expect_status range is a drain even when the
    body lacks expect_body: a server asking to be drained need not serve
    its usual page."""
    sa, sb = start_http(A), start_http(B)
    sa.set(body="OK"), sb.set(body="OK")
    db = db_path(workdir)
    h = start_hard(name_block("www.test", [("a", sa.url()), ("b", sb.url())],
                              expect_status='{ "200-299" }', drain_status="{ 299 }",
                              expect_body='"OK"', selection_method="all"),
                   upstream=up, data_file=db)
    wait_answer(h, "www.test", [A, B])
    sa.set(status=299, body="draining")
    wait_answer(h, "www.test", [B])
    row = wait_sql(db, "SELECT healthy, draining FROM candidates WHERE candidate_name = 'a'",
                   lambda r: r[0]["draining"] == 1)
    assert row[0]["healthy"] == 1
    sb.set(status=500)
    wait_answer(h, "www.test", [A])     # the draining one, as the last resort


def shared_address_body(server, other, state):
    """www.test: two candidates checking one address through two paths of
    one server, the first with admin_state = state, and a third address."""
    return name_block("www.test", [("one", server.url() + "one",
                                    "admin_state = %s" % state),
                                   ("two", server.url() + "two"),
                                   ("b", other.url())],
                      selection_method="all", check_frequency=0.5)


@pytest.mark.parametrize("state", ["down", "drain"])
def test_admin_state_holds_on_a_shared_address(workdir, start_hard, start_http,
                                               up, state):
    """Two candidates list one address (two check paths on one server, both
    healthy); admin_state on one of them holds for the address: down is
    never answered, not even as the last one; drain is answered only once
    no other address is available.  The ranking view says so on both rows."""
    sa, sb = start_http(A), start_http(B)
    db = db_path(workdir)
    h = start_hard(shared_address_body(sa, sb, state), upstream=up, data_file=db)
    wait_answer(h, "www.test", [B], timeout=10)
    # every check has passed: the address is healthy by candidate two's
    for cand, ip in (("one", A), ("two", A), ("b", B)):
        wait_log(h, r"www\.test candidate %s address %s is up" % (cand, re.escape(ip)),
                 timeout=10)
    assert_answers(h, {"www.test": [B]}, duration=1.5, max_latency=2.0)
    rows = wait_sql(db, "SELECT candidate_name, reason, answered FROM ranking"
                    " WHERE ip_address = '%s' ORDER BY candidate_name" % A,
                    lambda r: len(r) == 2)
    assert rows == [{"candidate_name": c, "reason": "admin " + state, "answered": 0}
                    for c in ("one", "two")], rows
    sb.stop()
    wait_log(h, r"www\.test candidate b address %s is down" % re.escape(B), timeout=10)
    if state == "drain":
        wait_answer(h, "www.test", [A], timeout=5)     # the last resort
        assert_answers(h, {"www.test": [A]}, duration=1.0, max_latency=2.0)
    else:
        # failure_mode none: forwarded, and the upstream has no www.test
        assert_answers(h, {"www.test": "NXDOMAIN"}, duration=1.0, max_latency=2.0)
