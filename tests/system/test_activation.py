"""Socket activation (issue 17, item 2): restarts and upgrades lose no
query.

The service manager here is the test itself, as systemd is for
contrib/har.socket: it binds the listening sockets, holds them for as long
as it runs, and starts hard with them as descriptors 3, 4, ...
(LISTEN_FDS, LISTEN_FDNAMES, and LISTEN_PID set to hard's own pid by a
`sh` that then execs hard), stopping and starting it again as `systemctl
restart` does.  While hard restarts, the kernel holds the queries in the
sockets it holds, and the next hard answers them."""

import fcntl
import os
import pwd
import re
import select
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

import harness
from statehelpers import name_block

A = "127.0.0.2"
BODY = name_block("a.test", [("a", None, "address = { %s }" % A)],
                  check_frequency=30, failure_mode="all")
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
RECEIVE_BUFFER = 4 << 20	# har.socket's ReceiveBuffer=
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def bound(kind, addr, port):
    """A listening socket as systemd makes one for ListenDatagram= (kind
    SOCK_DGRAM) or ListenStream= (SOCK_STREAM)."""
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, kind)
    if kind == socket.SOCK_STREAM:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    else:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    s.bind((addr, port))
    if kind == socket.SOCK_STREAM:
        s.listen(socket.SOMAXCONN)
    return s


def endpoint_sockets(addr, port):
    return [bound(socket.SOCK_DGRAM, addr, port), bound(socket.SOCK_STREAM, addr, port)]


class ServiceManager:
    """Holds sockets and runs hard with them, one hard at a time."""

    def __init__(self, workdir, conf, sockets, prefix=(), listen_pid=None):
        self.workdir, self.conf = workdir, conf
        self.sockets = list(sockets)
        self.prefix = list(prefix)
        self.listen_pid = listen_pid	# None: hard's own
        self.pid = None
        self.status = None
        self.starts = 0
        self.logfiles = []

    def log(self):
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()
        except (AttributeError, OSError):
            return ""

    def start(self):
        """Like systemd: the sockets at 3, 4, ..., and LISTEN_PID the pid
        of the process that execs hard (sh's $$).  Copies above 100 first,
        so that no socket is overwritten while they are moved into place."""
        assert self.pid is None
        self.starts += 1
        self.logfile = os.path.join(self.workdir, "hard-activated-%d.log" % self.starts)
        self.logfiles.append(self.logfile)
        log = os.open(self.logfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC)
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 100) for s in self.sockets]
        actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, log, 1),
                   (os.POSIX_SPAWN_DUP2, log, 2)]
        actions += [(os.POSIX_SPAWN_DUP2, fd, 3 + i) for i, fd in enumerate(high)]
        env = harness.hard_environment({"LISTEN_FDS": str(len(self.sockets)),
                                        "LISTEN_FDNAMES": ":".join(
                                            "har.socket" for _ in self.sockets)})
        pid_text = "$$" if self.listen_pid is None else str(self.listen_pid)
        argv = ["sh", "-c", 'LISTEN_PID=%s; export LISTEN_PID; exec "$0" "$@"' % pid_text,
                *self.prefix, harness.HARD, "-f", "-d", "-c", self.conf]
        try:
            self.pid = os.posix_spawnp("sh", argv, env, file_actions=actions)
        finally:
            for fd in high + [log, null]:
                os.close(fd)
        return self

    def alive(self):
        if self.pid is None:
            return False
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return True
        self.status, self.pid = os.waitstatus_to_exitcode(status), None
        return False

    def wait_answering(self, timeout=20):
        """Until this start's hard has logged that it answers."""
        harness.wait_until(lambda: not self.alive() or " answering " in self.log(),
                           timeout, what="hard to start answering")
        assert self.alive(), "hard exited %s:\n%s" % (self.status, self.log())
        return self

    def stop(self, timeout=20):
        """SIGTERM, and the exit status once it is gone."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.alive():
                if time.monotonic() > deadline:
                    os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    self.pid = None
                    raise AssertionError("hard did not stop within %d s" % timeout)
                time.sleep(0.01)
        return self.status


    def close(self):
        if self.pid is not None:
            try:
                self.stop()
            except AssertionError:
                pass
        for s in self.sockets:
            s.close()


@pytest.fixture
def managers(workdir):
    """managers(conf, sockets, ...) -> a started ServiceManager; every one
    is stopped and its sockets closed at the end."""
    made = []

    def make(conf, sockets, **kw):
        m = ServiceManager(workdir, conf, sockets, **kw)
        made.append(m)
        return m.start()
    yield make
    for m in made:
        m.close()
        print("---- activated hard (start %d) ----\n%s" % (m.starts, m.log()[-6000:]))
    # Under SANITIZE=1 an error or a leak found at exit is a failure, as
    # for the hards of the start_hard fixture.
    for m in made:
        for path in m.logfiles:
            with open(path, errors="replace") as f:
                log = f.read()
            for mark in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
                if mark in log:
                    pytest.fail("sanitizer report from hard (%s):\n%s" % (
                        path, log[log.index(mark) - 200:][:4000]))


def write_conf(path, upstream, port, listen=("127.0.0.1",), body=BODY):
    with open(path, "w") as f:
        f.write(harness.hard_config(body, upstream.endpoint, port, listen))
    os.chmod(path, 0o644)
    return path


class UdpClient:
    """Sends one query every `pause` seconds from one socket, each with
    its own ID, and records which were answered."""

    def __init__(self, addr, port, name="a.test", pause=0.002):
        self.target = (addr, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.wires = {}
        for qid in range(1, 20000):	# 40 s at 500 a second
            self.wires[qid] = harness.make_query(name, qid=qid).to_wire()
        self.sent, self.answered = [], set()
        self.pause = pause
        self.sending = threading.Event()
        self.sending.set()
        self.sender = threading.Thread(target=self._send, daemon=True)
        self.receiver = threading.Thread(target=self._receive, daemon=True)
        self.receiver.start()
        self.sender.start()

    def _send(self):
        qid = 1
        while self.sending.is_set() and qid in self.wires:
            self.sock.sendto(self.wires[qid], self.target)
            self.sent.append(qid)
            qid += 1
            time.sleep(self.pause)

    def _receive(self):
        while True:
            try:
                r, _, _ = select.select([self.sock], [], [], 0.2)
                if r:
                    data = self.sock.recv(4096)
                    self.answered.add(struct.unpack("!H", data[:2])[0])
            except (OSError, ValueError):
                return

    def finish(self, timeout=20):
        """Stops sending, waits up to timeout for the answers still due,
        and returns the IDs never answered."""
        self.sending.clear()
        self.sender.join(5)
        deadline = time.monotonic() + timeout
        while not set(self.sent) <= self.answered and time.monotonic() < deadline:
            time.sleep(0.05)
        return sorted(set(self.sent) - self.answered)

    def close(self):
        self.sock.close()


def test_restarts_under_a_service_manager_lose_no_query(workdir, managers, upstream):
    """Three restarts while a client sends 500 queries a second, each
    with at least 50 queries sent while no hard runs: every query is
    answered (those sent meanwhile, by the next hard), and the TCP socket
    answers too."""
    port = harness.free_port()
    conf = write_conf(os.path.join(workdir, "har.conf"), upstream, port)
    m = managers(conf, endpoint_sockets("127.0.0.1", port)).wait_answering()
    client = UdpClient("127.0.0.1", port)
    try:
        harness.wait_until(lambda: len(client.answered) >= 100, 20, what="answers")
        for _ in range(3):
            assert m.stop() == 0, m.log()
            stopped = len(client.sent)
            harness.wait_until(lambda: len(client.sent) >= stopped + 50, 20,
                               what="queries sent while hard is stopped")
            m.start().wait_answering()
            started = len(client.sent)
            harness.wait_until(lambda: len(client.sent) >= started + 100, 20,
                               what="queries to the restarted hard")
        lost = client.finish()
        assert lost == [], "%d of %d queries unanswered across 3 restarts" % (
            len(lost), len(client.sent))
    finally:
        client.close()
    assert harness.addresses(harness.query_at("127.0.0.1", port, "a.test", tcp=True)) == [A]
    assert m.stop() == 0


def privileged_free_port(addr="127.0.0.1"):
    """A port below 1024 (not 53) that nothing uses on addr, for UDP and TCP."""
    for port in range(1023, 600, -1):
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind((addr, port))
            return port
        except OSError:
            continue
    pytest.skip("no free port below 1024 on %s" % addr)


def test_unprivileged_hard_answers_on_sockets_it_could_not_bind(
        workdir, managers, upstream):
    """As nobody, without CAP_NET_BIND_SERVICE, hard cannot bind a port
    below 1024; with the sockets passed it answers there, UDP and TCP."""
    if os.geteuid() != 0:
        pytest.skip("needs root to bind a port below 1024 and to become nobody")
    port = privileged_free_port()
    os.chmod(workdir, 0o755)	# nobody reads the configuration
    conf = write_conf(os.path.join(workdir, "har.conf"), upstream, port)
    r = subprocess.run([*AS_NOBODY, harness.HARD, "-f", "-c", conf],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=20, env=harness.hard_environment())
    assert r.returncode == 1 and "Permission denied" in r.stderr, r.stderr
    m = managers(conf, endpoint_sockets("127.0.0.1", port), prefix=AS_NOBODY)
    m.wait_answering()
    with open("/proc/%d/status" % m.pid) as f:
        uid = [line.split()[1] for line in f if line.startswith("Uid:")][0]
    assert int(uid) == pwd.getpwnam("nobody").pw_uid
    assert harness.addresses(harness.query_at("127.0.0.1", port, "a.test")) == [A]
    assert harness.addresses(harness.query_at("127.0.0.1", port, "a.test", tcp=True)) == [A]
    assert m.stop() == 0, m.log()


def reload(m, conf, text):
    with open(conf, "w") as f:
        f.write(text)
    reloads = m.log().count("reloaded ")
    os.kill(m.pid, signal.SIGHUP)
    harness.wait_until(lambda: m.log().count("reloaded ") + m.log().count("reload of ")
                       > reloads, 20, what="the reload to end")
    assert "reload of" not in m.log().split("SIGHUP")[-1], m.log()[-3000:]


def test_sockets_no_listener_matches_and_listeners_without_a_socket(
        workdir, managers, upstream):
    """Passed: UDP and TCP on the configured 127.0.0.1:P, UDP on
    127.0.0.1:Q (no listener), and a Unix socket (not UDP or TCP).  hard
    binds the listener no socket was passed for (127.0.0.3:P) itself,
    closes the Unix socket and keeps the UDP one on Q, unread, both
    logged; a reload to port Q takes it (and binds Q's TCP itself), and a
    reload back to P takes P's sockets again, which the first reload had
    given back: the manager still holds them, so they could not be bound."""
    p, q = harness.free_port("127.0.0.1", "127.0.0.3"), harness.free_port("127.0.0.1", "127.0.0.3")
    conf = os.path.join(workdir, "har.conf")
    listen = ("127.0.0.1", "127.0.0.3")
    write_conf(conf, upstream, p, listen)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(os.path.join(workdir, "unix.sock"))
    extra = bound(socket.SOCK_DGRAM, "127.0.0.1", q)
    m = managers(conf, endpoint_sockets("127.0.0.1", p) + [extra, unix]).wait_answering()
    for addr in listen:
        for tcp in (False, True):
            assert harness.addresses(harness.query_at(addr, p, "a.test", tcp=tcp)) == [A]
    log = m.log()
    assert re.search(r"descriptor 6 \(har\.socket\): not a UDP or TCP socket on an IP "
                     r"address; closed", log), log
    assert re.search(r"socket 127\.0\.0\.1:%d \(UDP, har\.socket\) passed by the service "
                     r"manager is not a configured listener .*: kept open but not read"
                     % q, log), log
    held = harness.socket_inodes(m.pid)
    assert os.fstat(extra.fileno()).st_ino in held, "the unmatched UDP socket was closed"
    assert os.fstat(unix.fileno()).st_ino not in held, "the Unix socket was kept"
    # to Q: the passed UDP socket, and a TCP socket of hard's own
    reload(m, conf, harness.hard_config(BODY, upstream.endpoint, q, listen))
    for addr in listen:
        for tcp in (False, True):
            assert harness.addresses(harness.query_at(addr, q, "a.test", tcp=tcp)) == [A]
    # back to P: the sockets given back at the first reload
    reload(m, conf, harness.hard_config(BODY, upstream.endpoint, p, listen))
    for tcp in (False, True):
        assert harness.addresses(harness.query_at("127.0.0.1", p, "a.test", tcp=tcp)) == [A]
    assert m.stop() == 0, m.log()


def fd_flags(pid, fd):
    with open("/proc/%d/fdinfo/%d" % (pid, fd)) as f:
        for line in f:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    raise AssertionError("no flags for fd %d of %d" % (fd, pid))


def test_passed_sockets_are_not_inherited(workdir, managers, upstream):
    """hard marks the sockets it takes close-on-exec, so no program it
    might start inherits them; sockets whose LISTEN_PID names another
    process are not hard's: it leaves them alone and binds its own."""
    port = harness.free_port()
    conf = write_conf(os.path.join(workdir, "har.conf"), upstream, port)
    m = managers(conf, endpoint_sockets("127.0.0.1", port)).wait_answering()
    for fd in (3, 4):
        assert fd_flags(m.pid, fd) & os.O_CLOEXEC, "descriptor %d inherited on exec" % fd
    assert m.stop() == 0
    other = harness.free_port()
    conf2 = write_conf(os.path.join(workdir, "other.conf"), upstream, other)
    m2 = managers(conf2, endpoint_sockets("127.0.0.1", harness.free_port()),
                  listen_pid=1).wait_answering()
    assert harness.addresses(harness.query_at("127.0.0.1", other, "a.test")) == [A]
    for fd in (3, 4):
        assert not fd_flags(m2.pid, fd) & os.O_CLOEXEC, "another process's socket taken"
    assert "passed by the service manager" not in m2.log(), m2.log()
    assert m2.stop() == 0


def unit_lines(name):
    with open(os.path.join(harness.REPO, "contrib", name)) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def test_socket_unit_passes_what_hard_listens_on_by_default():
    """contrib/har.socket: UDP and TCP on hard's default listeners
    (127.0.0.1 and ::1, port 53), a receive buffer for a restart's worth
    of queries, for har.service; har.service pulls it in and starts after
    it, and works without it (Wants=, not Requires=).  test_setup.py runs
    systemd-analyze verify on both."""
    socket_unit = unit_lines("har.socket")
    for listen in ("ListenDatagram=127.0.0.1:53", "ListenStream=127.0.0.1:53",
                   "ListenDatagram=[::1]:53", "ListenStream=[::1]:53",
                   "ReceiveBuffer=4M", "Service=har.service", "WantedBy=sockets.target"):
        assert listen in socket_unit, listen
    service = unit_lines("har.service")
    for line in ("Wants=har.socket", "After=har.socket", "Also=har.socket"):
        assert line in service, line
    assert not [line for line in service if line.startswith("Requires=")], service
