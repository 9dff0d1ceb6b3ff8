"""The defaults section (issue 18 item 6, har.conf(5) "Shared defaults"): options
every name takes unless it sets them itself, seen through what a running
hard does (the checks a server receives, the TTL and the health of the
answers), and a reload that changes a default changing the names that
take it."""

import re

import harness
from statehelpers import log_lines, wait_answer, wait_log
from test_config import assert_error_at, check_t
from test_reload import SUMMARY, reload

SHARED, OWN = "127.0.0.2", "127.0.0.3"

BODY = """
defaults {
    check_frequency = %(frequency)s
    ttl = %(ttl)d
    expect_status = { %(expect)d }
    http_headers = { "X-Defaults: shared" }
    failure_mode = servfail
}
name shared.test {
    candidate a { check_address = "%(shared)s" }
}
name own.test {
    check_frequency = 0.2
    ttl = 7
    expect_status = { 200 }
    candidate b { check_address = "%(own)s" }
}
"""


def body(shared, own, frequency, ttl, expect=204):
    return BODY % {"shared": shared.url(), "own": own.url(),
                   "frequency": frequency, "ttl": ttl, "expect": expect}


def ttl_of(h, name):
    response = h.query(name)
    assert response.answer, "%s: no answer: %s" % (name, response)
    return response.answer[0].ttl


def header_values(server, header):
    return [value for request in server.requests_seen()
            for name, value in request["headers"] if name.lower() == header]


def test_defaults_taken_unless_a_name_sets_its_own(start_hard, start_http, upstream):
    # shared.test is up only with the defaults' expect_status (its server
    # says 204), own.test only with its own list, which replaces it (200).
    shared = start_http(SHARED, status=204)
    own = start_http(OWN, status=200)
    h = start_hard(body(shared, own, 30, 42), upstream=upstream)
    wait_answer(h, "shared.test", [SHARED])
    wait_answer(h, "own.test", [OWN])
    assert ttl_of(h, "shared.test") == 42
    assert ttl_of(h, "own.test") == 7
    # Options neither name sets come from defaults for both.
    assert set(header_values(shared, "x-defaults")) == {"shared"}
    assert set(header_values(own, "x-defaults")) == {"shared"}
    # own.test checks every 0.2 s; shared.test every 30 s, so once own's
    # server has seen ten checks, shared's has seen its first only.
    harness.wait_until(lambda: len(own.requests_seen()) >= 10, 10,
                       what="ten checks of own.test")
    assert len(shared.requests_seen()) == 1, shared.requests_seen()


def test_reload_of_a_default_changes_the_names_that_take_it(start_hard, start_http,
                                                            upstream):
    shared = start_http(SHARED, status=204)
    own = start_http(OWN, status=200)
    h = start_hard(body(shared, own, 30, 42), upstream=upstream)
    wait_answer(h, "shared.test", [SHARED])
    wait_answer(h, "own.test", [OWN])

    # The shared expect_status no longer accepts 204: shared.test is
    # checked again at once (its pace is 30 s) and goes down; own.test,
    # with a list of its own, does not change.
    reload(h, body(shared, own, 30, 42, expect=200), upstream)
    line = wait_log(h, SUMMARY)[-1]
    assert re.search(r"2 names \(0 added, 0 removed, 1 changed\), defaults changed$",
                     line), line
    wait_answer(h, "shared.test", "SERVFAIL")
    assert harness.addresses(h.query("own.test")) == [OWN]

    # The shared pace goes from 30 s to 0.2 s: shared.test's next check,
    # up to 30 s away, moves onto the new pace as for a change in its own
    # section, and finds its server good again.
    shared.set(status=200)
    seen = len(shared.requests_seen())
    reload(h, body(shared, own, 0.2, 99, expect=200), upstream)
    line = wait_log(h, SUMMARY, 2)[-1]
    assert re.search(r"\(0 added, 0 removed, 1 changed\), defaults changed$",
                     line), line
    harness.wait_until(lambda: len(shared.requests_seen()) >= seen + 5, 10,
                       what="shared.test checked at the new shared pace")
    wait_answer(h, "shared.test", [SHARED])
    assert ttl_of(h, "shared.test") == 99
    assert ttl_of(h, "own.test") == 7

    # A reload that leaves defaults as they are says nothing of them.
    reload(h, body(shared, own, 0.2, 99, expect=200), upstream)
    line = wait_log(h, SUMMARY, 3)[-1]
    assert line.endswith("(0 added, 0 removed, 0 changed)"), line
    assert len(log_lines(h, "defaults changed")) == 2


def test_bad_default_refused_at_its_line(workdir, start_hard, start_http, upstream):
    """hard -t and a reload refuse a bad value in defaults at its line;
    the running configuration stays."""
    path, res = check_t(workdir, "nameservers = { 127.0.0.1:5300 }\n"
                                 "defaults {\n"
                                 "    rise = 2\n"
                                 "    check_frequency = 0\n"
                                 "    colour = blue\n"
                                 "}\n")
    assert_error_at(path, res, {4}, r"check_frequency must be between 0\.01 and 86400")
    assert_error_at(path, res, {5}, r"no such option 'colour'")
    shared = start_http(SHARED, status=204)
    own = start_http(OWN, status=200)
    h = start_hard(body(shared, own, 30, 42), upstream=upstream)
    wait_answer(h, "shared.test", [SHARED])
    reload(h, body(shared, own, 30, 42).replace("ttl = 42", "ttl = -1"), upstream)
    wait_log(h, r"har-\d+\.conf:\d+: ttl must be between 0 and 2147483647")
    wait_log(h, r"reload of .* failed; still running the previous configuration")
    assert ttl_of(h, "shared.test") == 42
