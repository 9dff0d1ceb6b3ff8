"""Richer HTTP checks (issue 10 item 3): http_method, expect_body,
http_headers and status ranges in expect_status, against the real HTTP
server of httpserver.py on 127.0.0.2, 127.0.0.3, ...; -t's errors; and a
reload that changes them re-checks at once."""

import os
import subprocess

import pytest

import harness
from harness import answer, wait_answer
from statehelpers import name_block, wait_log, wait_sql
from test_config import assert_error_at, check_t
from test_reload import reload

A, B, C = "127.0.0.2", "127.0.0.3", "127.0.0.4"
WINDOW = 65536
STATUS_BODY_MISMATCH = -7
HAR_STATUS = os.path.join(harness.REPO, "contrib", "har-status")


@pytest.fixture
def up(start_upstream):
    return start_upstream("--host-record=fallback.test,192.0.2.77")


def block(title, server, **opts):
    opts.setdefault("check_frequency", 0.2)
    opts.setdefault("check_timeout", 1)
    opts.setdefault("failure_mode", "servfail")
    return name_block(title, [("a", server.url())], **opts)


def methods(server):
    return {r["method"] for r in server.requests_seen()}


def headers_of(request):
    return {k.lower(): v for k, v in request["headers"]}


def last_status(db, name):
    return wait_sql(db, "SELECT last_check_status AS s, response_errors AS e"
                    " FROM candidates WHERE name = '%s'" % name,
                    lambda rows: rows and rows[0]["s"] is not None)[0]


def test_http_method_head(start_hard, start_http, up):
    sa, sb = start_http(A), start_http(B)
    h = start_hard(block("get.test", sa) +
                   block("head.test", sb, http_method="HEAD"), upstream=up)
    wait_answer(h, "get.test", [A])
    wait_answer(h, "head.test", [B])
    assert methods(sa) == {"GET"}, sa.requests_seen()
    assert methods(sb) == {"HEAD"}, sb.requests_seen()
    # a HEAD is judged by its status like a GET
    sb.set(status=503)
    wait_answer(h, "head.test", "SERVFAIL")


def test_expect_body_match_and_miss(workdir, start_hard, start_http, up):
    db = os.path.join(workdir, "har.db")
    s = start_http(A)
    s.set(body="service=ok; version=7")
    h = start_hard(block("match.test", s, expect_body='"service=ok"') +
                   block("miss.test", s, expect_body='"service=down"') +
                   block("plain.test", s), upstream=up, data_file=db)
    wait_answer(h, "match.test", [A])
    wait_answer(h, "plain.test", [A])
    assert answer(h, "miss.test") == "SERVFAIL"
    row = last_status(db, "miss.test")
    assert row["s"] == STATUS_BODY_MISMATCH and row["e"] >= 1, row
    wait_log(h, r"miss.test candidate a address 127.0.0.2 is down "
                r"\(expect_body not found\)")
    table = subprocess.run([HAR_STATUS, db], capture_output=True, text=True,
                           timeout=10)
    assert any("miss.test" in line and "-7 body mismatch" in line
               for line in table.stdout.splitlines()), table
    # the body changes: the names follow
    s.set(body="service=down")
    wait_answer(h, "match.test", "SERVFAIL")
    wait_answer(h, "miss.test", [A])
    assert answer(h, "plain.test") == [A]
    # a status not expected stays that status, whatever the body says
    s.set(status=503, body="service=ok")
    wait_answer(h, "match.test", "SERVFAIL")
    wait_sql(db, "SELECT last_check_status AS s FROM candidates"
             " WHERE name = 'match.test'", lambda rows: rows[0]["s"] == 503)


def test_expect_body_window_is_64_kib(workdir, start_hard, start_http, up):
    """The string must end within the first 65536 bytes of the body."""
    db = os.path.join(workdir, "har.db")
    s = start_http(A)
    s.set(body="MARK", pad=WINDOW - 4, tail=100000)
    h = start_hard(block("edge.test", s, expect_body="MARK"), upstream=up,
                   data_file=db)
    wait_answer(h, "edge.test", [A])
    s.set(pad=WINDOW - 3)
    wait_answer(h, "edge.test", "SERVFAIL")
    # the file follows the answers by up to a flush (later on a loaded
    # machine): it may still hold the last 200
    wait_sql(db, "SELECT last_check_status AS s FROM candidates"
             " WHERE name = 'edge.test'",
             lambda rows: rows[0]["s"] == STATUS_BODY_MISMATCH)


def test_expect_body_large_body_early_match(start_hard, start_http, up):
    """A body far larger than 64 KiB with the string early passes, and hard
    stops reading once it is found: a server that stalls after it does not
    make the check time out."""
    sa, sb = start_http(A), start_http(B)
    sa.set(body="MARK", pad=100, tail=4000000)
    sb.set(body="MARK", pad=100, tail=1000000, split=1000, pause=5)
    h = start_hard(block("big.test", sa, expect_body="MARK") +
                   block("stall.test", sb, expect_body="MARK", check_timeout=1.5),
                   upstream=up)
    wait_answer(h, "big.test", [A])
    wait_answer(h, "stall.test", [B])


def test_expect_body_stops_at_the_window(workdir, start_hard, start_http, up):
    """Past 64 KiB without the string the check fails at once as a body
    mismatch, not as a timeout, though the server would send it later."""
    db = os.path.join(workdir, "har.db")
    s = start_http(A)
    s.set(body="MARK", pad=WINDOW + 1000, split=WINDOW + 500, pause=5)
    h = start_hard(block("late.test", s, expect_body="MARK", check_timeout=1.5),
                   upstream=up, data_file=db)
    wait_answer(h, "late.test", "SERVFAIL")
    assert last_status(db, "late.test")["s"] == STATUS_BODY_MISMATCH


def test_expect_body_split_between_reads(start_hard, start_http, up):
    """A string that arrives half in one read, half in the next, matches."""
    s = start_http(A)
    s.set(body="HEALTHY-SERVICE", pad=20000, tail=5000, split=20000 + 7,
          pause=0.3)
    h = start_hard(block("split.test", s, expect_body="HEALTHY-SERVICE",
                         check_timeout=3), upstream=up)
    wait_answer(h, "split.test", [A], timeout=8)
    # a near miss is still a miss: the prefix repeats before the string
    s.set(body="HEALTHY-SERVIC", tail=0)
    wait_answer(h, "split.test", "SERVFAIL", timeout=8)
    s.set(body="HEALTHY-HEALTHY-SERVICE", split=20000 + 10)
    wait_answer(h, "split.test", [A], timeout=8)


def test_http_headers_sent(start_hard, start_http, up):
    sa, sb = start_http(A), start_http(B)
    h = start_hard(
        block("hdr.test", sa, http_headers='{ "X-Har-Check: yes", '
              '"Authorization: Bearer t0k3n" }') +
        block("host.test", sb, http_headers='{ "Host: status.internal.test" }'),
        upstream=up)
    wait_answer(h, "hdr.test", [A])
    wait_answer(h, "host.test", [B])
    first = headers_of(sa.requests_seen()[0])
    assert first["x-har-check"] == "yes", first
    assert first["authorization"] == "Bearer t0k3n", first
    # Host stays the URL's unless given
    assert first["host"] == "%s:%d" % (A, sa.port), first
    assert headers_of(sb.requests_seen()[0])["host"] == "status.internal.test"
    hosts = [r[0] for r in sb.request_log()]
    assert set(hosts) == {"status.internal.test"}, hosts


def test_host_header_over_https_keeps_sni(start_hard, start_http, up, workdir):
    """A Host line changes the header only: hard still connects to the
    candidate's address, and the TLS server name and the certificate
    verified are the URL's."""
    certs = harness.make_certs(workdir)
    cert, key = certs["secure.test"]
    s = start_http(A, cert=cert, key=key)
    h = start_hard(name_block(
        "tls.test", [("s", s.url("secure.test"), "address = { %s }" % A)],
        check_frequency=0.2, check_timeout=2, failure_mode="servfail",
        ca_file='"%s"' % certs["ca"],
        http_headers='{ "Host: vhost.internal.test" }'), upstream=up)
    wait_answer(h, "tls.test", [A])
    with open(s.requests + ".sni") as f:
        assert set(f.read().split()) == {"secure.test"}
    assert {r[0] for r in s.request_log()} == {"vhost.internal.test"}


def test_expect_status_ranges(start_hard, start_http, up):
    s = start_http(A, status=204)
    h = start_hard(block("range.test", s, expect_status='{ "200-299" }') +
                   block("mixed.test", s, expect_status='{ 200, 301-302 }') +
                   block("exact.test", s), upstream=up)
    wait_answer(h, "range.test", [A])
    assert answer(h, "mixed.test") == "SERVFAIL"
    assert answer(h, "exact.test") == "SERVFAIL"
    s.set(status=302)
    wait_answer(h, "mixed.test", [A])
    wait_answer(h, "range.test", "SERVFAIL")
    s.set(status=299)
    wait_answer(h, "range.test", [A])
    wait_answer(h, "mixed.test", "SERVFAIL")
    s.set(status=300)
    wait_answer(h, "range.test", "SERVFAIL")
    s.set(status=200)
    wait_answer(h, "exact.test", [A])
    wait_answer(h, "mixed.test", [A])
    wait_answer(h, "range.test", [A])


def test_reload_changing_http_options_rechecks(start_hard, start_http, up):
    """Each option is part of the check: a reload that changes it runs the
    new check at once (check_frequency is 30 s here)."""
    s = start_http(A)
    s.set(body="state=ok")

    def body(**opts):
        return name_block("re.test", [("a", s.url())], check_frequency=30,
                          check_timeout=2, rise=3, fall=3,
                          failure_mode="servfail", **opts)
    h = start_hard(body(), upstream=up)
    wait_answer(h, "re.test", [A], timeout=6)
    reload(h, body(expect_body='"state=bad"'), up)
    wait_answer(h, "re.test", "SERVFAIL", timeout=6)
    reload(h, body(expect_body='"state=ok"'), up)
    wait_answer(h, "re.test", [A], timeout=6)
    reload(h, body(expect_body='"state=ok"', expect_status='{ "201-299" }'), up)
    wait_answer(h, "re.test", "SERVFAIL", timeout=6)
    reload(h, body(http_method="HEAD"), up)
    wait_answer(h, "re.test", [A], timeout=6)
    harness.wait_until(lambda: "HEAD" in methods(s), 6, what="a HEAD check")
    reload(h, body(http_method="HEAD", http_headers='{ "X-Round: 2" }'), up)
    harness.wait_until(lambda: any(headers_of(r).get("x-round") == "2"
                                   for r in s.requests_seen()), 6,
                       what="a check with the new header")
    assert len(wait_log(h, "re.test candidate a: its check changed",
                        count=5)) >= 5


GOOD_HTTP = """\
nameservers = { 192.0.2.53 }
data_file = ""
name www.example.com {
    http_method = HEAD
    expect_status = { 200, "201-299", 301-302 }
    http_headers = { "Host: status.example.com", "X-Check: har" }
    candidate a.example.com { address = { 192.0.2.1 } }
}
name body.example.com {
    expect_body = "service=ok"
    candidate a.example.com { address = { 192.0.2.1 } }
}
"""

# line 4 of GOOD_HTTP replaced by the text: (text, lines, reason)
BAD_HTTP = {
    "method": ("    http_method = POST", {4}, r'http_method: unknown value "POST" \(expected GET, HEAD\)'),
    "header-no-colon": ('    http_headers = { "X-Check har" }', {4}, r'"X-Check har" is not "Name: value"'),
    "header-crlf": ('    http_headers = { "X-A: 1\\r\\nX-B: 2" }', {4}, r"without CR or LF"),
    "header-no-value": ('    http_headers = { "X-A:" }', {4}, r'"X-A:" has no value'),
    "backwards-range": ("    expect_status = { 300-200 }", {4}, r"range 300-200 runs backwards"),
    "range-too-high": ('    expect_status = { "500-600" }', {4}, r"expect_status must be between 100 and 599, not 500-600"),
    "not-a-range": ('    expect_status = { "2xx" }', {4}, r'"2xx" is not an HTTP status or a range'),
    "empty-body": ('    expect_body = ""', {4}, r"expect_body is empty"),
    # inserted after line 4 (http_method = HEAD), so on line 5
    "body-with-head": ('    expect_body = "ok"', {5}, r"expect_body needs http_method GET"),
}


def test_good_http_options_ok(workdir):
    path, res = check_t(workdir, GOOD_HTTP)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["ok"] or "ok" in res.stdout, res


@pytest.mark.parametrize("case", sorted(BAD_HTTP))
def test_bad_http_options_rejected(workdir, case):
    text, lines, reason = BAD_HTTP[case]
    config = GOOD_HTTP.split("\n")
    if case == "body-with-head":
        config.insert(4, text)
    else:
        config[3] = text
    path, res = check_t(workdir, "\n".join(config))
    assert_error_at(path, res, lines, reason)


# ------------------------------------------- reused handles (issue 12)


def test_reused_handles_carry_nothing_between_checks(start_hard, start_http, up):
    """curl handles are kept and reset between checks, and the checks of
    different names take turns on them: each request has exactly its own
    name's method and headers, and an expect_body match of one name never
    counts for another."""
    s = start_http(A)
    body = "".join(name_block(title, [("a", s.url() + path)], check_frequency=0.1,
                              check_timeout=1, failure_mode="servfail", **opts)
                   for title, path, opts in [
                       ("headers.test", "one", {"http_headers": '{ "X-Har-Test: one" }'}),
                       ("plain.test", "two", {}),
                       ("head.test", "three", {"http_method": "HEAD"}),
                       ("found.test", "four", {"expect_body": '"har test server"'}),
                       ("missing.test", "five", {"expect_body": '"not in the body"'}),
                   ])
    h = start_hard(body, upstream=up)
    for name in ("headers.test", "plain.test", "head.test", "found.test"):
        wait_answer(h, name, [A])
    assert answer(h, "missing.test") == "SERVFAIL"

    def requests_by_path():
        by_path = {}
        for r in s.requests_seen():
            by_path.setdefault(r["path"], []).append(r)
        return by_path
    # several rounds of every name's check (a fixed sleep may see fewer on a
    # loaded machine)
    harness.wait_until(lambda: len(requests_by_path()) == 5 and all(
        len(requests) >= 3 for requests in requests_by_path().values()),
        10, what="three checks of each name")
    assert answer(h, "missing.test") == "SERVFAIL"
    by_path = requests_by_path()
    assert set(by_path) == {"/one", "/two", "/three", "/four", "/five"}, set(by_path)
    for path, requests in by_path.items():
        assert len(requests) >= 3, (path, len(requests))
        for r in requests:
            headers = headers_of(r)
            assert r["method"] == ("HEAD" if path == "/three" else "GET"), r
            assert ("x-har-test" in headers) == (path == "/one"), r
            assert set(headers) == {"host", "user-agent", "accept"} | (
                {"x-har-test"} if path == "/one" else set()), r


def test_every_check_is_a_new_connection(start_hard, start_http, up):
    """A server that keeps connections open (HTTP/1.1 keep-alive) still sees
    each check on a new connection: one that rode on an old one would
    prove nothing of the server's accepting new ones."""
    s = start_http(A)
    s.set(keepalive=1)
    h = start_hard(name_block("keep.test", [("a", s.url())], check_frequency=0.1,
                              check_timeout=1, failure_mode="servfail"), upstream=up)
    wait_answer(h, "keep.test", [A])
    harness.wait_until(lambda: len(s.requests_seen()) >= 8, 5, what="8 checks")
    ports = [r["peer"] for r in s.requests_seen()]
    assert len(set(ports)) == len(ports), ports
