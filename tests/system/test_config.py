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
    ca_file = "/etc/ssl/certs/ca-certificates.crt"
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


def test_repo_example_config_ok():
    path = os.path.join(harness.REPO, "har.conf.example")
    if not os.path.exists(path):
        pytest.skip("no har.conf.example yet")
    res = run_hard("-t", "-c", path)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


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
                 "syntax-error": {9}}.get(case, set())
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


def test_unreadable_data_file_fails_start(workdir, upstream):
    """An existing data file hard may not read stops start-up (SPEC 2)."""
    path = write(workdir, "", "har.db")
    os.chmod(path, 0)
    os.chmod(workdir, 0o755)	# the config itself stays readable
    config = harness.hard_config(BASE.split("\n", 3)[3], upstream.endpoint,
                                 harness.free_port(), data_file=path)
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534",
                           "--clear-groups", harness.HARD, "-f", "-c",
                           write(workdir, config, "fail.conf")],
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode == 1, proc.stderr
    assert "har.db" in proc.stderr, proc.stderr


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
            5, what="hard started with a positional FILE")
        assert addresses(r) == ["127.0.1.9"]
    finally:
        harness._kill(proc)
        proc.stderr.close()
