"""Helpers for bench/run and bench/fleet: processes started and stopped by
PID, loopback ports, a raw DNS client (one query or a fleet's worth at once),
/proc readings, figures and the dnsperf driver.

Debian's python3 standard library only.
"""

import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, ".."))
OUT = os.environ.get("BENCH_OUT") or os.path.join(HERE, "out")
HARD = os.path.abspath(os.environ.get("HARD") or os.path.join(REPO, "hard"))
PYTHON = "/usr/bin/python3"
DNSMASQ = "/usr/sbin/dnsmasq"
NGINX = "/usr/sbin/nginx"
DNSPERF = "/usr/bin/dnsperf"

SERVER_CPU = "0"  # the server under test
LOAD_CPU = "1"  # dnsperf, the driver and every helper

CLK_TCK = os.sysconf("SC_CLK_TCK")
T_START = time.monotonic()


class BenchError(Exception):
    """A failure that stops the run with a clear message."""


def say(msg):
    print("[%6.1fs] %s" % (time.monotonic() - T_START, msg), flush=True)


def env_num(name, default, quick=None, kind=float):
    value = os.environ.get(name)
    if value not in (None, ""):
        return kind(value)
    if quick is not None and os.environ.get("BENCH_QUICK") not in (None, "", "0"):
        return kind(quick)
    return kind(default)


# ------------------------------------------------------------------ processes

_procs = []


class Proc:
    """A child process started by the bench, stopped by its PID only."""

    def __init__(self, name, argv, cpu=None, log=None, wait_ready_line=False,
                 cwd=None, stdin=subprocess.DEVNULL):
        self.name = name
        self.cpu = cpu
        self.argv = list(argv)
        if cpu is not None:
            self.argv = ["taskset", "-c", cpu] + self.argv
        self.log = log
        logf = open(log, "w") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            self.argv, stdin=stdin,
            stdout=subprocess.PIPE if wait_ready_line else logf,
            stderr=logf, cwd=cwd, start_new_session=True)
        if log:
            logf.close()
        self.pid = self.proc.pid  # taskset execs the program: same PID
        _procs.append(self)
        if wait_ready_line:
            line = self.proc.stdout.readline()
            if not line.startswith(b"ready"):
                self.stop()
                raise BenchError("%s did not start: %r" % (name, line))

    def alive(self):
        return self.proc.poll() is None

    def check_alive(self):
        if not self.alive():
            raise BenchError("%s (pid %d) exited with status %s%s" % (
                self.name, self.pid, self.proc.returncode, self.log_tail()))

    def log_tail(self, lines=15):
        if not self.log or not os.path.exists(self.log):
            return ""
        with open(self.log, errors="replace") as f:
            tail = f.readlines()[-lines:]
        return "; last lines of %s:\n%s" % (self.log, "".join(tail))

    def stop(self, sig=signal.SIGTERM, timeout=5.0):
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, sig)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        if self.proc.stdout:
            self.proc.stdout.close()
        if self in _procs:
            _procs.remove(self)
        return self.proc.returncode


def stop_many(procs, timeout=5.0):
    """Stops many processes at once: SIGTERM to each, then waits for each
    (a SIGKILL for one that is still there after timeout)."""
    for p in procs:
        if p.alive():
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for p in procs:
        p.stop(timeout=timeout)


def stop_all():
    for p in reversed(list(_procs)):
        try:
            p.stop(timeout=3.0)
        except Exception as exc:  # noqa: BLE001 - best effort at exit
            print("bench: could not stop %s (pid %d): %r" % (p.name, p.pid, exc),
                  file=sys.stderr)


# ------------------------------------------------------------------ /proc


def cpu_seconds(pid):
    """utime + stime of the process (all its threads), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_seconds(pid):
    """Time on a CPU of the live threads of the process, in nanosecond
    precision (/proc/PID/task/*/schedstat: the kernel's sum_exec_runtime,
    of which utime+stime are the tick-rounded split), or None."""
    total = 0
    try:
        tasks = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return None
    for tid in tasks:
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # the thread ended meanwhile
    return total / 1e9


class CpuMeter:
    """A process's CPU time over an interval: utime+stime, read finely from
    schedstat unless threads ended within it (their time is then only in
    /proc/PID/stat, whose 10 ms ticks would blur a short window)."""

    def __init__(self, pid):
        self.pid = pid
        self.ticks0, self.fine0 = cpu_seconds(pid), run_seconds(pid)

    def seconds(self):
        ticks = cpu_seconds(self.pid) - self.ticks0
        fine1 = run_seconds(self.pid)
        if self.fine0 is None or fine1 is None:
            return ticks
        fine = fine1 - self.fine0
        return fine if ticks - fine < 2.5 / CLK_TCK else ticks


def status_kb(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def core_busy_seconds(cpu):
    """user + nice + system time of one CPU (from /proc/stat), in seconds:
    compared with the server's own CPU time it shows what else ran there."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu%s " % cpu):
                v = [int(x) for x in line.split()[1:]]
                return (v[0] + v[1] + v[2]) / CLK_TCK
    return 0.0


def core_steal_seconds(cpu):
    """Time the hypervisor kept this virtual CPU from running ("steal")."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu%s " % cpu):
                v = [int(x) for x in line.split()[1:]]
                return (v[7] if len(v) > 7 else 0) / CLK_TCK
    return 0.0


def load_core_own_seconds():
    """CPU seconds that this bench itself spent on the load core so far: this
    script, its waited-for children (dnsperf) and the helpers pinned there."""
    import resource
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    for p in list(_procs):
        if p.cpu == LOAD_CPU and p.alive():
            try:
                total += cpu_seconds(p.pid)
            except OSError:
                pass
    return total


_quiet_budget = [None]


def wait_quiet(pids=(), max_wait=10.0, budget=120.0, threshold=0.05, sample=0.5):
    """Waits (at most max_wait s per call, budget s per bench) until programs
    other than pids use less than `threshold` of the server's core: other
    sessions' work there makes qps and latency noisy.  Returns the share seen
    last."""
    if _quiet_budget[0] is None:
        _quiet_budget[0] = budget
    start = time.monotonic()
    while True:
        k0 = core_busy_seconds(SERVER_CPU)
        own0 = sum(cpu_seconds(p) for p in pids)
        time.sleep(sample)
        share = max(0.0, core_busy_seconds(SERVER_CPU) - k0 -
                    (sum(cpu_seconds(p) for p in pids) - own0)) / sample
        waited = time.monotonic() - start
        if share < threshold or waited >= max_wait or waited >= _quiet_budget[0]:
            _quiet_budget[0] = max(0.0, _quiet_budget[0] - waited)
            if share >= threshold:
                say("   core %s is busy with other programs (%.0f%% of it); measuring anyway"
                    % (SERVER_CPU, 100 * share))
            return share


def sample_counter(read, seconds, period=1.0):
    """Reads a counter (read()) every `period` seconds for `seconds`, on a
    fixed schedule: [(time, value)], each time the middle of its reading, so
    that counts per period can be divided by the true time between readings."""
    samples = []
    start = time.monotonic()
    for k in range(int(round(seconds / period)) + 1):
        pause = start + k * period - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        t0 = time.monotonic()
        value = read()
        samples.append(((t0 + time.monotonic()) / 2, value))
    return samples


def peak_rss_mb(pid):
    kb = status_kb(pid, "VmHWM")
    return None if kb is None else kb / 1024.0


# ------------------------------------------------------------------ ports


def _local_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = f.read().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


_taken = set()


def free_port(addrs=("127.0.0.1",), lo=20000, hi=30000,
              kinds=(socket.SOCK_STREAM, socket.SOCK_DGRAM)):
    """A port free for UDP and TCP on every address given, chosen at random
    from [lo, hi) outside the kernel's ephemeral range (so no client socket
    of dnsperf or hard takes it meanwhile), never 53, 5353 or 5399."""
    elo, ehi = _local_range()
    for _ in range(200):
        port = random.randrange(lo, hi)
        if port in _taken or elo <= port <= ehi or port in (53, 5353, 5399):
            continue
        held = []
        try:
            for a in addrs:
                for kind in kinds:
                    s = socket.socket(socket.AF_INET, kind)
                    held.append(s)
                    s.bind((a, port))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        _taken.add(port)
        return port
    raise BenchError("no free port in %d-%d" % (lo, hi))


# ------------------------------------------------------------------ DNS client

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN",
          4: "NOTIMP", 5: "REFUSED"}


def build_query(name, qtype=1, qid=None):
    qid = random.randrange(65536) if qid is None else qid
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    return qid, header + qname + struct.pack("!HH", qtype, 1)


def _skip_name(msg, off):
    while True:
        length = msg[off]
        if length == 0:
            return off + 1
        if length & 0xC0 == 0xC0:
            return off + 2
        off += 1 + length


def parse_response(msg, qid):
    """(rcode text, [IPv4 addresses of the answer section, in order])."""
    if len(msg) < 12:
        raise ValueError("short response")
    rid, flags, qd, an, _ns, _ar = struct.unpack("!HHHHHH", msg[:12])
    if rid != qid:
        raise ValueError("ID mismatch")
    off = 12
    for _ in range(qd):
        off = _skip_name(msg, off) + 4
    addrs = []
    for _ in range(an):
        off = _skip_name(msg, off)
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", msg[off:off + 10])
        off += 10
        if rtype == 1 and rdlen == 4:
            addrs.append(socket.inet_ntoa(msg[off:off + 4]))
        off += rdlen
    return RCODES.get(flags & 0xF, str(flags & 0xF)), addrs


def query_a(port, name, addr="127.0.0.1", timeout=0.5):
    """One A query over UDP: (rcode, [addresses]) or (None, []) on timeout."""
    qid, wire = build_query(name)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(wire, (addr, port))
        deadline = time.monotonic() + timeout
        while True:
            try:
                data = s.recv(4096)
            except socket.timeout:
                return None, []
            try:
                return parse_response(data, qid)
            except (ValueError, IndexError, struct.error):
                if time.monotonic() > deadline:
                    return None, []


def query_many(targets, timeout=1.0, addr="127.0.0.1"):
    """One A query to each (port, name) of targets, all sent from one UDP
    socket before any answer is read (a fleet of servers asked at once):
    [(rcode, [addresses]) or (None, []) on timeout], in targets' order."""
    results = [(None, [])] * len(targets)
    pending = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for i, (port, name) in enumerate(targets):
            qid, wire = build_query(name, qid=i & 0xFFFF)
            pending[(port, qid)] = i
            s.sendto(wire, (addr, port))
        deadline = time.monotonic() + timeout
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                data, (_, port) = s.recvfrom(4096)
            except socket.timeout:
                break
            if len(data) < 2:
                continue
            key = (port, struct.unpack("!H", data[:2])[0])
            if key not in pending:
                continue
            try:
                results[pending.pop(key)] = parse_response(data, key[1])
            except (ValueError, IndexError, struct.error):
                pass
    return results


def wait_answer(port, name, want, timeout=10.0, proc=None, what=None):
    """Polls until the A answer for name satisfies want(rcode, addrs)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None:
            proc.check_alive()
        last = query_a(port, name, timeout=0.3)
        if want(*last):
            return last
        time.sleep(0.05)
    raise BenchError("timed out waiting for %s (last answer for %s: %r)" % (
        what or "an answer", name, last))


# ------------------------------------------------------------------ figures


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def ratio(a, b):
    return None if a is None or not b else a / b


def fmt(v, spec="%.2f", none="n/a"):
    return none if v is None else spec % v


# ------------------------------------------------------------------ this machine


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def first_line(argv):
    """The first line a program prints (a version, say), or "?"."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def git_describe(path=REPO):
    """`git describe --always --dirty` of the tree at path, or "?"."""
    try:
        return subprocess.run(["git", "-C", path, "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


# ------------------------------------------------------------------ dnsperf


def dnsperf_version():
    try:
        p = subprocess.run([DNSPERF, "-h"], capture_output=True, text=True)
        m = re.search(r"Version (\S+)", p.stdout + p.stderr)
        return m.group(1) if m else "?"
    except OSError:
        return "?"


_STAT_RE = {
    "sent": r"Queries sent:\s+(\d+)",
    "completed": r"Queries completed:\s+(\d+)",
    "lost": r"Queries lost:\s+(\d+)",
    "run_time": r"Run time \(s\):\s+([\d.]+)",
    "qps": r"Queries per second:\s+([\d.]+)",
    "avg_latency": r"Average Latency \(s\):\s+([\d.]+)",
    "latency_stddev": r"Latency StdDev \(s\):\s+([\d.]+)",
    "request_size": r"Average packet size:\s+request (\d+)",
    "response_size": r"Average packet size:\s+request \d+, response (\d+)",
}


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def dnsperf(label, port, queryfile, seconds, clients, outstanding, server=None,
            qps=None, latencies=False, tmpdir="/tmp", timeout=1.0):
    """Runs dnsperf on the load core against 127.0.0.1:port for `seconds`.

    Returns a dict of dnsperf's statistics plus, when server (a Proc) is
    given, the server's CPU seconds across the run and CPU microseconds per
    completed query; with latencies=True (-v), the mean, p50, p99 and max
    latency in microseconds computed from every answered query."""
    argv = ["taskset", "-c", LOAD_CPU, DNSPERF, "-s", "127.0.0.1", "-p", str(port),
            "-d", queryfile, "-l", str(seconds), "-c", str(clients),
            "-q", str(outstanding), "-t", "%g" % timeout]
    if qps:
        argv += ["-Q", str(int(qps))]
    if latencies:
        argv += ["-v"]
    raw = os.path.join(tmpdir, "dnsperf-%s.out" % label)
    if server is not None:
        server.check_alive()
        cpu0 = cpu_seconds(server.pid)
    core0 = core_busy_seconds(SERVER_CPU)
    load0, own0 = core_busy_seconds(LOAD_CPU), load_core_own_seconds()
    steal0 = (core_steal_seconds(SERVER_CPU), core_steal_seconds(LOAD_CPU))
    t0 = time.monotonic()
    # the server's CPU time when dnsperf stops sending: after that dnsperf
    # only waits for the lost queries' timeout while a checking hard still
    # works, so the reading is taken then rather than when dnsperf exits
    at_end = {}

    def sample():
        try:
            at_end["cpu"] = cpu_seconds(server.pid)
            at_end["t"] = time.monotonic()
        except OSError:
            pass
    timer = None
    if server is not None:
        timer = threading.Timer(seconds + 0.02, sample)
        timer.start()
    with open(raw, "w") as f:
        rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=f,
                            stderr=subprocess.STDOUT).returncode
    wall = time.monotonic() - t0
    if timer is not None:
        timer.cancel()
        timer.join()
    core1 = core_busy_seconds(SERVER_CPU)
    load1, own1 = core_busy_seconds(LOAD_CPU), load_core_own_seconds()
    steal1 = (core_steal_seconds(SERVER_CPU), core_steal_seconds(LOAD_CPU))
    result = {"label": label, "argv": " ".join(argv[3:]), "wall": wall,
              "steal_server_core_share": (steal1[0] - steal0[0]) / wall,
              "steal_load_core_share": (steal1[1] - steal0[1]) / wall,
              # time other programs ran on the load core meanwhile (noise)
              "other_on_load_core_share": max(0.0, (load1 - load0) - (own1 - own0)) / wall}
    if server is not None:
        server.check_alive()
        cpu_total = cpu_seconds(server.pid) - cpu0
        result["server_cpu_s"] = at_end["cpu"] - cpu0 if "cpu" in at_end else cpu_total
        result["server_cpu_window"] = at_end.get("t", t0 + wall) - t0
        # time other programs ran on the server's core meanwhile (noise)
        result["other_on_server_core_share"] = max(0.0, core1 - core0 - cpu_total) / wall
    lat = []
    summary = []
    rcodes = {}
    timeouts = 0
    with open(raw, errors="replace") as f:
        for line in f:
            if line.startswith("> "):
                parts = line.split()
                try:
                    lat.append(float(parts[-1]))
                except (ValueError, IndexError):
                    pass
            elif line.startswith("[Timeout]"):
                timeouts += 1
            else:
                summary.append(line)
    text = "".join(summary)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "dnsperf-%s.txt" % label), "w") as f:
        f.write("# %s\n" % " ".join(argv))
        f.write(text)
        if timeouts:
            f.write("# %d [Timeout] lines left out\n" % timeouts)
    os.unlink(raw)
    if rc != 0:
        raise BenchError("dnsperf %s failed (status %d):\n%s" % (label, rc, text[-2000:]))
    for key, rx in _STAT_RE.items():
        m = re.search(rx, text)
        result[key] = float(m.group(1)) if m else None
    m = re.search(r"Response codes:\s+(.*)", text)
    if m:
        for code, count in re.findall(r"([A-Z]+) (\d+)", m.group(1)):
            rcodes[code] = int(count)
    result["rcodes"] = rcodes
    completed = result.get("completed") or 0
    if server is not None and completed:
        result["cpu_us_per_query"] = result["server_cpu_s"] / completed * 1e6
        result["server_cpu_share"] = result["server_cpu_s"] / result["server_cpu_window"]
    if latencies and lat:
        lat.sort()
        result["lat_n"] = len(lat)
        result["lat_mean_us"] = sum(lat) / len(lat) * 1e6
        result["lat_p50_us"] = percentile(lat, 50) * 1e6
        result["lat_p99_us"] = percentile(lat, 99) * 1e6
        result["lat_max_us"] = lat[-1] * 1e6
    return result
