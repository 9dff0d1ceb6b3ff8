"""Helpers for har's system tests: the real hard, dnsmasq as upstream, HTTP
servers, all on loopback.  Every process is started and stopped by PID."""

import json
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import time

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
HARD = os.path.abspath(os.environ.get("HARD") or os.path.join(REPO, "hard"))
PYTHON = "/usr/bin/python3"
DNSMASQ = "/usr/sbin/dnsmasq"

# Every program the system tests run, with the Debian package that brings
# it.  `contrib/install-deps test` must install each (test_setup.py checks
# this table against the tests and against dpkg), so that on a fresh
# machine no test fails or is skipped for want of a program.
PROGRAMS = {
    "dnsmasq": "dnsmasq-base",	# the program alone: no system service
    "python3": "python3",
    "sqlite3": "sqlite3",
    "openssl": "openssl",
    "mandoc": "mandoc",
    "groff": "groff-base",
    "man": "man-db",
    "valgrind": "valgrind",
    "dnsperf": "dnsperf",
    "setpriv": "util-linux",
    "unshare": "util-linux",
    "ip": "iproute2",
    "getent": "libc-bin",
    "mount": "mount",
    "umount": "mount",
    "true": "coreutils",
    "make": "make",
    "systemd-analyze": "systemd",
    "dpkg-query": "dpkg",
    "sh": "dash",
    # failsafe.py (test_failsafe.py): namespaces, glibc's and musl's resolvers
    "unshare": "util-linux",
    "ip": "iproute2",
    "getent": "libc-bin",
    "musl-gcc": "musl-tools",
}
# The Python modules they import beyond the standard library, likewise.
PYTHON_MODULES = {
    "dns": "python3-dnspython",
    "pytest": "python3-pytest",
    "xdist": "python3-pytest-xdist",
    "prometheus_client": "python3-prometheus-client",
}


def socket_inodes(pid):
    """The inodes of the sockets process pid has open."""
    found = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def wait_until(predicate, timeout=5.0, interval=0.02, what="condition"):
    """Polls predicate until it returns a true value (returned), or fails."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - polled predicates may raise
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s%s" % (
                timeout, what, " (last error: %r)" % last_exc if last_exc else ""))
        time.sleep(interval)


def _family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def free_port(*addrs):
    """A port free for UDP and TCP on every address given."""
    addrs = addrs or ("127.0.0.1",)
    for _ in range(50):
        with socket.socket(_family(addrs[0]), socket.SOCK_STREAM) as s:
            s.bind((addrs[0], 0))
            port = s.getsockname()[1]
        try:
            held = []
            for a in addrs:
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    t = socket.socket(_family(a), kind)
                    held.append(t)
                    t.bind((a, port))
            return port
        except OSError:
            continue
        finally:
            for t in held:
                t.close()
    raise RuntimeError("no free port")


def dead_port(addr="127.0.0.1"):
    """A port with nothing listening (TCP connect is refused, a UDP query
    gets ICMP port unreachable).  It is below the kernel's ephemeral range,
    so no client socket of a test (nor of hard) can take it later and start
    receiving what is sent there."""
    import random
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    if low <= 10000:
        return free_port(addr)
    for _ in range(200):
        port = random.randrange(low // 2, min(low, 30000))
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(_family(addr), kind) as s:
                    s.bind((addr, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port below the ephemeral range")


def _fmt(addr, port):
    return "[%s]:%d" % (addr, port) if ":" in addr else "%s:%d" % (addr, port)


def on_free_port(given, addr, start, taken):
    """start(port) on the given port, or on one free_port finds.  A port
    free_port found may be taken before the process binds it (by any
    process's client socket): then up to two more, when taken(error) says
    that is why start failed."""
    for attempt in range(1 if given else 3):
        try:
            return start(given or free_port(*addr))
        except AssertionError as e:
            if given or attempt == 2 or not taken(e):
                raise


def _kill(proc, sig=signal.SIGTERM, timeout=5.0):
    if proc is None or proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------ DNS


def make_query(name, rdtype="A", edns=-1, payload=1232, rd=True, qid=None):
    q = dns.message.make_query(name, rdtype)
    if edns is None or edns < 0:
        q.use_edns(False)
    else:
        q.use_edns(edns, payload=payload)
    if not rd:
        q.flags &= ~dns.flags.RD
    if qid is not None:
        q.id = qid
    return q


def query_at(addr, port, name, rdtype="A", tcp=False, edns=-1, payload=1232,
             rd=True, qid=None, timeout=2.0):
    """Sends one query; returns the response (dns.message.Message)."""
    q = make_query(name, rdtype, edns, payload, rd, qid)
    if tcp:
        r = dns.query.tcp(q, addr, port=port, timeout=timeout)
    else:
        r = dns.query.udp(q, addr, port=port, timeout=timeout,
                          raise_on_truncation=False)
    assert r.id == q.id, "response ID %d != query ID %d" % (r.id, q.id)
    return r


def addresses(response, rdtype="A"):
    """The addresses of the answer section, in answer order."""
    t = dns.rdatatype.from_text(rdtype)
    return [rd.address for rrset in response.answer if rrset.rdtype == t
            for rd in rrset]


def rcode_text(response):
    return dns.rcode.to_text(response.rcode())


def answer(h, name, rdtype="A", tcp=False, port=None, timeout=2.0):
    """Sorted addresses when NOERROR, else the rcode's name."""
    if port is None:
        r = h.query(name, rdtype, tcp=tcp, timeout=timeout)
    else:
        r = query_at(h.addr, port, name, rdtype, tcp, timeout=timeout)
    rcode = rcode_text(r)
    return sorted(addresses(r, rdtype)) if rcode == "NOERROR" else rcode


def wait_answer(h, name, expected, rdtype="A", timeout=5.0):
    """Polls until the answer is expected; returns the seconds it took."""
    t0 = time.monotonic()
    seen = []
    while True:
        try:
            got = answer(h, name, rdtype)
        except dns.exception.Timeout:
            # A slow start or a loaded machine; the deadline still holds.
            got = "no reply"
        if not seen or seen[-1] != got:
            seen.append(got)
        if got == expected:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            h.assert_alive()
            raise AssertionError("%s %s: wanted %s within %.1fs; answers seen: %s"
                                 % (name, rdtype, expected, timeout, seen))
        time.sleep(0.02)


def udp_exchange(addr, port, payload, timeout=0.5):
    """Sends raw bytes over UDP; returns the reply bytes or None."""
    with socket.socket(_family(addr), socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, (addr, port))
        try:
            return s.recvfrom(65535)[0]
        except socket.timeout:
            return None


def tcp_connect(addr, port, timeout=2.0):
    s = socket.create_connection((addr, port), timeout=timeout)
    return s


def tcp_send(sock, wire):
    sock.sendall(struct.pack("!H", len(wire)) + wire)


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return buf


def tcp_recv(sock):
    """Reads one length-prefixed DNS message and parses it."""
    (length,) = struct.unpack("!H", recv_exact(sock, 2))
    return dns.message.from_wire(recv_exact(sock, length))


def closed_by_peer(sock, timeout=0.0):
    """True when the peer has closed sock (EOF or reset) within timeout."""
    r, _, _ = select.select([sock], [], [], timeout)
    if not r:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except BlockingIOError:
        return False


# ------------------------------------------------------------------ hard


class Hard:
    def __init__(self, workdir, config, listen, port, args=("-f", "-d"),
                 nofile=None, env=None):
        """nofile: (soft, hard) RLIMIT_NOFILE to start hard with; env:
        variables to add to its environment (e.g. NOTIFY_SOCKET)."""
        self.workdir = workdir
        self.listen = list(listen)
        self.addr = self.listen[0]
        self.port = port
        self.conf = os.path.join(workdir, "har-%d.conf" % port)
        self.logfile = os.path.join(workdir, "hard-%d.log" % port)
        with open(self.conf, "w") as f:
            f.write(config)
        self.config = config
        self.expect_exit = False
        limit = None
        if nofile is not None:
            def limit():
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
        environment = hard_environment(env)
        with open(self.logfile + ".out", "w") as out, open(self.logfile, "w") as err:
            self.proc = subprocess.Popen([HARD, *args, "-c", self.conf],
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err, cwd=workdir,
                                         preexec_fn=limit, env=environment)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def log(self):
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_ready(self, timeout=10.0):
        def ready():
            if not self.alive():
                raise AssertionError(
                    "hard exited with status %s during start-up; config:\n%s\nlog:\n%s"
                    % (self.proc.returncode, self.config, self.log()))
            for a in self.listen:
                with socket.socket(_family(a), socket.SOCK_STREAM) as s:
                    s.settimeout(0.2)
                    if s.connect_ex((a, self.port)) != 0:
                        return False
            return True
        try:
            wait_until(ready, timeout, what="hard to listen on port %d" % self.port)
        except AssertionError as e:
            if "exited" in str(e):
                raise
            raise AssertionError("%s\nlog:\n%s" % (e, self.log())) from None
        # Listening is not yet running the loop: wait (briefly) for a reply
        # hard makes itself, FORMERR to a question-less query.  The tests
        # check that reply on their own; here it only means "loop running".
        probe = struct.pack("!6H", 0xFEED, 0x0100, 0, 0, 0, 0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            if udp_exchange(self.addr, self.port, probe, 0.1) is not None:
                return self
        self.assert_alive()
        raise AssertionError("hard listens on port %d but did not reply "
                             "within %.0f s; log:\n%s"
                             % (self.port, timeout, self.log()))

    def query(self, name, rdtype="A", tcp=False, addr=None, **kw):
        return query_at(addr or self.addr, self.port, name, rdtype, tcp, **kw)

    def udp_raw(self, payload, timeout=0.5, addr=None):
        return udp_exchange(addr or self.addr, self.port, payload, timeout)

    def tcp(self, addr=None, timeout=2.0):
        return tcp_connect(addr or self.addr, self.port, timeout)

    def rss_kib(self):
        """Resident memory (VmRSS) in KiB."""
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS for process %d" % self.pid)

    def cpu_seconds(self):
        """User plus system CPU time used so far."""
        with open("/proc/%d/stat" % self.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def nofile_limit(self):
        """The (soft, hard) open file limit of the running process."""
        return resource.prlimit(self.pid, resource.RLIMIT_NOFILE)

    def open_descriptors(self):
        return len(os.listdir("/proc/%d/fd" % self.pid))

    def limit_descriptors(self, spare):
        """Lowers the running process's open file limit (soft and hard) to
        the descriptors it has open now plus spare, under its feet: what it
        made of the limit at start no longer holds.  Returns the limit."""
        limit = self.open_descriptors() + spare
        resource.prlimit(self.pid, resource.RLIMIT_NOFILE, (limit, limit))
        return limit

    def assert_alive(self):
        assert self.alive(), "hard died (status %s); log:\n%s" % (
            self.proc.returncode, self.log()[-4000:])

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def stop(self, timeout=5.0):
        """SIGTERM; returns the exit status."""
        if self.proc.poll() is None:
            self.expect_exit = True
            _kill(self.proc, signal.SIGTERM, timeout)
        return self.proc.returncode


def hard_config(body, upstream, port, listen=("127.0.0.1",), data_file="",
                extra=""):
    """A complete configuration: the globals the tests always need, then body.
    upstream is an "IP:PORT" string or a list of them.  A cold start holds
    its listeners for its first round of checks (first_round_wait, 1 s):
    the tests start hard hundreds of times, each waiting for its first
    reply, so they answer at once unless extra or body sets it (the tests
    of the hold itself, in test_start.py).  Likewise data_file_interval is
    0.5 s and data_file_bytes_per_check 0 unless set (the defaults, 60 s
    and 150, are test_disk.py's)."""
    if isinstance(upstream, str):
        upstream = [upstream]
    # Last, so that the lines the tests name keep their numbers.
    hold = "" if "first_round_wait" in extra + body else "\nfirst_round_wait = 0\n"
    # The data file gets check results and counters every half second (by
    # default every minute), as the tests that read them were written for;
    # test_disk.py tests the interval itself.  On the data_file line: a
    # test's reload that keeps the head of the file keeps it too.
    interval = "" if "data_file_interval" in extra + body else \
        " data_file_interval = 0.5"
    # ... and at that interval, whatever the checks have earned of the disk
    # budget (data_file_bytes_per_check, test_disk.py's too).
    if "data_file_bytes_per_check" not in extra + body:
        interval += " data_file_bytes_per_check = 0"
    return (
        "nameservers = { %s }\n" % ", ".join('"%s"' % u for u in upstream)
        + "dns_bind_interfaces = { %s }\n" % ", ".join('"%s"' % a for a in listen)
        + "dns_listen_port = %d\n" % port
        + 'data_file = "%s"%s\n' % (data_file, interval)
        + extra + "\n" + body + hold)


def hard_environment(env=None):
    """The tests' environment for hard, plus env; never a NOTIFY_SOCKET
    the tests themselves were given (a service manager's, if any)."""
    environment = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    environment.update(env or {})
    return environment


def run_hard(*args, timeout=10, env=None):
    """Runs hard to completion (e.g. -t, -V); returns CompletedProcess."""
    return subprocess.run([HARD, *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout,
                          env=hard_environment(env))


# ------------------------------------------------------------------ dnsmasq


class Upstream:
    """dnsmasq answering .test names from its own records (NXDOMAIN for any
    other .test name, REFUSED for names outside .test)."""

    def __init__(self, workdir, records=(), addr="127.0.0.1", ttl=77, port=None):
        self.addr = addr
        self.workdir, self.records, self.ttl = workdir, records, ttl
        on_free_port(port, (addr,), self._start,
                     lambda e: "in use" in self.log())

    def _start(self, port):
        self.port = port
        self.logfile = os.path.join(self.workdir, "dnsmasq-%d.log" % port)
        args = [DNSMASQ, "-k", "--conf-file=/dev/null", "--user=root",
                "--pid-file=", "--port=%d" % port,
                "--listen-address=%s" % self.addr, "--bind-interfaces",
                "--no-resolv", "--no-hosts", "--local=/test/",
                "--local-ttl=%d" % self.ttl, "--log-queries", "--log-facility=-"]
        args += list(self.records)
        with open(self.logfile, "a") as err:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_until(lambda: self._probe(), 10, what="dnsmasq to answer")
        except AssertionError:
            _kill(self.proc)
            raise

    def _probe(self):
        if self.proc.poll() is not None:
            raise AssertionError("dnsmasq exited: %s" % self.log())
        self.query("probe.test", timeout=0.3)
        return True

    @property
    def endpoint(self):
        return _fmt(self.addr, self.port)

    def query(self, name, rdtype="A", tcp=False, **kw):
        return query_at(self.addr, self.port, name, rdtype, tcp, **kw)

    def log(self):
        with open(self.logfile, errors="replace") as f:
            return f.read()

    def stop(self):
        _kill(self.proc)


class SilentUpstream:
    """A UDP socket that receives queries and never answers."""

    def __init__(self, addr="127.0.0.1"):
        self.addr = addr
        self.sock = socket.socket(_family(addr), socket.SOCK_DGRAM)
        self.sock.bind((addr, 0))
        self.port = self.sock.getsockname()[1]
        self.endpoint = _fmt(addr, self.port)

    def stop(self):
        self.sock.close()


# ------------------------------------------------------------------ HTTP


class HTTPServer:
    """tests/system/httpserver.py in a subprocess.  status and delay can be
    changed while it runs (through a control file read on each request);
    stop() and start() kill and restart it on the same address and port."""

    def __init__(self, workdir, addr, port=None, status=200, delay=0.0,
                 cert=None, key=None, sni_certs=None):
        self.addr = addr
        self.workdir = workdir
        self.cert, self.key = cert, key
        self.sni_certs = sni_certs or {}  # host: (cert, key), chosen by SNI
        self.proc = None
        on_free_port(port, (addr,), lambda p: self._first_start(p, status, delay),
                     lambda e: "in use" in str(e))

    def _first_start(self, port, status, delay):
        self.port = port
        tag = "%s-%d" % (self.addr.replace(":", "_"), port)
        self.control = os.path.join(self.workdir, "http-%s.ctl" % tag)
        self.requests = os.path.join(self.workdir, "http-%s.requests" % tag)
        self.logfile = os.path.join(self.workdir, "http-%s.log" % tag)
        self.set(status=status, delay=delay)
        self.start()

    @property
    def url_host(self):
        return "[%s]" % self.addr if ":" in self.addr else self.addr

    def url(self, host=None, scheme=None):
        scheme = scheme or ("https" if self.cert else "http")
        return "%s://%s:%d/" % (scheme, host or self.url_host, self.port)

    def set(self, status=None, delay=None, **body):
        """body: body, pad, tail, split, pause, cert, keepalive (see
        httpserver.py)."""
        state = {}
        if os.path.exists(self.control):
            with open(self.control) as f:
                state = dict(line.split("=", 1) for line in f.read().splitlines())
        if status is not None:
            state["status"] = str(status)
        if delay is not None:
            state["delay"] = str(delay)
        for key, value in body.items():
            assert key in ("body", "pad", "tail", "split", "pause", "cert",
                           "keepalive"), key
            assert "\n" not in str(value), "one line per key"
            state[key] = str(value)
        tmp = self.control + ".tmp"
        with open(tmp, "w") as f:
            f.write("".join("%s=%s\n" % kv for kv in state.items()))
        os.replace(tmp, self.control)

    def start(self):
        assert self.proc is None or self.proc.poll() is not None
        args = [PYTHON, os.path.join(HERE, "httpserver.py"), self.addr,
                str(self.port), self.control, self.requests]
        if self.cert:
            args += [self.cert, self.key]
            for host, (cert, key) in self.sni_certs.items():
                args += [host, cert, key]
        with open(self.logfile, "a") as err:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=err)
        # a Python start-up (ssl, http.server) on a loaded machine
        r, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline() if r else b""
        if line.strip() != b"ready":
            _kill(self.proc)
            with open(self.logfile) as f:
                raise AssertionError("HTTP server on %s did not start: %s" % (
                    _fmt(self.addr, self.port), f.read()))

    def stop(self):
        if self.proc is not None:
            _kill(self.proc, signal.SIGKILL)
            self.proc.stdout.close()

    def requests_seen(self):
        """The requests served, each a dict: method, path and headers (a
        list of (name, value) in the order received)."""
        try:
            with open(self.requests + ".json") as f:
                return [json.loads(line) for line in f]
        except OSError:
            return []

    def responses_sent(self):
        """How many responses were sent whole (a request is logged before
        its response goes out)."""
        try:
            with open(self.requests + ".sent") as f:
                return sum(1 for _ in f)
        except OSError:
            return 0

    def request_log(self):
        """Lines 'HOST|SNI|USER-AGENT|PATH' of the requests served."""
        try:
            with open(self.requests) as f:
                return [line.rstrip("\n").split("|") for line in f]
        except OSError:
            return []


class HangingServer:
    """A TCP listener that completes handshakes (kernel backlog) and never
    reads or answers; close() / reopen() make connects refused / accepted."""

    def __init__(self, addr, port=None, backlog=64):
        self.addr = addr
        self.backlog = backlog
        self.port = port or free_port(addr)
        self.sock = None
        self.reopen()

    def reopen(self):
        self.sock = socket.socket(_family(self.addr), socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.addr, self.port))
        self.sock.listen(self.backlog)

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    stop = close


class AcceptingServer(HangingServer):
    """A TCP listener that accepts and at once closes (for tcp checks)."""

    def reopen(self):
        import threading
        super().reopen()
        self.sock.settimeout(0.05)
        self.stopping = threading.Event()
        sock, stopping = self.sock, self.stopping

        def loop():
            while not stopping.is_set():
                try:
                    c, _ = sock.accept()
                    c.close()
                except socket.timeout:
                    continue
                except OSError:
                    return
            sock.close()
        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    def close(self):
        if self.sock is not None:
            self.stopping.set()
            self.thread.join(2)
            self.sock = None

    stop = close


def make_certs(workdir):
    """A test CA and server certificates for secure.test and other.test.
    Returns dict with ca, and (cert, key) per host."""
    def run(*args):
        subprocess.run(["openssl", *args], cwd=workdir, check=True,
                       capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=har test CA", "-keyout", "ca.key", "-out", "ca.pem",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    out = {"ca": os.path.join(workdir, "ca.pem")}
    for host in ("secure.test", "other.test"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + host,
            "-keyout", host + ".key", "-out", host + ".csr")
        ext = os.path.join(workdir, host + ".ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\n"
                    "extendedKeyUsage=serverAuth\n" % host)
        run("x509", "-req", "-in", host + ".csr", "-CA", "ca.pem",
            "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-extfile", ext, "-out", host + ".pem")
        out[host] = (os.path.join(workdir, host + ".pem"),
                     os.path.join(workdir, host + ".key"))
    return out


# ------------------------------------------------------- scripted upstream


class ScriptedUpstream:
    """A UDP nameserver in a thread of the test: it records every query it
    receives (ID, source port, name) and answers A queries with `address`,
    or stays silent while `silent` is set, after `delay` seconds when that
    is set, or when release() is called while `hold` is set.
    `reply_with`, when set, makes the reply instead: called with the query
    (a dns.message.Message), it returns the reply, or None for none.
    `spoof` makes it send, before
    each real reply, one with the wrong ID and one for another question,
    both carrying `spoof_address`: neither may reach the client."""

    def __init__(self, addr="127.0.0.1", address="192.0.2.77", silent=False):
        import threading
        self.addr = addr
        self.address = address
        self.silent = silent
        self.delay = 0.0
        self.hold = False
        self.held = []              # (reply, peer) kept while hold is set
        self.spoof = False
        self.reply_with = None
        self.spoof_address = "192.0.2.66"
        self.received = []          # (id, source port, lower-case name)
        self.lock = threading.Lock()
        self.sock = socket.socket(_family(addr), socket.SOCK_DGRAM)
        # A burst of queries waits here while this thread shares the GIL
        # with the test: the default buffer (some 250 datagrams) overflows
        # on a loaded machine, and a dropped query is resent later (counted
        # twice, or late).  As root, past net.core.rmem_max.
        for option in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, option, 8 << 20)
                break
            except OSError:
                continue
        self.sock.bind((addr, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.endpoint = _fmt(addr, self.port)
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def queries(self, name=None):
        with self.lock:
            return [q for q in self.received if name is None or q[2] == name]

    def _reply(self, query, address):
        import dns.rrset
        r = dns.message.make_response(query)
        r.flags |= dns.flags.RA
        if query.question[0].rdtype == dns.rdatatype.A:
            r.answer.append(dns.rrset.from_text(query.question[0].name, 60,
                                                "IN", "A", address))
        return r

    def _serve(self):
        while self.running:
            try:
                data, peer = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                q = dns.message.from_wire(data)
            except Exception:  # noqa: BLE001 - garbage is ignored
                continue
            name = q.question[0].name.to_text().lower() if q.question else ""
            with self.lock:
                self.received.append((q.id, peer[1], name))
            if self.silent:
                continue
            if self.spoof:
                wrong_id = self._reply(q, self.spoof_address)
                wrong_id.id = (q.id + 1) % 65536
                other = make_query("other." + name, "A", qid=q.id)
                wrong_question = self._reply(other, self.spoof_address)
                for bogus in (wrong_id, wrong_question):
                    self.sock.sendto(bogus.to_wire(), peer)
            reply = self.reply_with(q) if self.reply_with else \
                self._reply(q, self.address)
            if reply is None:
                continue
            reply = reply.to_wire()
            with self.lock:
                if self.hold:
                    self.held.append((reply, peer))
                    continue
            if self.delay:
                import threading
                threading.Timer(self.delay, self._send_late, (reply, peer)).start()
            else:
                self.sock.sendto(reply, peer)

    def release(self):
        """Sends the replies held, and answers at once from now on."""
        with self.lock:
            self.hold = False
            held, self.held = self.held, []
        for reply, peer in held:
            self._send_late(reply, peer)

    def _send_late(self, reply, peer):
        try:
            self.sock.sendto(reply, peer)
        except OSError:
            pass    # stopped meanwhile

    def stop(self):
        self.running = False
        self.thread.join(2)
        self.sock.close()
