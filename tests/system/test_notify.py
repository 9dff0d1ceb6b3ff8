"""Readiness (issue 10 item 5): hard speaks the service manager's notify
protocol (sd_notify(3)) on $NOTIFY_SOCKET: READY=1 once it answers,
RELOADING=1 then READY=1 around a reload, STOPPING=1 at stop.  The service
manager here is a datagram socket the test binds, a path or an abstract
name; it reads the sender's credentials as systemd does."""

import os
import pwd
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid

import pytest

import harness
from statehelpers import name_block, pid_alive

A = "127.0.0.2"
B = "127.0.0.3"
UNIT = os.path.join(harness.REPO, "contrib", "har.service")


class Message:
    def __init__(self, text, pid, uid):
        self.text = text
        self.pid = pid
        self.uid = uid
        self.fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def __repr__(self):
        return "<from pid %s uid %s: %r>" % (self.pid, self.uid, self.text)


class NotifyListener:
    """The service manager's end: an AF_UNIX datagram socket receiving
    with SO_PASSCRED, so each message comes with its sender's pid and uid."""

    def __init__(self, address):
        self.address = address	# the value of NOTIFY_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.received = []

    @property
    def env(self):
        return {"NOTIFY_SOCKET": self.address}

    def receive(self, timeout):
        """The next message, or None after timeout seconds."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return None
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = uid = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, uid, _ = struct.unpack("3i", payload[:12])
        message = Message(data.decode(), pid, uid)
        self.received.append(message)
        return message

    def wait_for(self, field, h=None, timeout=5.0):
        """Receives until a message carrying field (e.g. "READY") arrives."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.receive(min(0.1, max(0.0, deadline - time.monotonic())))
            if message and field in message.fields:
                return message
            if h is not None and not h.alive() and message is None:
                raise AssertionError("hard exited (%s) before %s=; received %r; log:\n%s"
                                     % (h.proc.returncode, field, self.received, h.log()))
        raise AssertionError("no %s= within %.1fs; received %r%s" % (
            field, timeout, self.received, "; log:\n" + h.log() if h else ""))

    def drain(self, seconds):
        """Every message that arrives within seconds."""
        got = []
        deadline = time.monotonic() + seconds
        while True:
            message = self.receive(max(0.0, deadline - time.monotonic()))
            if message is None:
                return got
            got.append(message)

    def close(self):
        self.sock.close()


@pytest.fixture
def notify_dir():
    """Short (a socket path has at most 107 bytes) and traversable."""
    d = tempfile.mkdtemp(prefix="har-notify-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def listeners(notify_dir):
    """listeners("path" | "abstract") -> a bound NotifyListener."""
    made = []

    def make(kind="path"):
        if kind == "path":
            address = os.path.join(notify_dir, "notify-%d" % len(made))
        else:
            address = "@har-test-notify-%s" % uuid.uuid4().hex
        listener = NotifyListener(address)
        made.append(listener)
        return listener
    yield make
    for listener in made:
        listener.close()


@pytest.fixture
def up(start_upstream):
    return start_upstream("--host-record=fwd.test,192.0.2.1")


def body(*titles):
    return "".join(name_block(t, [("a", None, "address = { %s }" % A)],
                              check_frequency=30, failure_mode="all")
                   for t in titles)


def first_answer(h, name, tcp=False):
    """One query, no retry: what hard answers at this very moment."""
    r = h.query(name, tcp=tcp, timeout=1.0)
    return harness.addresses(r)


def assert_monotonic_now(message):
    sent = int(message.fields["MONOTONIC_USEC"])
    now = time.monotonic() * 1e6	# CLOCK_MONOTONIC, as hard's
    assert now - 10e6 < sent <= now, (sent, now)


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_ready_once_answering(start_hard, up, listeners, kind):
    """READY=1 comes once, from hard itself (the main process with -f, so
    no MAINPID=), and nothing comes before it; a query sent the moment it
    arrives is answered, over UDP and TCP, and so is a forwarded one."""
    listener = listeners(kind)
    h = start_hard(body("r.test"), upstream=up, wait=False, env=listener.env)
    ready = listener.wait_for("READY", h)
    assert first_answer(h, "r.test") == [A]
    assert first_answer(h, "r.test", tcp=True) == [A]
    assert first_answer(h, "fwd.test") == ["192.0.2.1"]
    assert listener.received == [ready], listener.received
    assert ready.pid == h.pid, ready
    assert ready.fields == {"READY": "1",
                            "STATUS": "answering 1 name on port %d" % h.port}, ready
    assert listener.drain(0.3) == []
    assert h.stop() == 0


def test_reload_says_reloading_then_ready(start_hard, up, listeners):
    """SIGHUP: RELOADING=1 (with MONOTONIC_USEC=, for Type=notify-reload)
    then READY=1 once the new file is in use; a reload that fails still
    ends with READY=1 (the old configuration answers) and says why.
    The unit's `hard -t` before the SIGHUP says nothing."""
    listener = listeners("path")
    h = start_hard(body("r.test"), upstream=up, env=listener.env)
    listener.wait_for("READY", h)
    with open(h.conf, "a") as f:
        f.write(body("new.test"))
    check = harness.run_hard("-t", "-c", h.conf, env=listener.env)
    assert (check.returncode, check.stdout) == (0, "ok\n"), check
    assert listener.drain(0.2) == [], listener.received
    h.signal(signal.SIGHUP)
    reloading = listener.wait_for("RELOADING", h)
    ready = listener.wait_for("READY", h)
    assert first_answer(h, "new.test") == [A]
    assert listener.received[1:] == [reloading, ready], listener.received
    assert reloading.pid == ready.pid == h.pid
    assert_monotonic_now(reloading)
    assert reloading.fields["STATUS"] == "reloading %s" % h.conf, reloading
    assert ready.fields == {"READY": "1",
                            "STATUS": "answering 2 names on port %d" % h.port}, ready

    with open(h.conf, "a") as f:
        f.write("no_such_option = 1\n")
    h.signal(signal.SIGHUP)
    reloading = listener.wait_for("RELOADING", h)
    ready = listener.wait_for("READY", h)
    assert ready.fields["STATUS"] == (
        "reload failed (see the log); still answering 2 names on port %d" % h.port), ready
    assert first_answer(h, "new.test") == [A]
    h.assert_alive()


def test_stop_says_stopping(start_hard, up, listeners):
    """SIGTERM and SIGINT: STOPPING=1, then a clean exit."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        listener = listeners("abstract")
        h = start_hard(body("s.test"), upstream=up, env=listener.env)
        listener.wait_for("READY", h)
        h.signal(sig)
        stopping = listener.wait_for("STOPPING", h)
        assert stopping.fields == {"STOPPING": "1", "STATUS": "stopping"}, stopping
        assert stopping.pid == h.pid
        h.expect_exit = True
        assert h.proc.wait(5) == 0, h.log()
        assert listener.drain(0.2) == []


def test_start_failure_sends_no_ready(workdir, start_hard, up, listeners):
    """A start that fails (the port is taken) exits 1 and never says
    READY=1.  (A data file that cannot be opened no longer stops a start:
    below, and test_start.py.)"""
    listener = listeners("path")
    port = harness.free_port()
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.bind(("127.0.0.1", port))
    try:
        h = start_hard(body("f.test"), upstream=up, wait=False, port=port,
                       env=listener.env)
        h.expect_exit = True
        assert h.proc.wait(10) == 1, h.log()
    finally:
        held.close()
    assert listener.drain(0.3) == [], listener.received
    assert "listen" in h.log(), h.log()


def test_status_says_the_state_is_in_memory_only(workdir, start_hard, up, listeners):
    """A data file that cannot be opened at start (a fifo): READY=1 all the
    same, with a STATUS= that says the state is in memory only and why;
    once the file can be made (the fifo removed), a STATUS= alone says
    hard answers, within the 5 s retry interval (and slack)."""
    listener = listeners("path")
    data_file = os.path.join(workdir, "pipe")
    os.mkfifo(data_file)
    h = start_hard(body("f.test"), upstream=up, wait=False, data_file=data_file,
                   env=listener.env)
    ready = listener.wait_for("READY", h)
    assert ready.fields["STATUS"] == (
        "answering 1 name on port %d; state in memory only, data file: "
        "not a regular file (retrying)" % h.port), ready
    assert first_answer(h, "f.test") == [A]
    os.unlink(data_file)
    status = listener.wait_for("STATUS", h, timeout=15)
    assert status.text == "STATUS=answering 1 name on port %d\n" % h.port, status
    assert os.path.isfile(data_file)


def test_without_notify_socket_nothing_changes(start_hard, up, listeners):
    """Without NOTIFY_SOCKET hard starts, reloads and stops as always,
    with no word of it.  An unusable NOTIFY_SOCKET (not a path nor an
    @name, or nobody listening there) is logged, and hard runs on."""
    h = start_hard(body("n.test"), upstream=up)
    h.signal(signal.SIGHUP)
    harness.wait_until(lambda: "reloaded" in h.log(), 5, what="the reload")
    assert first_answer(h, "n.test") == [A]
    assert h.stop() == 0
    assert "NOTIFY_SOCKET" not in h.log() and "service manager" not in h.log(), h.log()

    h = start_hard(body("n.test"), upstream=up, env={"NOTIFY_SOCKET": ""})
    assert h.stop() == 0
    assert "NOTIFY_SOCKET" not in h.log(), h.log()

    h = start_hard(body("n.test"), upstream=up, env={"NOTIFY_SOCKET": "relative/sock"})
    assert first_answer(h, "n.test") == [A]
    assert h.stop() == 0
    lines = [l for l in h.log().splitlines() if "NOTIFY_SOCKET" in l]
    assert lines == ['hard: NOTIFY_SOCKET="relative/sock" is neither a path nor an '
                     "@abstract name; not telling the service manager anything"], h.log()

    gone = listeners("path")
    gone.close()
    os.unlink(gone.address)
    h = start_hard(body("n.test"), upstream=up, env=gone.env)
    h.signal(signal.SIGHUP)
    harness.wait_until(lambda: "reloaded" in h.log(), 5, what="the reload")
    assert first_answer(h, "n.test") == [A]
    assert h.stop() == 0
    lines = [l for l in h.log().splitlines() if "NOTIFY_SOCKET" in l]
    assert [re.sub(r'"[A-Z]+=1"', "STATE", l) for l in lines] == [
        "hard: cannot tell the service manager STATE on NOTIFY_SOCKET: "
        "No such file or directory"] * 4, h.log()


def test_daemon_mode_names_its_pid(workdir, up, listeners):
    """Without -f the process started exits once the daemon runs; the
    daemon says READY=1 with MAINPID= its own pid (the pid file's): a
    manager that accepts messages from it (systemd: NotifyAccess=all)
    learns which process to follow.  The unit shipped runs hard -f, so
    the process started is the one that stays."""
    listener = listeners("abstract")
    port = harness.free_port()
    pidfile = os.path.join(workdir, "hard.pid")
    conf = os.path.join(workdir, "d.conf")
    with open(conf, "w") as f:
        f.write(harness.hard_config(body("d.test"), up.endpoint, port))
    started = subprocess.Popen([harness.HARD, "-p", pidfile, "-c", conf],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=harness.hard_environment(listener.env))
    pid = None
    try:
        assert started.wait(10) == 0, started.stderr.read()
        ready = listener.wait_for("READY")
        with open(pidfile) as f:
            pid = int(f.read())
        assert pid != started.pid
        assert ready.pid == pid and ready.fields["MAINPID"] == str(pid), ready
        assert listener.received == [ready], listener.received
        assert harness.addresses(harness.query_at("127.0.0.1", port, "d.test",
                                                  timeout=5)) == [A]
        os.kill(pid, signal.SIGTERM)
        stopping = listener.wait_for("STOPPING")
        assert stopping.pid == pid, stopping
        harness.wait_until(lambda: not pid_alive(pid), 5, what="the daemon to stop")
        pid = None
    finally:
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_ready_after_privilege_drop(start_hard, up, listeners):
    """With -u, READY=1 is sent as that user: after the drop, the last
    step of the start that can fail."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start hard as root")
    nobody = pwd.getpwnam("nobody")
    listener = listeners("abstract")	# no file permission to grant nobody
    h = start_hard(body("p.test"), upstream=up, wait=False,
                   args=("-f", "-u", "nobody"), env=listener.env)
    ready = listener.wait_for("READY", h)
    assert (ready.pid, ready.uid) == (h.pid, nobody.pw_uid), ready
    assert first_answer(h, "p.test") == [A]


def unit_settings():
    settings = {}
    with open(UNIT) as f:
        for line in f:
            if "=" in line and not line.startswith("#"):
                key, value = line.strip().split("=", 1)
                settings.setdefault(key, []).append(value)
    return settings


def test_unit_is_type_notify():
    """The unit waits for READY=1 from hard itself (-f: the main process,
    NotifyAccess=main), and orders nss-lookup.target after it, so the host
    counts as able to resolve only once hard answers.  (test_setup.py
    installs it and runs systemd-analyze verify.)"""
    settings = unit_settings()
    assert settings["Type"] == ["notify"]
    assert settings.get("NotifyAccess", ["main"]) == ["main"]
    assert " -f " in settings["ExecStart"][0], settings["ExecStart"]
    assert settings["Before"] == ["nss-lookup.target"]
    assert "nss-lookup.target" in settings["Wants"]
    assert settings["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"


def watchdog_pings(messages):
    return [m for m in messages if m.fields.get("WATCHDOG") == "1"]


def test_watchdog_pings_from_the_loop_and_stop_when_it_hangs(start_hard, up, listeners):
    """WATCHDOG_USEC set (the unit's WatchdogSec=): WATCHDOG=1 alone, from
    hard itself, at half the period; none while the loop cannot turn
    (SIGSTOP), and again once it can."""
    listener = listeners()
    env = dict(listener.env, WATCHDOG_USEC="1000000")
    h = start_hard(body("w.test"), upstream=up, wait=False, env=env)
    listener.wait_for("READY", h)
    first = listener.wait_for("WATCHDOG", h, timeout=5)
    assert first.text == "WATCHDOG=1\n" and first.pid == h.pid, first
    # Half of 1 s: about 6 in 3 s.  The bounds leave room for a slow
    # machine, and catch a ping per loop turn or one per period at most.
    pings = watchdog_pings(listener.drain(3.0))
    assert 3 <= len(pings) <= 9, pings
    h.signal(signal.SIGSTOP)
    try:
        listener.drain(0.2)	# a ping sent just before the stop
        assert watchdog_pings(listener.drain(2.0)) == []
    finally:
        h.signal(signal.SIGCONT)
    listener.wait_for("WATCHDOG", h, timeout=5)
    assert first_answer(h, "w.test") == [A]


@pytest.mark.parametrize("variables", [
    {},
    {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"},
])
def test_no_watchdog_pings_unless_meant_for_hard(start_hard, up, listeners, variables):
    """Without WATCHDOG_USEC, or with a WATCHDOG_PID naming another process
    (a variable hard inherited), hard sends no WATCHDOG=1."""
    listener = listeners()
    h = start_hard(body("n.test"), upstream=up, wait=False,
                   env=dict(listener.env, **variables))
    listener.wait_for("READY", h)
    assert watchdog_pings(listener.drain(1.5)) == []


def test_unit_watchdog_and_endless_restarts():
    """A hung hard is killed by the watchdog, and a failing start is
    retried for ever: no start limit the unit could reach and stay failed."""
    settings = unit_settings()
    assert settings["WatchdogSec"] == ["5s"]
    assert settings["StartLimitIntervalSec"] == ["0"]
    assert settings["Restart"] == ["always"]
