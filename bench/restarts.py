"""bench/restarts.py - restarts and stops (issue 17, item 2), run by bench/run
(BENCH_RUNS=restarts) and shown in results.md; bench/README.md explains the
rows.

1. Queries lost across BENCH_RESTARTS (5) restarts of hard while dnsperf
   sends BENCH_RESTART_QPS (20,000) queries a second: hard is stopped
   (SIGTERM, wait for the exit) and started again, as `systemctl restart`
   does, under socket activation (a holder of the sockets, below, in the
   place of systemd and contrib/har.socket) and without it (hard binds its
   own sockets, which close when it stops).
2. Stop time: SIGTERM to exit after BENCH_STOP_AGE (600) seconds of 1,000
   HTTP checks a second with a data file, and with a fresh one.

systemd-socket-activate (systemd package) passes several sockets only by
nesting one per kind (its --datagram applies to every -l), and it execs the
program once: it cannot restart it.  The holder here does what systemd does
for a socket unit: it binds the sockets (ReceiveBuffer=4M), keeps them for
the whole run, and starts each hard with them as descriptors 3 and 4,
LISTEN_FDS=2 and LISTEN_PID the pid of the `sh` that execs hard.
"""

import os
import signal
import socket
import sqlite3
import struct
import subprocess
import threading
import time

import benchlib as B
from benchlib import BenchError, Proc, say

RESTARTS = B.env_num("BENCH_RESTARTS", 5, kind=int)
RESTART_QPS = B.env_num("BENCH_RESTART_QPS", 20000, kind=int)
RESTART_INTERVAL = B.env_num("BENCH_RESTART_INTERVAL", 2.0, 1.0)  # between restarts
# dnsperf -t: a query unanswered by then is lost; far above a restart's gap
RESTART_TIMEOUT = B.env_num("BENCH_RESTART_TIMEOUT", 2.0)
STOP_AGE = B.env_num("BENCH_STOP_AGE", 600, 60)  # seconds of checks before the stop
STOP_FRESH = B.env_num("BENCH_STOP_FRESH", 20, 10)  # the same, with a fresh data file
STOP_ADDRS = B.env_num("BENCH_STOP_ADDRS", 1000, kind=int)  # checked every second
RECEIVE_BUFFER = 4 << 20  # contrib/har.socket's ReceiveBuffer=
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
NAME = "www.bench.test"
ADDR = "127.0.0.2"


# ------------------------------------------------------------ the holder


class Holder:
    """The service manager's side of socket activation for one port: the
    UDP and TCP sockets, bound once, and one hard at a time started with
    them (the Proc-like pid, alive, log of each start)."""

    def __init__(self, port):
        self.port = port
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
        udp.bind(("127.0.0.1", port))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("127.0.0.1", port))
        tcp.listen(socket.SOMAXCONN)
        self.sockets = [udp, tcp]

    def spawn(self, conf, log):
        """hard with the sockets at 3 and 4 (moved there from copies
        above 100, so that none is overwritten on the way)."""
        import fcntl
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC)
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 100) for s in self.sockets]
        actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, out, 1),
                   (os.POSIX_SPAWN_DUP2, out, 2)]
        actions += [(os.POSIX_SPAWN_DUP2, fd, 3 + i) for i, fd in enumerate(high)]
        env = dict(os.environ, LISTEN_FDS=str(len(self.sockets)),
                   LISTEN_FDNAMES="har.socket:har.socket")
        env.pop("NOTIFY_SOCKET", None)
        argv = ["sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"',
                "taskset", "-c", B.SERVER_CPU, B.HARD, "-f", "-c", conf]
        try:
            return Spawned(os.posix_spawnp("sh", argv, env, file_actions=actions), log)
        finally:
            for fd in high + [out, null]:
                os.close(fd)

    def close(self):
        for s in self.sockets:
            s.close()


class Spawned:
    """A hard the holder started (not a child of Proc)."""

    def __init__(self, pid, log):
        self.pid, self.log, self.status = pid, log, None

    def alive(self):
        if self.status is not None:
            return False
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return True
        self.status = os.waitstatus_to_exitcode(status)
        return False

    def wait(self, timeout):
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                raise BenchError("hard (pid %d) did not stop within %g s" % (self.pid, timeout))
            time.sleep(0.001)
        return self.status

    def stop(self):
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            self.wait(10)


def answering(log):
    """hard logs "hard VERSION answering N names" just before its loop runs."""
    try:
        with open(log, errors="replace") as f:
            return " answering " in f.read()
    except OSError:
        return False


def wait_answering(proc, log, timeout=20):
    deadline = time.monotonic() + timeout
    while not answering(log):
        if not proc.alive() or time.monotonic() > deadline:
            with open(log, errors="replace") as f:
                raise BenchError("hard did not start answering:\n%s" % f.read()[-2000:])
        time.sleep(0.002)


# ------------------------------------------------------------ 1. restarts


def restart_config(runner, port, upstream_port, data_file, check_port):
    return runner.hard_config(port, upstream_port, data_file, (
        "name %s {\n  check_method = tcp\n  check_frequency = 1\n"
        "  candidate a { check_address = \"%s:%d\" }\n}\n" % (NAME, ADDR, check_port)))


def restarts_under(runner, tmp, upstream_port, check_port, activated):
    """dnsperf at RESTART_QPS for the whole run while hard is restarted
    RESTARTS times; dnsperf's counts and each restart's timings."""
    label = "activated" if activated else "bound"
    port = B.free_port()
    conf = os.path.join(tmp, "har-restarts-%s.conf" % label)
    with open(conf, "w") as f:
        f.write(restart_config(runner, port, upstream_port,
                               os.path.join(tmp, "restarts-%s.db" % label), check_port))
    holder = Holder(port) if activated else None
    logs = []

    def start():
        log = os.path.join(B.OUT, "hard-restarts-%s-%d.log" % (label, len(logs) + 1))
        logs.append(log)
        if holder:
            return holder.spawn(conf, log)
        return Proc("hard (restarts, %s)" % label, [B.HARD, "-f", "-c", conf],
                    cpu=B.SERVER_CPU, log=log)

    hard = start()
    try:
        wait_answering(hard, logs[-1])
        B.wait_answer(port, NAME, lambda rc, a: rc == "NOERROR" and a == [ADDR], 15, None,
                      "hard (%s) to answer %s" % (label, NAME))
        qfile = os.path.join(B.OUT, "queries-restarts.txt")
        with open(qfile, "w") as f:
            f.write("%s A\n" % NAME)
        seconds = RESTART_INTERVAL * (RESTARTS + 1)
        say("dnsperf at %d qps for %g s on port %d, hard restarted %d times (%s)" % (
            RESTART_QPS, seconds, port, RESTARTS,
            "socket activation" if activated else "hard binds its own sockets"))
        perf = {}
        # -q: every query of a restart's gap may be outstanding at once, as
        # the clients of a host do not stop asking while hard restarts
        runner_thread = threading.Thread(target=lambda: perf.update(B.dnsperf(
            "restarts-%s" % label, port, qfile, seconds, 4, 20000, qps=RESTART_QPS,
            tmpdir=tmp, timeout=RESTART_TIMEOUT)))
        runner_thread.start()
        timings = []
        for _ in range(RESTARTS):
            time.sleep(RESTART_INTERVAL)
            t0 = time.monotonic()
            os.kill(hard.pid, signal.SIGTERM)
            status = hard.wait(10) if holder else hard.proc.wait(10)
            stopped = time.monotonic()
            if status != 0:
                raise BenchError("hard (%s) exited %s at a restart" % (label, status))
            hard = start()
            wait_answering(hard, logs[-1])
            timings.append({"stop_ms": (stopped - t0) * 1000,
                            "answering_ms": (time.monotonic() - t0) * 1000})
        runner_thread.join()
        if "sent" not in perf:
            raise BenchError("dnsperf (restarts, %s) gave no figures" % label)
    finally:
        hard.stop()
        if holder:
            holder.close()
    lost = int(perf.get("lost") or 0)
    say("   %s: %d sent, %d answered, %d lost; stop %s ms, SIGTERM to answering %s ms" % (
        label, perf["sent"] or 0, perf["completed"] or 0, lost,
        "/".join("%.0f" % t["stop_ms"] for t in timings),
        "/".join("%.0f" % t["answering_ms"] for t in timings)))
    return {"sent": int(perf["sent"] or 0), "completed": int(perf["completed"] or 0),
            "lost": lost, "qps": perf.get("qps"), "restarts": timings,
            "not_noerror": sum(v for k, v in perf["rcodes"].items() if k != "NOERROR")}


# ------------------------------------------------------------ 2. stop time


def wal_uncopied(db):
    """Pages in the WAL not yet copied into the database (from the WAL
    index: mxFrame at byte 16, nBackfill at byte 96), or None."""
    try:
        with open(db + "-shm", "rb") as f:
            head = f.read(100)
        total, copied = struct.unpack_from("=I", head, 16)[0], struct.unpack_from("=I", head, 96)[0]
    except (OSError, struct.error):
        return None
    return total - min(total, copied)


def file_mb(path):
    try:
        return os.path.getsize(path) / 1e6
    except OSError:
        return 0.0


def stop_after(runner, tmp, upstream_port, names_text, label, seconds, served):
    """hard checking for `seconds` with a new data file, then SIGTERM: how
    long until it exits, and what the data file held."""
    port = B.free_port()
    db = os.path.join(tmp, "stop-%s.db" % label)
    hard = runner.start_hard(tmp, "stop-%s" % label,
                             runner.hard_config(port, upstream_port, db, names_text))
    B.wait_answer(port, "s00.bench.test", lambda rc, a: rc == "NOERROR" and a, 30, hard,
                  "hard (stop, %s) to answer" % label)
    say("stop time: %g s of checks with a new data file, then SIGTERM" % seconds)
    # nginx's count: the data file's lags by up to data_file_interval
    checks0 = served()
    t_checks = time.monotonic()
    time.sleep(seconds)
    hard.check_alive()
    checks1 = served()
    uncopied = wal_uncopied(db)
    db_mb, wal_mb = file_mb(db), file_mb(db + "-wal")
    wall = time.time()
    t0 = time.monotonic()
    os.kill(hard.pid, signal.SIGTERM)
    status = hard.proc.wait(30)
    stop_ms = (time.monotonic() - t0) * 1000
    hard.stop()
    if status != 0:
        raise BenchError("hard (stop, %s) exited %s" % (label, status))
    con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
    try:
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        newest = con.execute("SELECT max(last_check_time) FROM candidates").fetchone()[0]
    finally:
        con.close()
    res = {"seconds": seconds, "stop_ms": stop_ms, "uncopied_pages": uncopied,
           "db_mb": db_mb, "wal_mb": wal_mb, "integrity": integrity,
           "newest_check_before_stop_s": wall - newest if newest else None,
           "checks_per_s": (checks1 - checks0) / max(1e-9, time.monotonic() - t_checks)}
    say("   stop took %.0f ms; WAL pages not copied at SIGTERM: %s; data file %.1f MB, WAL "
        "%.1f MB; integrity %s" % (stop_ms, uncopied, db_mb, wal_mb, integrity))
    return res


def stop_times(runner, tmp, upstream_port):
    addrs = runner.scale_addresses(STOP_ADDRS)
    nginx, ports, _cert = runner.start_scale_nginx(tmp, addrs)
    per_name = -(-len(addrs) // 20)
    parts = []
    for i in range(0, len(addrs), per_name):
        parts.append("name s%02d.bench.test {\n  check_frequency = 1\n" % (i // per_name))
        parts += ["  candidate c%03d { check_address = \"http://health.bench.test:%d/health\""
                  " address = { %s } }\n" % (j, ports["http"], a)
                  for j, a in enumerate(addrs[i:i + per_name])]
        parts.append("}\n")
    names_text = "".join(parts)
    try:
        def served():
            return runner.nginx_requests(ports["status"])
        fresh = stop_after(runner, tmp, upstream_port, names_text, "fresh", STOP_FRESH,
                           served)
        aged = stop_after(runner, tmp, upstream_port, names_text, "aged", STOP_AGE, served)
    finally:
        nginx.stop()
    where = subprocess.run(["stat", "-f", "-c", "%T", tmp], capture_output=True, text=True)
    return {"fresh": fresh, "aged": aged, "addresses": len(addrs),
            "file_system": "%s (%s)" % (tmp, where.stdout.strip() or "?")}


# ------------------------------------------------------------ run and table


def run(tmp, upstream_port, runner):
    """runner: bench/run's module (its hard, nginx and data file helpers)."""
    say("== restarts: queries lost across %d restarts at %d qps, with and without socket "
        "activation; stop time after %g s of %d checks a second" % (
            RESTARTS, RESTART_QPS, STOP_AGE, STOP_ADDRS))
    check_port = B.free_port((ADDR,))
    Proc("tcp listener %s:%d" % (ADDR, check_port),
         [B.PYTHON, os.path.join(B.HERE, "httpd.py"), ADDR, str(check_port)],
         cpu=B.LOAD_CPU, wait_ready_line=True)
    res = {"activated": restarts_under(runner, tmp, upstream_port, check_port, True),
           "bound": restarts_under(runner, tmp, upstream_port, check_port, False)}
    res["stop"] = stop_times(runner, tmp, upstream_port)
    return res


def _ms(values):
    if not values:
        return "n/a"
    values = sorted(values)
    return "%.0f / %.0f" % (B.median(values), values[-1])


def table(res, verdict, aim):
    """The rows of results.md; verdict and aim are bench/run's."""
    a, b = res["activated"], res["bound"]
    lines = ["### Restarts: %d restarts of hard at %d queries/s (dnsperf -Q, -t %g), one "
             "every %g s" % (RESTARTS, RESTART_QPS, RESTART_TIMEOUT, RESTART_INTERVAL), "",
             "| | socket activation (sockets held across restarts) | hard binds its own "
             "| aim |", "|---|---:|---:|---|"]
    rows = [
        ("queries sent / answered", "%d / %d" % (a["sent"], a["completed"]),
         "%d / %d" % (b["sent"], b["completed"]), ""),
        ("**queries lost** (no answer within %g s)" % RESTART_TIMEOUT,
         "**%d**" % a["lost"], "**%d**" % b["lost"],
         "0 with activation: %s" % verdict(aim(a["lost"], 0))),
        ("answers not NOERROR", str(a["not_noerror"]), str(b["not_noerror"]), ""),
        ("stop: SIGTERM to exit, median / max, ms",
         _ms([t["stop_ms"] for t in a["restarts"]]),
         _ms([t["stop_ms"] for t in b["restarts"]]), ""),
        ("SIGTERM to the next hard answering, median / max, ms",
         _ms([t["answering_ms"] for t in a["restarts"]]),
         _ms([t["answering_ms"] for t in b["restarts"]]), ""),
    ]
    lines += ["| %s | %s | %s | %s |" % r for r in rows]
    s = res["stop"]
    f, g = s["fresh"], s["aged"]
    lines += ["", "### Stop time: %d addresses checked over HTTP every second, data file "
              "on %s" % (s["addresses"], s["file_system"]), "",
              "| | fresh data file (%g s of checks) | after %g s of checks | aim |"
              % (f["seconds"], g["seconds"]), "|---|---:|---:|---|"]
    rows = [
        ("**stop: SIGTERM to exit, ms**", "**%.0f**" % f["stop_ms"], "**%.0f**" % g["stop_ms"],
         "≤ 100: %s" % verdict(aim(max(f["stop_ms"], g["stop_ms"]), 100))),
        ("WAL pages not yet copied into the file at SIGTERM",
         B.fmt(f["uncopied_pages"], "%d"), B.fmt(g["uncopied_pages"], "%d"), ""),
        ("checks per second (nginx)", "%.0f" % f["checks_per_s"],
         "%.0f" % g["checks_per_s"], ""),
        ("data file / WAL at SIGTERM, MB", "%.1f / %.1f" % (f["db_mb"], f["wal_mb"]),
         "%.1f / %.1f" % (g["db_mb"], g["wal_mb"]), ""),
        ("after the stop: integrity_check; newest check, s before SIGTERM",
         "%s; %s" % (f["integrity"], B.fmt(f["newest_check_before_stop_s"])),
         "%s; %s" % (g["integrity"], B.fmt(g["newest_check_before_stop_s"])), "ok; ≤ 1"),
    ]
    lines += ["| %s | %s | %s | %s |" % r for r in rows]
    lines.append("")
    return lines
