"""The command line and the configuration (SPEC sections 2 and 3): `hard -t`
on good and bad files, start-up failures, -V, -p and SIGTERM."""

import os
import re
import signal
import socket
import subprocess

import pytest

import harness
from harness import addresses, run_hard

GOOD = """\
# every option of SPEC section 3 and the decisions
nameservers = { 192.0.2.53, "192.0.2.54:5353", "[2001:db8::53]:53" }
dns_bind_interfaces = { 127.0.0.1, ::1 }
dns_listen_port = 5353
resolver_timeout = 0.5
data_file = "%(workdir)s/sub/never-created.db"
check_history = 100
tcp_idle_timeout = 2.5
tcp_max_connections = 16

name www.example.com {
    check_method = http
    check_frequency = 0.25
    check_timeout = 0.2
    rise = 2
    fall = 3
    expect_status = { 200, 204, 301 }
    drain_status = { 503 }
    selection_method = group_rtt_rr
    rtt_mode = connect
    max_rtt = 0.5
    group_rtt_threshold = 0.02
    failure_mode = all
    ttl = 30
    candidate www1.east.example.com {
        check_address = "http://www1.east.example.com/"
    }
    candidate www1.west.example.com {
        check_address = "https://www1.west.example.com:8443/health"
        address = { 192.0.2.10, 2001:db8::10 }
        admin_state = drain
    }
}
name "db.example.com." {
    check_method = tcp
    selection_method = best_rtt
    failure_mode = servfail
    candidate db1 { check_address = "tcp://192.0.2.20:5432" }
    candidate db2 { check_address = "192.0.2.21:5432" }
}
name secure.example.com {
    selection_method = all
    failure_mode = none
    ca_file = "%(workdir)s/ca.pem"
    candidate secure1.example.com { }
}
"""

ORIGINAL = """\
nameservers = { 192.0.2.53 }
dns_bind_interfaces = { 127.0.0.1, ::1 }
name www.example.com {
    check_frequency = 30
    selection_method = group_rtt_rr
    failure_mode = all
    candidate www1.east.example.com {
        check_address = "http://www1.east.example.com/"
    }
    candidate www1.west.example.com {
        check_address = "http://www1.west.example.com/"
    }
}
"""

# A valid base; each bad case replaces the line marked @@ (its line number is
# what hard must report) with the bad text.
BASE = """\
nameservers = { 127.0.0.1:5300 }
dns_listen_port = 5353
data_file = ""
name www.example.com {
    check_frequency = 5
    candidate a.example.com {
        check_address = "http://a.example.com/"
    }
}
name other.example.com {
    candidate b.example.com { address = { 127.0.1.9 } }
    failure_mode = all
}
"""


def write(workdir, text, name="har.conf"):
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def check_t(workdir, text):
    path = write(workdir, text)
    return path, run_hard("-t", "-c", path)


def assert_error_at(path, res, lines, reason):
    assert res.returncode == 1, "exit %d; stdout %r stderr %r" % (
        res.returncode, res.stdout, res.stderr)
    assert "ok" not in res.stdout.split()
    errors = re.findall(r"^%s:(\d+): (.+)$" % re.escape(path), res.stderr, re.M)
    assert errors, "no 'FILE:LINE: reason' on stderr: %r" % res.stderr
    found = [(int(n), msg) for n, msg in errors if int(n) in lines]
    assert found, "error not reported at line %s: %r" % (lines, res.stderr)
    assert any(re.search(reason, msg, re.I) for _, msg in found), \
        "reason should match %r: %r" % (reason, res.stderr)


def test_good_config_ok(workdir):
    write(workdir, "a CA file must exist and be readable\n", "ca.pem")
    path, res = check_t(workdir, GOOD % {"workdir": workdir})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
    # -t touches nothing: no data file, no directory for it
    assert not os.path.exists(os.path.join(workdir, "sub"))


def test_original_example_ok(workdir):
    path, res = check_t(workdir, ORIGINAL)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_positional_config_file(workdir):
    path = write(workdir, ORIGINAL)
    res = run_hard("-t", path)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_two_config_files_refused(workdir, upstream):
    """-c and a positional FILE (or -c twice) name two files: hard says so
    and exits 1, checking and starting neither (issue 18 item 7; it used to
    check or run the last one named, silently)."""
    good = write(workdir, ORIGINAL, "good.conf")
    bad = write(workdir, BASE.replace("    check_frequency = 5",
                                      "    colour = blue"), "bad.conf")
    for args in (("-c", good, bad), ("-c", bad, good), ("-c", good, "-c", bad)):
        res = run_hard("-t", *args)
        assert res.returncode == 1, (args, res)
        assert "ok" not in res.stdout.split(), (args, res.stdout)
        assert "colour" not in res.stderr, "a file was checked: %r" % res.stderr
        assert re.search(r"^hard: .*%s.*%s.*give one" % (
            re.escape(args[1]), re.escape(args[-1])), res.stderr, re.M), res.stderr
        assert "usage:" in res.stderr
    # A start refuses too: either file alone would start.
    port = harness.free_port()
    config = harness.hard_config(BASE.split("\n", 3)[3], upstream.endpoint, port)
    first = write(workdir, config, "first.conf")
    second = write(workdir, config, "second.conf")
    proc = subprocess.Popen([harness.HARD, "-f", "-c", first, second], text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        harness._kill(proc)
        out, err = proc.communicate()
        pytest.fail("hard -f -c A B started; stderr:\n" + err, pytrace=False)
    assert proc.returncode == 1, (proc.returncode, err)
    assert "give one" in err, err


def test_repo_example_config_ok():
    path = os.path.join(harness.REPO, "har.conf.example")
    res = run_hard("-t", "-c", path)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_documents_agree_on_the_pid_file():
    """The pid file the unit writes is the one every document reads
    (issue 18 item 7: har.conf.example said /run/hard.pid)."""
    with open(os.path.join(harness.REPO, "contrib", "har.service")) as f:
        unit = re.search(r"^ExecStart=.* -p (\S+)", f.read(), re.M).group(1)
    assert unit == "/run/har/hard.pid"
    for document in ("har.conf.example", "README.md", "contrib/resolv.conf.md",
                     "contrib/fleet/README.md"):
        with open(os.path.join(harness.REPO, document)) as f:
            named = set(re.findall(r"/run/\S*\.pid", f.read()))
        assert named == {unit}, "%s names %s" % (document, sorted(named))


# (replace this line of BASE, with this text, reason regex)
BAD = {
    "unknown-selection-method": (5, "    selection_method = fastest", r"selection_method|fastest"),
    "unknown-check-method": (5, "    check_method = icmp", r"check_method|icmp"),
    "unknown-failure-mode": (5, "    failure_mode = maybe", r"failure_mode|maybe"),
    "unknown-rtt-mode": (5, "    rtt_mode = median", r"rtt_mode|median"),
    "negative-frequency": (5, "    check_frequency = -5", r"check_frequency|frequency"),
    "zero-frequency": (5, "    check_frequency = 0", r"check_frequency|frequency"),
    "zero-timeout": (5, "    check_timeout = 0", r"check_timeout|timeout"),
    "negative-max-rtt": (5, "    max_rtt = -1", r"max_rtt"),
    "malformed-url": (7, '        check_address = "http//a.example.com/"', r"check_address|url|address"),
    "unknown-scheme": (7, '        check_address = "ftp://a.example.com/"', r"check_address|url|scheme|ftp"),
    "bad-url-port": (7, '        check_address = "http://a.example.com:99999/"', r"check_address|url|port"),
    "bad-address": (11, "    candidate b.example.com { address = { 300.1.2.3 } }", r"address|300"),
    "bad-address-text": (11, '    candidate b.example.com { address = { "not-an-ip" } }', r"address|not-an-ip"),
    "unknown-option-global": (2, "colour = blue", r"colour"),
    "unknown-option-name": (5, "    colour = blue", r"colour"),
    "bad-nameserver": (1, "nameservers = { 999.1.1.1 }", r"nameserver|999"),
    "bad-port": (2, "dns_listen_port = 70000", r"port"),
    "bad-name": (10, 'name "bad..example.com" {', r"name|bad"),
    "syntax-error": (8, "  }}", r"."),
    # issue 9 item 13: values that passed -t and then overflowed
    "huge-resolver-timeout": (2, "resolver_timeout = 1e10",
                              r"resolver_timeout must be between 0\.001 and 60 seconds, not 10000000000$"),
    "huge-check-timeout": (5, "    check_timeout = 1e300",
                           r"check_timeout must be between 0\.001 and 86400 seconds"),
    "nan-frequency": (5, "    check_frequency = nan", r"check_frequency must be between.*nan"),
    "inf-max-rtt": (5, "    max_rtt = inf", r"max_rtt must be between 0 and 86400"),
    "huge-ttl": (5, "    ttl = 4294967296", r"ttl must be between 0 and 2147483647"),
    "huge-rise": (5, "    rise = 4294967297", r"rise must be between 1 and 1000"),
    "huge-idle-timeout": (2, "tcp_idle_timeout = 1e300", r"tcp_idle_timeout must be between"),
    "empty-expect-status": (5, "    expect_status = {}", r"expect_status is empty"),
    "bad-expect-status": (5, "    expect_status = { 200, 600 }", r"expect_status.*100 and 599"),
    # issue 10 items 1 and 2
    "bad-admin-state": (7, "        admin_state = maintenance",
                        r'admin_state: unknown value "maintenance" \(expected auto, drain, down, up\)'),
    "bad-drain-status": (5, "    drain_status = { 503, 600 }",
                         r"drain_status must be between 100 and 599, not 600"),
    # item 14: what a start would fail on
    "unknown-user": (3, 'user = "no-such-user-har"', r'user "no-such-user-har": no such user'),
    "missing-ca-file": (5, '    ca_file = "/nonexistent/ca.pem"', r"ca_file.*No such file"),
    "unclosed-section": (13, "", r"never closed"),
    "unclosed-comment": (12, "    /* failure_mode = all", r"comment is never closed"),
    "listen-not-ip": (2, "dns_bind_interfaces = { localhost }", r"dns_bind_interfaces.*localhost"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_rejected(workdir, case):
    line, text, reason = BAD[case]
    lines = BASE.split("\n")
    lines[line - 1] = text
    path, res = check_t(workdir, "\n".join(lines))
    # the offending line, or the line of the section that holds it
    enclosing = {"unknown-selection-method": {4}, "unknown-check-method": {4},
                 "unknown-failure-mode": {4}, "unknown-rtt-mode": {4},
                 "negative-frequency": {4}, "zero-frequency": {4},
                 "zero-timeout": {4}, "negative-max-rtt": {4},
                 "malformed-url": {6}, "unknown-scheme": {6}, "bad-url-port": {6},
                 "syntax-error": {9}, "unclosed-section": {10}}.get(case, set())
    assert_error_at(path, res, {line} | enclosing, reason)


def test_candidate_less_name(workdir):
    text = BASE + "name empty.example.com {\n    ttl = 5\n}\n"
    path, res = check_t(workdir, text)
    first = BASE.count("\n") + 1
    assert_error_at(path, res, {first, first + 1, first + 2}, r"candidate")


@pytest.mark.parametrize("title", ["www.example.com", "WWW.Example.com.", '"www.example.com."'])
def test_duplicate_name(workdir, title):
    text = BASE + "name %s {\n    candidate c.example.com { }\n}\n" % title
    path, res = check_t(workdir, text)
    assert_error_at(path, res, {BASE.count("\n") + 1, 4},
                    r"duplicate|already|twice|more than once")


def test_every_error_reported(workdir):
    text = BASE.replace("    check_frequency = 5", "    check_frequency = -1") \
        .replace("address = { 127.0.1.9 }", "address = { 127.0.1.300 }")
    path, res = check_t(workdir, text)
    assert_error_at(path, res, {5, 4}, r"frequency")
    assert_error_at(path, res, {11, 10}, r"address")


def documented_ranges():
    """(option, low, high, global?) for each row of the table of ranges in
    har.conf.5's SYNTAX section."""
    with open(os.path.join(harness.REPO, "har.conf.5")) as f:
        page = f.read()
    globals_part = page.split(".Sh GLOBAL OPTIONS")[1].split(".Sh NAMES")[0]
    global_options = set(re.findall(r"^\.It Ic (\w+) Ar", globals_part, re.M))
    rows = re.findall(r"^\.It Ic (\w+)(?: , Ic (\w+))? Ta ([\d.]+) Ta ([\d.]+) Ta",
                      page, re.M)
    ranges = []
    for first, second, low, high in rows:
        for option in filter(None, (first, second)):
            ranges.append((option, low, high, option in global_options))
    return ranges


def with_value(option, value, is_global):
    if option in ("expect_status", "drain_status"):
        value = "{ %s }" % value
    lines = BASE.split("\n")
    if is_global:
        lines.insert(1, "%s = %s" % (option, value))
    else:
        lines[4] = "    %s = %s" % (option, value)
    return "\n".join(lines)


def test_documented_ranges_are_enforced(workdir):
    """Each range of har.conf(5)'s table is the one -t enforces: both ends
    are accepted, a value beyond either end, NaN and an infinity refused
    with a message that names the range (issue 9 item 13)."""
    ranges = documented_ranges()
    assert len(ranges) >= 13, ranges
    for option, low, high, is_global in ranges:
        for value in (low, high):
            path, res = check_t(workdir, with_value(option, value, is_global))
            assert res.returncode == 0, "%s = %s: %s" % (option, value, res.stderr)
        integral = "." not in low and "." not in high
        below = str(int(low) - 1) if integral else \
            ("-1" if float(low) == 0 else repr(float(low) / 2))
        above = str(int(high) + 1) if integral else repr(float(high) * 2)
        bad = [below, above] + ([] if integral else ["nan", "inf", "-inf"])
        for value in bad:
            path, res = check_t(workdir, with_value(option, value, is_global))
            assert res.returncode == 1, "%s = %s accepted" % (option, value)
            assert "%s must be between %s and %s" % (option, low, high) in res.stderr, \
                "%s = %s: %s" % (option, value, res.stderr)


def test_every_error_in_one_run(workdir):
    """-t lists every mistake of the file, and a -u USER that does not exist,
    in one run (issue 9 items 13 and 14)."""
    text = BASE.replace('data_file = ""', 'user = "no-such-user-har"') \
        .replace("    check_frequency = 5", "    check_timeout = 1e300") \
        .replace("    failure_mode = all", "    expect_status = {}")
    text = text.replace("dns_listen_port = 5353", "resolver_timeout = inf")
    path = write(workdir, text)
    res = run_hard("-t", "-u", "no-such-user-either", "-c", path)
    assert_error_at(path, res, {2}, r"resolver_timeout")
    assert_error_at(path, res, {3}, r"no such user")
    assert_error_at(path, res, {5}, r"check_timeout")
    assert_error_at(path, res, {12}, r"expect_status")
    assert "-u no-such-user-either: no such user" in res.stderr, res.stderr


def test_unknown_user_option_with_t(workdir):
    path = write(workdir, BASE)
    res = run_hard("-t", "-u", "no-such-user-har", "-c", path)
    assert res.returncode == 1 and "ok" not in res.stdout.split(), res
    assert "no-such-user-har" in res.stderr, res.stderr
    res = run_hard("-t", "-u", "nobody", "-c", path)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_t_matches_start(workdir, upstream):
    """What -t refuses, a start refuses too, with the same FILE:LINE and
    exit 1, before binding anything."""
    body = BASE.split("\n", 3)[3].replace("    check_frequency = 5",
                                         "    check_timeout = 1e300")
    config = harness.hard_config(body, upstream.endpoint, harness.free_port(),
                                 extra='user = "no-such-user-har"\n')
    res = start_and_expect_failure(workdir, config)
    assert re.search(r"fail\.conf:5: user \"no-such-user-har\": no such user",
                     res.stderr), res.stderr
    assert re.search(r"fail\.conf:\d+: check_timeout must be between", res.stderr), \
        res.stderr


def test_missing_config_file(workdir):
    path = os.path.join(workdir, "nope.conf")
    res = run_hard("-t", "-c", path)
    assert res.returncode == 1
    assert path in res.stderr or "nope.conf" in res.stderr
    res = run_hard("-f", "-c", path)
    assert res.returncode == 1 and "nope.conf" in res.stderr


def test_version_and_help():
    res = run_hard("-V")
    assert res.returncode == 0
    assert res.stdout.strip() == "hard 0.1.0"
    res = run_hard("-h")
    assert res.returncode == 0
    assert "-c" in res.stdout + res.stderr
    res = run_hard("-Z")
    assert res.returncode == 1 and res.stderr.strip()


# ------------------------------------------------------------ start-up failures


def start_and_expect_failure(workdir, config, timeout=5):
    path = write(workdir, config, "fail.conf")
    proc = subprocess.Popen([harness.HARD, "-f", "-c", path], text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
        kept_running = False
    except subprocess.TimeoutExpired:
        harness._kill(proc)
        out, err = proc.communicate()
        kept_running = True
    if kept_running:
        pytest.fail("hard kept running instead of failing to start; stderr:\n" + err,
                    pytrace=False)
    res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert res.returncode == 1, "exit %d, stderr %r" % (res.returncode, res.stderr)
    assert res.stderr.strip(), "start-up failure without a message"
    return res


def test_bad_config_at_startup(workdir):
    lines = BASE.split("\n")
    lines[4] = "    check_frequency = -1"
    res = start_and_expect_failure(workdir, "\n".join(lines))
    assert re.search(r"fail\.conf:5: ", res.stderr), res.stderr


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM], ids=["udp", "tcp"])
def test_port_in_use(workdir, upstream, kind):
    port = harness.free_port()
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", port))
        if kind == socket.SOCK_STREAM:
            s.listen(1)
        config = harness.hard_config(BASE.split("\n", 3)[3], upstream.endpoint, port)
        res = start_and_expect_failure(workdir, config)
    assert str(port) in res.stderr, "message should name the port: %r" % res.stderr


def test_no_nameserver_left(workdir):
    port = harness.free_port()
    config = harness.hard_config(BASE.split("\n", 3)[3], "127.0.0.1:%d" % port, port)
    res = start_and_expect_failure(workdir, config)
    assert re.search(r"nameserver|upstream", res.stderr, re.I), res.stderr


def test_sigterm_removes_pidfile(workdir, start_hard, upstream):
    pidfile = os.path.join(workdir, "hard.pid")
    h = start_hard(BASE.split("\n", 3)[3], upstream=upstream,
                   args=("-f", "-p", pidfile))
    assert addresses(h.query("other.example.com", "A"))
    with open(pidfile) as f:
        assert int(f.read().strip()) == h.pid
    h.signal(signal.SIGTERM)
    assert h.proc.wait(5) == 0
    h.expect_exit = True
    assert not os.path.exists(pidfile), "pidfile left behind"


def test_sigint_stops(start_hard, upstream):
    h = start_hard(BASE.split("\n", 3)[3], upstream=upstream)
    h.signal(signal.SIGINT)
    assert h.proc.wait(5) == 0
    h.expect_exit = True


def test_positional_config_starts(workdir, upstream):
    port = harness.free_port()
    config = harness.hard_config(BASE.split("\n", 3)[3], upstream.endpoint, port)
    path = write(workdir, config, "pos.conf")
    proc = subprocess.Popen([harness.HARD, "-f", path], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        r = harness.wait_until(
            lambda: harness.query_at("127.0.0.1", port, "other.example.com", timeout=0.3),
            10, what="hard started with a positional FILE")
        assert addresses(r) == ["127.0.1.9"]
    finally:
        harness._kill(proc)
        proc.stderr.close()
