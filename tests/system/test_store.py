"""The data file (issue 4, SPEC section 6): what hard records in sqlite3,
read live with the real sqlite3 CLI while hard runs; the warm start; and the
faults a data file meets in production, made real: a read-only file
system, a full one, a concurrent exclusive lock, a file of garbage and a
kill -9 under load."""

import contextlib
import os
import random
import select
import signal
import subprocess
import time

import pytest

import harness
from harness import addresses
from statehelpers import (SQLITE3, QueryLoop, answer, assert_answers,
                          candidates, log_lines, name_block, sql, sql_text,
                          sql_value, stable_value, wait_answer, wait_log,
                          wait_sql)
from statehelpers import tmpfs_mounts
from test_reload import reload

A, B, C, D = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"

REQUIRED_COLUMNS = {
    "names": {"name", "queries", "last_query_time", "idle"},
    "candidates": {"name", "candidate_name", "ip_address", "family", "healthy",
                   "last_check_time", "last_success_time", "last_failure_time",
                   "last_check_status", "connect_time", "response_time", "rtt",
                   "successes", "timeouts", "connect_errors", "response_errors",
                   "other_errors", "admin_state", "draining", "latency_group",
                   "share"},
    "ranking": {"name", "family", "ip_address", "rank", "admin_state",
                "answered", "reason", "latency_group", "share"},
}


@pytest.fixture
def up(start_upstream):
    return start_upstream("--host-record=fwd.test,192.0.2.1",
                          "--host-record=q.test,192.0.2.80",
                          "--txt-record=q.test,forwarded")


@pytest.fixture
def tmpfs():
    yield from tmpfs_mounts()


def db_path(workdir, *sub):
    return os.path.join(workdir, *(sub or ("state",)), "har.db")


def columns(db, table):
    return {r["name"] for r in sql(db, "PRAGMA table_info(%s)" % table)}


@contextlib.contextmanager
def exclusive_lock(db):
    """Another process (the sqlite3 CLI) holds db with BEGIN EXCLUSIVE for
    the duration of the with block; waits up to 3 s for hard's own write
    to end before taking the lock."""
    locker = subprocess.Popen([SQLITE3, "-bail", db], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        locker.stdin.write(".timeout 3000\nBEGIN EXCLUSIVE;\nSELECT 'locked';\n")
        locker.stdin.flush()
        ready, _, _ = select.select([locker.stdout], [], [], 5)
        line = locker.stdout.readline() if ready else ""
        assert line.strip() == "locked", "sqlite3 could not lock: %r" % (
            locker.stderr.read() if locker.poll() is not None else line)
        yield
        locker.stdin.write("COMMIT;\n.quit\n")
        locker.stdin.close()
        assert locker.wait(5) == 0, locker.stderr.read()
    finally:
        harness._kill(locker)


def history_complete(db):
    """Every address's history has as many rows as checks (nothing lost)."""
    for r in sql(db, "SELECT c.candidate_name, c.checks, count(k.slot) AS n"
                 " FROM candidates c JOIN checks k USING (name, candidate_name,"
                 " ip_address) GROUP BY 1, 2"):
        assert r["n"] == r["checks"], "check history lost: %s" % r


# ------------------------------------------------------------ live contents


def test_schema_wal_and_missing_directory(workdir, start_hard, start_http, up):
    """The data file's directory is made when missing; the schema has every
    required table, column and view; user_version 5; WAL mode, 1 KB pages;
    the history in check_history, read through the view checks."""
    s = start_http(A)
    db = db_path(workdir, "not", "yet", "there")
    h = start_hard(name_block("www.test", [("a", s.url())]), upstream=up,
                   data_file=db)
    wait_sql(db, "SELECT healthy FROM candidates", lambda r: r == [{"healthy": 1}])
    for table, required in REQUIRED_COLUMNS.items():
        missing = required - columns(db, table)
        assert not missing, "%s lacks %s" % (table, missing)
    assert {"name", "candidate_name", "ip_address", "time", "status"} <= columns(db, "checks")
    kinds = {r["name"]: r["type"] for r in
             sql(db, "SELECT name, type FROM sqlite_master WHERE type IN ('table','view')")}
    assert kinds.get("ranking") == "view", kinds
    assert kinds.get("checks") == "view" and kinds.get("check_history") == "table", kinds
    assert sql_value(db, "PRAGMA user_version") == 5
    assert sql_value(db, "PRAGMA page_size") == 1024
    assert sql_value(db, "PRAGMA journal_mode") == "wal"
    assert os.path.exists(db + "-wal"), "no write-ahead log next to the data file"
    # names are stored as configured: lower case, no trailing dot
    h.assert_alive()


def test_rows_statuses_counters_and_history(workdir, start_hard, start_http,
                                            start_listener, up):
    """One row per checked address within a second of its check, with the
    status codes, health, times and counters of each kind of result; the
    checks table keeps check_history rows per address."""
    ok, e503 = start_http(A), start_http(B, status=503)
    refused = harness.dead_port(C)
    hang = start_listener(D, kind="hang")
    tcp = start_listener(A, kind="accept")
    freq = 0.4
    body = name_block("WWW.Test.", [("ok", ok.url()), ("e503", e503.url()),
                                    ("refused", "http://%s:%d/" % (C, refused)),
                                    ("Slow", "http://%s:%d/" % (D, hang.port))],
                      check_frequency=freq, check_timeout=0.3,
                      selection_method="all", failure_mode="servfail")
    body += name_block("tcp.test", [("t", "tcp://%s:%d" % (A, tcp.port))],
                       check_method="tcp", check_frequency=freq)
    db = db_path(workdir)
    t_start = time.time()
    h = start_hard(body, upstream=up, data_file=db, extra="check_history = 5\n")
    keys = {("www.test", "ok", A), ("www.test", "e503", B), ("www.test", "refused", C),
            ("www.test", "slow", D), ("tcp.test", "t", A)}

    # hard creates the file (WAL mode, schema) right after it listens
    wait_sql(db, "PRAGMA user_version", lambda r: r == [{"user_version": 5}])
    # rows appear within a second of the first check of each address
    first_seen = {}
    deadline = time.monotonic() + 4
    while len(first_seen) < len(keys) and time.monotonic() < deadline:
        rows = sql(db, "SELECT name, candidate_name, ip_address,"
                   " min(time) AS first FROM checks GROUP BY 1, 2, 3")
        seen_at = time.time()
        for r in rows:
            k = (r["name"], r["candidate_name"], r["ip_address"])
            if k not in first_seen:
                first_seen[k] = seen_at - r["first"]
        time.sleep(0.05)
    assert set(first_seen) == keys, "rows: %s" % sorted(first_seen)
    # written within a second (hard.8); seen_at also counts the poll's own
    # sqlite3 run and pause, which a loaded machine stretches
    late = {k: round(d, 3) for k, d in first_seen.items() if d > 1.5}
    assert not late, "checks written later than 1 s after they completed: %s" % late

    assert sql(db, "SELECT name FROM names ORDER BY name") == \
        [{"name": "tcp.test"}, {"name": "www.test"}]
    # enough checks for the history ring (5) to have wrapped
    wait_sql(db, "SELECT min(checks) AS n FROM candidates",
             lambda r: r[0]["n"] and r[0]["n"] >= 7)
    rows = {(r["name"], r["candidate_name"], r["ip_address"]): r
            for r in sql(db, "SELECT * FROM candidates")}
    assert set(rows) == keys
    expect = {  # key: (healthy, last_check_status, the counter that grows)
        ("www.test", "ok", A): (1, 200, "successes"),
        ("www.test", "e503", B): (0, 503, "response_errors"),
        ("www.test", "refused", C): (0, -2, "connect_errors"),
        ("www.test", "slow", D): (0, -1, "timeouts"),
        ("tcp.test", "t", A): (1, 0, "successes"),
    }
    counters = ("successes", "timeouts", "connect_errors", "response_errors",
                "other_errors")
    now = time.time()
    for k, (healthy, status, counter) in expect.items():
        r = rows[k]
        assert r["family"] == 4, r
        assert r["healthy"] == healthy, r
        assert r["last_check_status"] == status, r
        assert t_start <= r["last_check_time"] <= now, r
        assert r[counter] == r["checks"] >= 7, r
        assert all(r[c] == 0 for c in counters if c != counter), r
        if healthy:
            assert r["rtt"] > 0 and r["connect_time"] > 0 and r["response_time"] > 0, r
            assert r["last_rtt"] > 0, r
            assert r["response_time"] >= r["connect_time"], r
            assert r["last_success_time"] == r["last_check_time"], r
            assert r["last_failure_time"] is None, r
        else:
            assert r["rtt"] is None, r
            assert r["last_failure_time"] == r["last_check_time"], r
            assert r["last_success_time"] is None, r

    # history: at most check_history = 5 rows per address, the latest ones
    # (one query, so the history and the candidates rows are of one write)
    hist = sql(db, "SELECT k.name, k.candidate_name, k.ip_address, count(*) AS n,"
               " max(k.time) AS last, count(DISTINCT k.time) AS distinct_times,"
               " group_concat(DISTINCT k.status) AS statuses,"
               " min(k.success) AS smin, max(k.success) AS smax,"
               " min(k.response_time) AS rmin,"
               " c.last_check_time AS last_check_time"
               " FROM checks k JOIN candidates c"
               " USING (name, candidate_name, ip_address) GROUP BY 1, 2, 3")
    assert len(hist) == len(keys)
    rows = {(r["name"], r["candidate_name"], r["ip_address"]): r for r in hist}
    for hrow in hist:
        k = (hrow["name"], hrow["candidate_name"], hrow["ip_address"])
        healthy, status, _ = expect[k]
        assert hrow["n"] == 5 == hrow["distinct_times"], hrow
        assert str(hrow["statuses"]) == str(status), hrow
        assert hrow["smin"] == hrow["smax"] == healthy, hrow
        if healthy:
            assert hrow["rmin"] > 0, hrow
        # the ring holds the newest checks (the row may lag by one flush)
        assert abs(hrow["last"] - rows[k]["last_check_time"]) < 1.0, (hrow, rows[k])

    # the counters keep growing with the checks
    def candidate_rows():
        return {(r["name"], r["candidate_name"], r["ip_address"]): r
                for r in sql(db, "SELECT * FROM candidates")}
    before = candidate_rows()
    after = harness.wait_until(
        lambda: (lambda now: now if all(now[k]["checks"] > before[k]["checks"]
                                        for k in keys) else None)(candidate_rows()),
        5, what="a new check of every address in the data file")
    for k, (_, _, counter) in expect.items():
        grew = after[k]["checks"] - before[k]["checks"]
        assert grew >= 1, (before[k], after[k])
        assert after[k][counter] - before[k][counter] == grew, (before[k], after[k])
        assert after[k]["last_check_time"] > before[k]["last_check_time"]
    assert sql_value(db, "SELECT max(n) FROM (SELECT count(*) AS n FROM checks"
                     " GROUP BY name, candidate_name, ip_address)") == 5
    # and the answers agree with the recorded health
    assert answer(h, "www.test") == [A]
    assert answer(h, "tcp.test") == [A]


def test_queries_counts_only_answered(workdir, start_hard, start_http, up):
    """names.queries counts the A and AAAA queries hard answers itself
    (including NODATA), not forwarded ones."""
    s = start_http(A)
    db = db_path(workdir)
    h = start_hard(name_block("Q.test", [("a", s.url())], check_frequency=0.2,
                              check_timeout=0.5, failure_mode="none"),
                   upstream=up, data_file=db)
    wait_answer(h, "q.test", [A])
    query = "SELECT queries FROM names WHERE name = 'q.test'"
    base = stable_value(db, query)
    assert base is not None and base >= 1
    for i in range(5):
        assert answer(h, "q.test", tcp=(i == 4)) == [A]
    for _ in range(3):  # no IPv6 candidate: NODATA, answered by hard
        r = h.query("q.test", "AAAA")
        assert harness.rcode_text(r) == "NOERROR" and r.answer == []
    for rdtype in ("TXT", "MX", "TXT"):  # other types: forwarded
        h.query("q.test", rdtype)
    assert answer(h, "fwd.test") == ["192.0.2.1"]
    wait_sql(db, query, lambda r: r and r[0]["queries"] == base + 8,
             what="queries = %d + 8" % base)
    time.sleep(0.6)
    assert sql_value(db, query) == base + 8, "forwarded queries were counted"
    assert sql_value(db, "SELECT count(*) FROM names WHERE name = 'fwd.test'") == 0
    # no address available and failure_mode none: forwarded, not counted
    s.stop()
    wait_answer(h, "q.test", ["192.0.2.80"])
    base = stable_value(db, query)
    for _ in range(4):
        assert answer(h, "q.test") == ["192.0.2.80"]
    time.sleep(1.1)
    assert sql_value(db, query) == base


def test_ranking_equals_answers(workdir, start_hard, start_http, up):
    """The ranking view shows what hard answers: rank 1 is best_rtt's
    answer, `all` answers in rank order, `answered` marks the group of
    group_rtt_rr, max_rtt and down addresses are ranked after the
    available ones, not answered, with their reason."""
    # RTTs about 0, 80 and 240 ms, split by a threshold (and max_rtt) of
    # 160 ms: 80 ms of room either way for a loaded machine's delays
    sa, sb, sc = start_http(A), start_http(B, delay=0.08), start_http(C, delay=0.24)
    sd = start_http(D, status=503)
    cands = [("a", sa.url()), ("b", sb.url()), ("c", sc.url()), ("d", sd.url())]
    common = dict(check_frequency=0.3, check_timeout=1, failure_mode="servfail")
    body = (name_block("best.test", cands, selection_method="best_rtt", **common)
            + name_block("all.test", cands, selection_method="all", **common)
            + name_block("rr.test", cands, selection_method="group_rtt_rr",
                         group_rtt_threshold=0.16, **common)
            + name_block("cap.test", cands, selection_method="all", max_rtt=0.16,
                         **common))
    db = db_path(workdir)
    h = start_hard(body, upstream=up, data_file=db)
    wait_answer(h, "all.test", [A, B, C])
    wait_sql(db, "SELECT count(*) AS n FROM candidates WHERE healthy IS NOT NULL",
             lambda r: r[0]["n"] == 16)
    time.sleep(0.6)  # a couple more samples for the smoothed RTTs

    ranking, left_out = {}, {}
    for r in sql(db, "SELECT * FROM ranking ORDER BY name, family, rank"):
        (ranking if r["reason"] == "healthy" else left_out) \
            .setdefault(r["name"], []).append(r)
    assert set(ranking) == {"best.test", "all.test", "rr.test", "cap.test"}, ranking
    for name, rows in ranking.items():
        assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1)), rows
        assert all(r["family"] == 4 for r in rows), rows
        rtts = [r["rtt"] for r in rows]
        assert rtts == sorted(rtts), rows
        assert D not in [r["ip_address"] for r in rows], "a down address is ranked"
        # the others follow, not answered, saying why
        why = {r["ip_address"]: (r["reason"], r["answered"]) for r in left_out[name]}
        assert why[D] == ("down", 0), why
        assert [r["rank"] for r in left_out[name]] == \
            list(range(len(rows) + 1, len(rows) + len(why) + 1)), left_out[name]
    assert left_out["cap.test"][0]["ip_address"] == C
    assert left_out["cap.test"][0]["reason"] == "over max_rtt"
    order = lambda name: [r["ip_address"] for r in ranking[name]]  # noqa: E731
    answered = lambda name: [r["ip_address"] for r in ranking[name] if r["answered"]]  # noqa: E731
    assert order("all.test") == [A, B, C]
    assert order("cap.test") == [A, B], "max_rtt 0.16 should leave out c"

    # best_rtt: rank 1 is the answer
    r = h.query("best.test")
    assert addresses(r) == [ranking["best.test"][0]["ip_address"]] == answered("best.test")
    # all: the answer is the ranking, in its order
    for name in ("all.test", "cap.test"):
        got = addresses(h.query(name))
        assert got == order(name) == answered(name), (name, got, ranking[name])
    # group_rtt_rr: one address per answer, taken from the answered rows
    assert answered("rr.test") == [A, B], ranking["rr.test"]
    seen = set()
    for _ in range(10):
        got = addresses(h.query("rr.test"))
        assert len(got) == 1
        seen.add(got[0])
    assert seen == set(answered("rr.test")), seen
    # the view reads the recorded rtt
    recorded = {r["ip_address"]: r["rtt"] for r in
                sql(db, "SELECT ip_address, rtt FROM candidates WHERE name = 'all.test'")}
    for r in ranking["all.test"]:
        assert r["rtt"] == recorded[r["ip_address"]]

    # a change of health moves the view and the answers together
    sa.set(status=503)
    wait_answer(h, "best.test", [B])
    wait_sql(db, "SELECT ip_address FROM ranking WHERE name = 'best.test' AND rank = 1",
             lambda r: r == [{"ip_address": B}])
    assert [r["ip_address"] for r in sql(
        db, "SELECT ip_address FROM ranking WHERE name = 'all.test' AND answered"
        " ORDER BY rank")] == addresses(h.query("all.test")) == [B, C]


# ------------------------------------------------------------ warm start


def test_warm_start(workdir, start_hard, start_http, up):
    """A restarted hard answers from the recorded state before its first
    checks complete, and its counters go on from the recorded ones."""
    sa, sb = start_http(A), start_http(B, status=503)
    db = db_path(workdir)
    cands = [("a", sa.url()), ("b", sb.url())]
    body = name_block("warm.test", cands, check_frequency=0.3, check_timeout=1,
                      selection_method="all", failure_mode="servfail")
    h = start_hard(body, upstream=up, data_file=db)
    wait_answer(h, "warm.test", [A])
    wait_sql(db, "SELECT count(*) AS n FROM candidates WHERE checks >= 2",
             lambda r: r[0]["n"] == 2)
    for _ in range(5):
        assert answer(h, "warm.test") == [A]
    assert h.stop() == 0
    before = candidates(db, "warm.test")
    queries = sql_value(db, "SELECT queries FROM names WHERE name = 'warm.test'")
    assert before[("a", A)]["healthy"] == 1 and before[("b", B)]["healthy"] == 0
    assert queries >= 5

    # now every check takes 5 s, and b would pass: only the state can answer
    # (restored addresses are first checked spread over check_frequency)
    sa.set(delay=5)
    sb.set(status=200, delay=5)
    body = name_block("warm.test", cands, check_frequency=4, check_timeout=10,
                      selection_method="all", failure_mode="servfail")
    t0 = time.monotonic()
    h2 = start_hard(body, upstream=up, data_file=db)
    got = answer(h2, "warm.test")
    took = time.monotonic() - t0
    assert got == [A], "restarted hard answered %s, not the recorded [%s]" % (got, A)
    assert took < 4, "first answer %.2fs after start: a check had completed" % took
    assert_answers(h2, {"warm.test": [A]}, duration=0.5)
    assert len(log_lines(h2, r"restored the state of 2 addresses")) == 1, h2.log()
    # no check has completed yet: the rows are as recorded
    assert candidates(db, "warm.test") == before
    # the query counter goes on from the recorded value (7 more queries)
    wait_sql(db, "SELECT queries FROM names WHERE name = 'warm.test'",
             lambda r: r and r[0]["queries"] >= queries + 7)
    # after the first checks, counters continue from the restored values
    wait_sql(db, "SELECT checks FROM candidates WHERE candidate_name = 'a'",
             lambda r: r and r[0]["checks"] > before[("a", A)]["checks"])
    wait_answer(h2, "warm.test", [A, B], timeout=15)
    wait_sql(db, "SELECT checks FROM candidates WHERE candidate_name = 'b'",
             lambda r: r and r[0]["checks"] > before[("b", B)]["checks"])
    after = candidates(db, "warm.test")
    new_a = after[("a", A)]["checks"] - before[("a", A)]["checks"]
    new_b = after[("b", B)]["checks"] - before[("b", B)]["checks"]
    assert after[("a", A)]["successes"] == before[("a", A)]["successes"] + new_a
    assert after[("b", B)]["response_errors"] == before[("b", B)]["response_errors"]
    assert after[("b", B)]["successes"] == new_b and after[("b", B)]["healthy"] == 1


def test_older_file_upgraded_and_unknown_health(workdir, start_hard, start_http, up):
    """A file of an older schema (no version, fewer columns) is upgraded in
    place; a row without health stays unknown (NULL) and is not answered
    until a check completes.  The names table gains last_query_time (NULL
    until a query) and idle (version 4)."""
    db = db_path(workdir)
    os.makedirs(os.path.dirname(db))
    subprocess.run([SQLITE3, db,
                    "CREATE TABLE names(name TEXT PRIMARY KEY, queries INTEGER);"
                    "CREATE TABLE candidates(name TEXT, candidate_name TEXT,"
                    " ip_address TEXT, PRIMARY KEY(name, candidate_name, ip_address));"
                    "INSERT INTO names VALUES('old.test', 41);"
                    "INSERT INTO candidates VALUES('old.test', 'a', '%s');" % A],
                   check=True)
    s = start_http(A, delay=3.0)  # longer than a loaded start-up
    h = start_hard(name_block("old.test", [("a", s.url())], check_frequency=30,
                              check_timeout=8, failure_mode="servfail"),
                   upstream=up, data_file=db)
    assert answer(h, "old.test") == "SERVFAIL"  # unknown: not available
    assert sql_value(db, "PRAGMA user_version") == 5
    assert REQUIRED_COLUMNS["candidates"] <= columns(db, "candidates")
    assert "overprovisioning" in columns(db, "names")
    row = sql(db, "SELECT healthy, last_check_status, successes FROM candidates")
    assert len(row) == 1 and row[0]["healthy"] is None, row
    wait_answer(h, "old.test", [A], timeout=8)
    wait_sql(db, "SELECT healthy, last_check_status, checks FROM candidates",
             lambda r: r == [{"healthy": 1, "last_check_status": 200, "checks": 1}])
    # the old query count is kept and goes on
    wait_sql(db, "SELECT queries FROM names", lambda r: r[0]["queries"] >= 43)
    # version 4: the address's share (its name does not spill: no group)
    assert sql(db, "SELECT overprovisioning FROM names") == [{"overprovisioning": 0}]
    wait_sql(db, "SELECT latency_group, share, answered FROM ranking",
             lambda r: r == [{"latency_group": None, "share": 1, "answered": 1}])
    assert REQUIRED_COLUMNS["names"] <= columns(db, "names")
    row = wait_sql(db, "SELECT last_query_time, idle FROM names",
                   lambda r: r[0]["last_query_time"] is not None)[0]
    assert abs(row["last_query_time"] - time.time()) < 10 and row["idle"] == 0, row


def test_null_keys_and_bad_values_restored_safely(workdir, start_hard,
                                                  start_http, up):
    """A data file of schema 1, which lets NULL into its keys, with such
    rows and with values no check gives (an infinite RTT, negative counts,
    text in a number column): hard starts (it crashed on strcmp(NULL), a
    crash loop under Restart=always), answers, says once that it skipped
    the NULL-key rows, and its writer removes them, so the next start has
    nothing to say.  A bad value is taken as unknown: an infinite smoothed
    RTT, kept, would hold the address over max_rtt for good."""
    db = db_path(workdir)
    os.makedirs(os.path.dirname(db))
    subprocess.run([SQLITE3, db,
                    "CREATE TABLE names(name TEXT PRIMARY KEY, queries INTEGER);"
                    "CREATE TABLE candidates(name TEXT, candidate_name TEXT,"
                    " ip_address TEXT, family INTEGER, healthy INTEGER,"
                    " rtt REAL, checks INTEGER,"
                    " PRIMARY KEY(name, candidate_name, ip_address));"
                    "INSERT INTO names VALUES(NULL, 5);"
                    "INSERT INTO names VALUES('www.test', -7);"
                    "INSERT INTO candidates VALUES(NULL, 'a', '%(A)s', 4, 1, 0.004, 9);"
                    "INSERT INTO candidates VALUES('www.test', NULL, '%(A)s', 4, 1,"
                    " 0.004, 9);"
                    "INSERT INTO candidates VALUES('www.test', 'a', NULL, 4, 1, 0.004, 9);"
                    "INSERT INTO candidates VALUES('www.test', 'a', '%(A)s', 4, 1,"
                    " 9e999, -3);"
                    "INSERT INTO candidates VALUES('www.test', 'b', '%(B)s', 4, 'yes',"
                    " 'fast', 'many');"
                    "PRAGMA user_version = 1;" % {"A": A, "B": B}], check=True)
    assert sql_value(db, "SELECT rtt FROM candidates WHERE rtt > 1e308") is not None
    sa, sb = start_http(A), start_http(B, status=503)
    body = name_block("www.test", [("a", sa.url()), ("b", sb.url())],
                      max_rtt=1, check_frequency=0.3)
    h = start_hard(body, upstream=up, data_file=db)
    wait_answer(h, "www.test", [A], timeout=10)
    skipped = r"data file .*: skipped 1 names rows and 3 candidates rows without"
    wait_log(h, skipped)
    null_rows = ("SELECT (SELECT count(*) FROM names WHERE name IS NULL)"
                 " + (SELECT count(*) FROM candidates WHERE name IS NULL"
                 " OR candidate_name IS NULL OR ip_address IS NULL) AS n")
    wait_sql(db, null_rows, lambda r: r[0]["n"] == 0)
    row = wait_sql(db, "SELECT * FROM candidates WHERE candidate_name = 'a'",
                   lambda r: r and r[0]["checks"] >= 1)[0]
    assert row["healthy"] == 1 and 0 <= row["rtt"] < 1, row
    assert sql_value(db, "SELECT queries FROM names WHERE name = 'www.test'") >= 1
    assert len(log_lines(h, skipped)) == 1, h.log()
    assert h.stop() == 0

    h2 = start_hard(body, upstream=up, data_file=db)
    wait_answer(h2, "www.test", [A], timeout=10)
    assert not log_lines(h2, r"skipped"), h2.log()


# ------------------------------------------------------------ faults


def test_reload_to_read_only_file_system(workdir, tmpfs, start_hard, start_http,
                                         up):
    """A reload names a data file on a read-only file system (a read-only
    tmpfs: tests run as root, and root ignores chmod).  hard goes on
    answering, logs once, retries every 5 s, and once the file system is
    writable the new file gets the whole state, not only what changed
    since."""
    s = start_http(A)
    db1 = db_path(workdir)
    mnt = os.path.join(workdir, "ro")
    fs = tmpfs(mnt, "1m", readonly=True)
    db2 = os.path.join(mnt, "har.db")
    cands = [("a", s.url()), ("b", s.url())]
    body = name_block("ro.test", cands, check_frequency=0.3)
    body += name_block("idle.test", [("i", s.url())], check_frequency=3600)
    h = start_hard(body, upstream=up, data_file=db1)
    wait_sql(db1, "SELECT count(*) AS n FROM candidates", lambda r: r[0]["n"] == 3)
    for _ in range(4):
        assert answer(h, "ro.test") == [A]
    reload(h, body, up, data_file=db2)
    wait_log(h, r"cannot open data file .*ro/har\.db.*Read-only file system")
    assert not os.path.exists(db2)
    # retried every 5 s: stay read-only over two retries
    assert_answers(h, {"ro.test": [A], "fwd.test": ["192.0.2.1"]}, duration=6.5)
    assert len(log_lines(h, r"cannot open data file")) == 1, \
        "the failure should be logged once, not per retry:\n%s" % h.log()[-3000:]
    fs.remount(readonly=False)
    # idle.test was checked once, long before: it is in the new file all the same
    rows = wait_sql(db2, "SELECT candidate_name, healthy, checks FROM candidates",
                    lambda r: len(r) == 3 and all(x["healthy"] == 1 for x in r), what="the whole state in the new file")
    assert {r["candidate_name"]: r["checks"] for r in rows}["i"] == 1, rows
    # the 4 queries before the reload are in the new file; the queries of
    # the read-only stretch may be in the same write or a later one
    wait_sql(db2, "SELECT name, queries FROM names ORDER BY name",
             lambda r: [x["name"] for x in r] == ["idle.test", "ro.test"] and
             r[0]["queries"] == 0 and r[1]["queries"] >= 4)
    wait_log(h, r"data file .*ro/har\.db is open again")
    assert_answers(h, {"ro.test": [A]})
    assert len(log_lines(h, r"cannot open data file")) == 1


def test_disk_full(workdir, tmpfs, start_hard, start_http, up):
    """A full file system (a 1 MB tmpfs, filled up): hard keeps answering
    and checking, logs once, keeps what it could not write in memory and
    writes all of it when space is freed."""
    s = start_http(A)
    mnt = os.path.join(workdir, "small")
    fs = tmpfs(mnt, "1m")
    db = os.path.join(mnt, "har.db")
    cands = [("c%d" % i, s.url()) for i in range(4)]
    h = start_hard(name_block("full.test", cands, check_frequency=0.2),
                   upstream=up, data_file=db)
    wait_sql(db, "SELECT count(*) AS n FROM candidates", lambda r: r[0]["n"] == 4)
    fs.fill()
    # The WAL is copied into the file after each batch and used again from
    # its start, so a batch fails once the file or the WAL has to grow (a
    # new page of history, every few seconds here), not at once.
    wait_log(h, r"cannot write data file .*(full|disk)", timeout=30)
    time.sleep(0.6)  # let a flush that was under way end
    frozen = sql_value(db, "SELECT sum(checks) FROM candidates")
    assert_answers(h, {"full.test": [A], "fwd.test": ["192.0.2.1"]}, duration=2.5)
    assert sql_value(db, "SELECT sum(checks) FROM candidates") == frozen, \
        "writes succeeded on a full file system?"
    assert len(log_lines(h, r"cannot write data file")) == 1, \
        "the failure should be logged once, not per write:\n%s" % h.log()[-3000:]
    fs.free()
    # everything checked meanwhile is written: the history is complete
    wait_sql(db, "SELECT sum(checks) AS n FROM candidates",
             lambda r: r[0]["n"] >= frozen + 4 * 10,
             what="catching up after space was freed")
    time.sleep(0.3)
    h.signal(signal.SIGTERM)
    assert h.proc.wait(5) == 0
    h.expect_exit = True
    history_complete(db)
    assert len(log_lines(h, r"written again")) == 1
    assert len(log_lines(h, r"cannot write data file")) == 1


def test_exclusive_lock(workdir, start_hard, start_http, up):
    """Another process holds the data file with BEGIN EXCLUSIVE: hard
    keeps answering promptly, logs once, and catches up when the lock is
    released."""
    s = start_http(A)
    db = db_path(workdir)
    cands = [("c%d" % i, s.url()) for i in range(3)]
    h = start_hard(name_block("lock.test", cands, check_frequency=0.2),
                   upstream=up, data_file=db)
    wait_sql(db, "SELECT count(*) AS n FROM candidates", lambda r: r[0]["n"] == 3)
    with exclusive_lock(db):
        wait_log(h, r"cannot write data file .*lock", timeout=3)
        frozen = sql_value(db, "SELECT sum(checks) FROM candidates")
        assert_answers(h, {"lock.test": [A], "fwd.test": ["192.0.2.1"]},
                       duration=2.5, max_latency=0.3)
        assert sql_value(db, "SELECT sum(checks) FROM candidates") == frozen
        assert len(log_lines(h, r"cannot write data file")) == 1, \
            "the lock should be logged once, not per write:\n%s" % h.log()[-3000:]
    wait_sql(db, "SELECT sum(checks) AS n FROM candidates",
             lambda r: r[0]["n"] >= frozen + 3 * 10,
             what="catching up after the lock was released")
    wait_log(h, r"written again")
    h.signal(signal.SIGTERM)
    assert h.proc.wait(5) == 0
    h.expect_exit = True
    history_complete(db)
    assert len(log_lines(h, r"cannot write data file")) == 1


def test_garbage_file(workdir, start_hard, start_http, up):
    """A data file of random bytes: hard starts, sets it aside as
    FILE.corrupt-*, makes a new one, and logs it once."""
    s = start_http(A)
    db = db_path(workdir)
    os.makedirs(os.path.dirname(db))
    garbage = random.Random(4).randbytes(64 * 1024)
    with open(db, "wb") as f:
        f.write(garbage)
    h = start_hard(name_block("junk.test", [("a", s.url())], check_frequency=0.3),
                   upstream=up, data_file=db)
    wait_answer(h, "junk.test", [A], timeout=3)
    wait_sql(db, "SELECT healthy FROM candidates", lambda r: r == [{"healthy": 1}])
    aside = [f for f in os.listdir(os.path.dirname(db)) if f.startswith("har.db.corrupt-")]
    assert len(aside) == 1, os.listdir(os.path.dirname(db))
    with open(os.path.join(os.path.dirname(db), aside[0]), "rb") as f:
        assert f.read() == garbage, "the corrupt file was not kept as it was"
    assert sql_text(db, "PRAGMA integrity_check") == "ok"
    assert_answers(h, {"junk.test": [A], "fwd.test": ["192.0.2.1"]}, duration=1)
    assert len(log_lines(h, r"corrupt")) == 1, h.log()


def test_kill_9_under_load(workdir, start_hard, start_http, up):
    """kill -9 while checks and queries run: the file still opens, passes
    integrity_check, and the next hard restores its state (answers before
    its first check, counters go on)."""
    s = start_http(A)
    db = db_path(workdir)
    cands = [("c%02d" % i, s.url()) for i in range(20)]
    body = name_block("load.test", cands, check_frequency=0.1, check_timeout=1)
    rng = random.Random(9)
    for cycle in range(3):
        h = start_hard(body, upstream=up, data_file=db)
        loop = QueryLoop(h.addr, h.port, ["load.test", "fwd.test"], pause=0).start()
        if not cycle:
            # the next start is warm only if this one wrote its state
            wait_sql(db, "SELECT count(*) AS n FROM candidates WHERE healthy = 1",
                     lambda r: r[0]["n"] == 20)
        time.sleep(0.8 + rng.random() * 0.5)
        t_kill = time.monotonic()
        os.kill(h.pid, signal.SIGKILL)
        h.proc.wait(5)
        h.expect_exit = True
        loop.stop()
        done = [r for r in loop.results if r[1] < t_kill]
        load = [r[4] for r in done if r[2] == "load.test"]
        assert (A,) in load, load[:20]
        if cycle:  # warm: right from the first query
            assert load[0] == (A,), load[:5]
        else:  # cold: forwarded (NXDOMAIN upstream) until the first check
            load = load[load.index((A,)):]
        assert set(load) == {(A,)}, [x for x in load if x != (A,)][:5]
        assert {r[4] for r in done if r[2] == "fwd.test"} == {("192.0.2.1",)}
        assert sql_text(db, "PRAGMA integrity_check") == "ok", "cycle %d" % cycle
        if cycle:
            assert len(log_lines(h, r"restored the state of 20 addresses")) == 1
    before = candidates(db, "load.test")
    assert len(before) == 20 and all(r["healthy"] == 1 for r in before.values())
    # last start: every check now takes 1 s, so the first answer is restored
    # (restored addresses are first checked spread over check_frequency)
    s.set(delay=1.0)
    body = name_block("load.test", cands, check_frequency=2, check_timeout=5)
    h = start_hard(body, upstream=up, data_file=db)
    assert answer(h, "load.test") == [A]
    assert len(log_lines(h, r"restored the state of 20 addresses")) == 1
    wait_sql(db, "SELECT count(*) AS n FROM candidates WHERE last_check_status = 200"
             " AND last_check_time > %f" % max(r["last_check_time"] for r in before.values()),
             lambda r: r[0]["n"] == 20)
    after = candidates(db, "load.test")
    for k, r in after.items():
        new = r["checks"] - before[k]["checks"]
        assert new >= 1, (before[k], r)
        assert r["successes"] == before[k]["successes"] + new, (before[k], r)


# ------------------------------------------------------------ reload, stop


def threads(pid):
    return len(os.listdir("/proc/%d/task" % pid))


def test_reload_new_data_file_while_old_is_locked(workdir, start_hard,
                                                  start_http, up):
    """A reload names a new data_file while another process holds the old
    one locked: no query waits for the old file's writer, the new file at
    once gets the whole state, and the old writer gives up after 2 s by
    itself and is joined (its thread ends)."""
    s = start_http(A)
    db1, db2 = db_path(workdir, "one"), db_path(workdir, "two")
    cands = [("c%d" % i, s.url()) for i in range(3)]
    body = name_block("lock.test", cands, check_frequency=0.2)
    h = start_hard(body, upstream=up, data_file=db1)
    wait_sql(db1, "SELECT count(*) AS n FROM candidates", lambda r: r[0]["n"] == 3)
    before = threads(h.pid)
    with exclusive_lock(db1):
        # the writer now holds a batch it cannot write
        wait_log(h, r"cannot write data file .*one/har\.db.*lock", timeout=3)
        queries = QueryLoop(h.addr, h.port, ["lock.test"], timeout=3,
                            pause=0.005).start()
        time.sleep(0.3)
        t_reload = reload(h, body, up, data_file=db2)
        wait_log(h, r"data file changes to .*two/har\.db")
        time.sleep(1.0)
        queries.stop()
        during = [r for r in queries.results if r[1] >= t_reload - 0.1]
        assert during, "no query during the reload"
        slowest = max(queries.results, key=lambda r: r[1] - r[0])
        assert slowest[1] - slowest[0] < 1.0, \
            "a query waited %.2f s (at %.2f s from the reload): %s" % (
                slowest[1] - slowest[0], slowest[0] - t_reload, slowest)
        assert {r[4] for r in queries.results} == {(A,)}
        # the new file has every address at once, the old one is untouched
        wait_sql(db2, "SELECT count(*) AS n FROM candidates WHERE checks > 0"
                 " AND healthy = 1", lambda r: r[0]["n"] == 3)
        wait_sql(db2, "SELECT queries FROM names WHERE name = 'lock.test'",
                 lambda r: r and r[0]["queries"] >= len(queries.results))
        # the old writer gives up within its 2 s, with the lock still held
        wait_log(h, r"closing data file .*one/har\.db: still not writable",
                 timeout=4)
    assert len(log_lines(h, r"closing data file")) == 1
    harness.wait_until(lambda: threads(h.pid) == before, 3,
                       what="the old writer thread to end and be joined")
    checks = sql_value(db2, "SELECT sum(checks) FROM candidates")
    wait_sql(db2, "SELECT sum(checks) AS n FROM candidates",
             lambda r: r[0]["n"] >= checks + 6)
    h.signal(signal.SIGTERM)
    assert h.proc.wait(5) == 0
    h.expect_exit = True
    # the history goes on in the new file from the reload on (the older
    # rows stay in the old file)
    for r in sql(db2, "SELECT c.candidate_name, c.checks, count(k.slot) AS n"
                 " FROM candidates c JOIN checks k USING (name, candidate_name,"
                 " ip_address) GROUP BY 1, 2"):
        assert 6 <= r["n"] < r["checks"], r


def test_stop_with_locked_file(workdir, start_hard, start_http, up):
    """SIGTERM while the data file is locked: hard waits for it at most
    2 s, writes the last state if the lock goes in that time, and exits 0
    either way, saying what it could not write."""
    s = start_http(A)
    db = db_path(workdir)
    cands = [("c%d" % i, s.url()) for i in range(3)]
    body = name_block("stop.test", cands, check_frequency=0.2)
    # released 0.5 s into the stop: everything is written
    h = start_hard(body, upstream=up, data_file=db)
    wait_sql(db, "SELECT count(*) AS n FROM candidates", lambda r: r[0]["n"] == 3)
    with exclusive_lock(db):
        wait_log(h, r"cannot write data file .*lock", timeout=3)
        frozen = sql_value(db, "SELECT sum(checks) FROM candidates")
        time.sleep(1.5)  # 3 x 7 checks, of which 3 x 4 are asserted
        h.signal(signal.SIGTERM)
        time.sleep(0.5)
        assert h.alive(), "hard did not wait for the locked file"
    assert h.proc.wait(5) == 0
    h.expect_exit = True
    assert sql_value(db, "SELECT sum(checks) FROM candidates") >= frozen + 3 * 4
    history_complete(db)
    assert not log_lines(h, r"not in it")
    # held for good: hard stops after about 2 s, and says so
    h = start_hard(body, upstream=up, data_file=db)
    wait_log(h, r"restored the state of 3 addresses")
    with exclusive_lock(db):
        wait_log(h, r"cannot write data file .*lock", timeout=3)
        t0 = time.monotonic()
        h.signal(signal.SIGTERM)
        assert h.proc.wait(6) == 0
        took = time.monotonic() - t0
        h.expect_exit = True
    assert 1.5 <= took <= 4.5, "stopped after %.1f s" % took
    assert len(log_lines(h, r"closing data file .*: still not writable after 2 s"
                         r"; its last state is not in it")) == 1, h.log()[-3000:]
    assert sql_text(db, "PRAGMA integrity_check") == "ok"


# ------------------------------------------------------------ names rows


def test_name_without_address_keeps_its_row(workdir, start_hard, start_http, up):
    """A configured name with no address yet (its candidate's host does not
    resolve: NXDOMAIN) keeps its names row and query counter across
    reloads, and the counter goes on."""
    s = start_http(A)
    db = db_path(workdir)
    body = name_block("nx.test", [("n", "http://nowhere.test:%d/" % s.port)],
                      failure_mode="servfail", check_frequency=0.3)
    body += name_block("ok.test", [("a", s.url())], check_frequency=0.3)
    h = start_hard(body, upstream=up, data_file=db)
    wait_log(h, r"cannot resolve nowhere\.test")
    for _ in range(5):
        answer(h, "nx.test")
    wait_sql(db, "SELECT queries FROM names WHERE name = 'nx.test'",
             lambda r: r == [{"queries": 5}])
    # the same configuration, then one with another name added
    reload(h, body, up, data_file=db)
    wait_log(h, r"reloaded .*\(0 added")
    time.sleep(1.2)  # two flushes, the first of which prunes
    assert sql(db, "SELECT queries FROM names WHERE name = 'nx.test'") == \
        [{"queries": 5}]
    body2 = body + name_block("new.test", [("b", s.url())], check_frequency=0.3)
    reload(h, body2, up, data_file=db)
    wait_log(h, r"reloaded .*\(1 added")
    wait_sql(db, "SELECT count(*) AS n FROM candidates", lambda r: r[0]["n"] == 2)
    time.sleep(0.6)
    assert sql(db, "SELECT queries FROM names WHERE name = 'nx.test'") == \
        [{"queries": 5}]
    for _ in range(3):
        answer(h, "nx.test")
    wait_sql(db, "SELECT queries FROM names WHERE name = 'nx.test'",
             lambda r: r == [{"queries": 8}])
    # a removed name's row goes
    reload(h, name_block("ok.test", [("a", s.url())], check_frequency=0.3), up,
           data_file=db)
    wait_sql(db, "SELECT name FROM names", lambda r: r == [{"name": "ok.test"}])


def test_reload_back_to_a_file_still_closing(workdir, start_hard, start_http, up):
    """A, B, then A again while A's old writer still waits for a lock: the
    new writer of A starts only once the old one has ended (so the old one's
    last batch cannot land after newer state), and then writes everything."""
    s = start_http(A)
    db1, db2 = db_path(workdir, "one"), db_path(workdir, "two")
    body = name_block("back.test", [("c0", s.url())], check_frequency=0.2)
    h = start_hard(body, upstream=up, data_file=db1)
    wait_sql(db1, "SELECT count(*) AS n FROM candidates", lambda r: r[0]["n"] == 1)
    with exclusive_lock(db1):
        wait_log(h, r"cannot write data file .*one/har\.db.*lock", timeout=3)
        reload(h, body, up, data_file=db2)
        wait_log(h, r"data file changes to .*two/har\.db")
        reload(h, body, up, data_file=db1)
        harness.wait_until(lambda: len(log_lines(h, r"data file changes to .*one/har\.db")) == 1,
                           3, what="the reload back to the first file")
        for _ in range(7):
            h.query("back.test", "A")
        wait_log(h, r"closing data file .*one/har\.db: still not writable", timeout=4)
    wait_sql(db1, "SELECT queries FROM names WHERE name = 'back.test'",
             lambda r: r and r[0]["queries"] >= 7)
    h.assert_alive()
    h.signal(signal.SIGTERM)
    assert h.proc.wait(5) == 0
    h.expect_exit = True
