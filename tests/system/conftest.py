"""Fixtures for har's system tests.  Every fixture stops what it started, by
PID, even when the test fails; hard's log is printed on teardown so a
failing test shows it."""

import os
import shutil
import signal
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402


# Tests that load the machine themselves (dnsperf at a steady rate,
# valgrind, a namespace with its own resolvers): `make test` runs the suite
# on several workers (pytest-xdist, --dist loadgroup), and these share one
# group so that only one of them runs at a time; the light tests beside it
# are what a loaded machine looks like, which every test must stand.
HEAVY = (
    "test_load.py::",
    "test_valgrind.py::",
    "test_failsafe.py::",
    "test_reload.py::test_reload_under_load",
    "test_store.py::test_kill_9_under_load",
    "test_stop.py::test_stop_is_quick_on_a_busy_core",
    "test_upstream.py::test_forward_flood_is_bounded",
    "test_upstream_faults.py::test_silent_upstream_load_is_bounded",
)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "xdist_group(name): tests pytest-xdist runs on one worker")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    if not os.access(harness.HARD, os.X_OK):
        skip = pytest.mark.skip(reason="%s not built (run make)" % harness.HARD)
        for item in items:
            item.add_marker(skip)
    for item in items:
        if any(h in item.nodeid for h in HEAVY):
            item.add_marker(pytest.mark.xdist_group("heavy"))


@pytest.fixture
def workdir():
    """A private directory (not pytest's numbered tmp_path, which a concurrent
    pytest run may clean up under our feet)."""
    path = tempfile.mkdtemp(prefix="har-systest-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_upstream(workdir):
    """start_upstream(*dnsmasq_args) -> harness.Upstream (dnsmasq)."""
    started = []

    def start(*records, **kw):
        u = harness.Upstream(workdir, records, **kw)
        started.append(u)
        return u
    yield start
    for u in started:
        u.stop()


@pytest.fixture
def upstream(start_upstream):
    """A dnsmasq with a few records the tests recognise when forwarded."""
    return start_upstream(
        "--host-record=fwd.test,192.0.2.1,2001:db8::1",
        "--host-record=www.test,192.0.2.99",
        "--txt-record=www.test,configured name forwarded",
        "--mx-host=www.test,mail.test,10",
        "--txt-record=txt.test,hello world",
    )


@pytest.fixture
def silent_upstream():
    s = harness.SilentUpstream()
    yield s
    s.stop()


@pytest.fixture
def start_hard(workdir):
    """start_hard(body, upstream=..., listen=..., extra=..., data_file=...,
    wait=True, nofile=None, env=None) -> harness.Hard, already answering.
    upstream is an Upstream, an endpoint string, or a list of endpoint
    strings; nofile a (soft, hard) RLIMIT_NOFILE to start hard with; env
    variables added to hard's environment."""
    started = []

    def start(body="", upstream=None, listen=("127.0.0.1",), extra="",
              data_file="", wait=True, port=None, args=("-f", "-d"),
              nofile=None, env=None):
        if upstream is None:
            raise ValueError("hard must always be given a loopback upstream")
        if hasattr(upstream, "endpoint"):
            upstream = upstream.endpoint

        def start_on(chosen):
            config = harness.hard_config(body, upstream, chosen, listen,
                                         data_file, extra)
            h = harness.Hard(workdir, config, listen, chosen, args, nofile, env)
            started.append(h)
            if not wait:
                return h
            try:
                return h.wait_ready()
            except AssertionError:
                if port_taken(h):
                    h.expect_exit = True
                raise

        def port_taken(h):
            return not h.alive() and "Address already in use" in h.log()

        return harness.on_free_port(port, listen, start_on,
                                    lambda e: port_taken(started[-1]))
    yield start
    crashed = []
    for h in started:
        if not h.alive() and not h.expect_exit and h.proc.returncode is not None \
                and h.proc.returncode < 0 and h.proc.returncode != -signal.SIGTERM:
            crashed.append(h)
        h.stop()
        print("---- hard log (port %d, exit %s) ----\n%s" % (
            h.port, h.proc.returncode, h.log()[-20000:]))
    if crashed:
        pytest.fail("hard crashed (signal %d); log:\n%s" % (
            -crashed[0].proc.returncode, crashed[0].log()[-4000:]))
    # Under SANITIZE=1 an error or a leak found at exit is a failure too.
    for h in started:
        log = h.log()
        for mark in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                     "runtime error:"):
            if mark in log:
                at = log.index(mark)
                pytest.fail("sanitizer report from hard (port %d):\n%s" % (
                    h.port, log[max(0, at - 200):at + 4000]))


@pytest.fixture
def start_http(workdir):
    """start_http(addr, port=None, status=200, delay=0, cert=None, key=None)
    -> harness.HTTPServer."""
    started = []

    def start(addr="127.0.0.2", **kw):
        s = harness.HTTPServer(workdir, addr, **kw)
        started.append(s)
        return s
    yield start
    for s in started:
        s.stop()


@pytest.fixture
def start_listener():
    """start_listener(addr, kind='accept'|'hang') -> a raw TCP listener."""
    started = []

    def start(addr="127.0.0.2", kind="accept", **kw):
        cls = harness.AcceptingServer if kind == "accept" else harness.HangingServer
        s = cls(addr, **kw)
        started.append(s)
        return s
    yield start
    for s in started:
        s.close()


@pytest.fixture
def start_scripted_upstream():
    """start_scripted_upstream(addr=..., address=..., silent=False)
    -> harness.ScriptedUpstream."""
    started = []

    def start(**kw):
        s = harness.ScriptedUpstream(**kw)
        started.append(s)
        return s
    yield start
    for s in started:
        s.stop()


@pytest.fixture
def shared_dir():
    """A directory others can traverse (pytest's own are root-only 0700),
    for a hard that runs as nobody."""
    d = tempfile.mkdtemp(prefix="har-shared-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)
