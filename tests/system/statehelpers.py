"""Helpers for the state, reload and daemon system tests (issues 4 and 5):
reading the data file with the real sqlite3 CLI, small tmpfs mounts for the
fault tests, a background query loop, and the answer helpers the check tests
use.  Everything started here is stopped by PID or by its own mount point."""

import errno
import json
import os
import re
import shutil
import subprocess
import threading
import time

import pytest

import harness
from harness import answer, wait_answer  # noqa: F401 - used by tests
from harness import addresses

SQLITE3 = shutil.which("sqlite3") or "/usr/bin/sqlite3"


# ------------------------------------------------------------ sqlite3 CLI


class SqlError(Exception):
    pass


def sql(db, query, timeout=5.0, readonly=True):
    """Runs one SELECT/PRAGMA with the sqlite3 CLI (-readonly -json);
    returns the rows as a list of dicts."""
    args = [SQLITE3]
    if readonly:
        args.append("-readonly")
    args += ["-json", db, query]
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0 or r.stderr.strip():
        raise SqlError("sqlite3 %s %r: exit %d: %s" % (db, query, r.returncode,
                                                      r.stderr.strip()))
    out = r.stdout.strip()
    return json.loads(out) if out else []


def sql_value(db, query, **kw):
    rows = sql(db, query, **kw)
    if not rows:
        return None
    return next(iter(rows[0].values()))


def sql_text(db, query, timeout=5.0):
    """Plain-text output of the sqlite3 CLI (for PRAGMAs like
    integrity_check)."""
    r = subprocess.run([SQLITE3, "-readonly", db, query], capture_output=True,
                       text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise SqlError("sqlite3 %s %r: exit %d: %s" % (db, query, r.returncode,
                                                      r.stderr.strip()))
    return r.stdout.strip()


def candidates(db, name=None):
    """candidates rows keyed by (candidate_name, ip_address)."""
    q = "SELECT * FROM candidates"
    if name:
        q += " WHERE name = '%s'" % name
    return {(r["candidate_name"], r["ip_address"]): r for r in sql(db, q)}


def wait_sql(db, query, predicate, timeout=20.0, what=None, interval=0.05):
    """Polls query until predicate(rows) is true; returns the rows."""
    last = [None]

    def probe():
        rows = sql(db, query)
        last[0] = rows
        return rows if predicate(rows) else None
    try:
        return harness.wait_until(probe, timeout, interval,
                                  what=what or "data file: %s" % query)
    except AssertionError as e:
        raise AssertionError("%s; last rows: %s" % (e, last[0])) from None


def stable_value(db, query, quiet=1.5, timeout=10.0):
    """The value of query once it has not changed for `quiet` seconds
    (write-behind has settled).  The writer flushes every half second, but
    on a loaded machine a flush can come late: three periods of quiet, so
    that a late flush is not taken for the end of the writes."""
    deadline = time.monotonic() + timeout
    value, since = sql_value(db, query), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now_value = sql_value(db, query)
        if now_value != value:
            value, since = now_value, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return value
    raise AssertionError("%s did not settle within %.1fs (last %r)" % (
        query, timeout, value))


# ------------------------------------------------------------ logs


def log_lines(h, pattern):
    """Lines of hard's log (stderr with -f) that match the regex."""
    rx = re.compile(pattern)
    return [line for line in h.log().splitlines() if rx.search(line)]


def wait_log(h, pattern, count=1, timeout=5.0):
    """Waits until at least `count` lines match; returns them."""
    def probe():
        h.assert_alive()
        lines = log_lines(h, pattern)
        return lines if len(lines) >= count else None
    try:
        return harness.wait_until(probe, timeout, 0.02,
                                  what="%d log line(s) matching %r" % (count, pattern))
    except AssertionError as e:
        raise AssertionError("%s\nlog tail:\n%s" % (e, h.log()[-3000:])) from None


# ------------------------------------------------------------ config


def name_block(title, cands, **opts):
    """cands: [(candidate title, check_address, extra lines...)]."""
    opts.setdefault("check_frequency", 0.3)
    lines = ["name %s {" % title]
    lines += ["    %s = %s" % kv for kv in opts.items()]
    for cand, url, *extra in cands:
        lines.append('    candidate "%s" {' % cand)
        if url:
            lines.append('        check_address = "%s"' % url)
        lines += ["        " + e for e in extra]
        lines.append("    }")
    lines.append("}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------ answers


def assert_answers(h, expected, duration=0.0, max_latency=0.5):
    """Every name in `expected` ({name: answer}) answers as expected, each
    query within max_latency seconds, for `duration` seconds (at least once)."""
    end = time.monotonic() + duration
    while True:
        for name, want in expected.items():
            t0 = time.monotonic()
            got = answer(h, name, timeout=2.0)
            took = time.monotonic() - t0
            assert got == want, "%s: %s, wanted %s" % (name, got, want)
            assert took <= max_latency, "%s took %.3fs to answer" % (name, took)
        if time.monotonic() >= end:
            return
        time.sleep(0.05)


class QueryLoop:
    """A thread that queries hard over UDP without pause, name after name,
    and records (t_sent, t_done, name, port, answer) for each query, the
    answer being sorted addresses, an rcode name, or 'TIMEOUT'/'ERROR: ...'.
    The target port is read before each query, so the test can move it."""

    def __init__(self, addr, port, names, timeout=1.0, pause=0.003):
        self.addr, self.port, self.names = addr, port, list(names)
        self.timeout, self.pause = timeout, pause
        self.results = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        i = 0
        while not self._stop.is_set():
            name = self.names[i % len(self.names)]
            i += 1
            port = self.port
            t0 = time.monotonic()
            try:
                r = harness.query_at(self.addr, port, name, "A",
                                     timeout=self.timeout)
                rcode = harness.rcode_text(r)
                got = tuple(sorted(addresses(r))) if rcode == "NOERROR" else rcode
            except Exception as e:  # noqa: BLE001 - recorded and judged later
                got = "TIMEOUT" if "timed out" in str(e).lower() or \
                    type(e).__name__ == "Timeout" else "ERROR: %r" % e
            self.results.append((t0, time.monotonic(), name, port, got))
            if self.pause:
                time.sleep(self.pause)

    def stop(self):
        self._stop.set()
        self._thread.join(5)


# ------------------------------------------------------------ tmpfs


class Tmpfs:
    """A small tmpfs mounted on a directory of the test's own.  Skips the
    test when mounting is not permitted (e.g. an unprivileged container)."""

    def __init__(self, path, size="1m", readonly=False):
        self.path = path
        self.filler = os.path.join(path, "filler")
        os.makedirs(path, exist_ok=True)
        opts = "size=%s,mode=0755" % size + (",ro" if readonly else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", path],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root and "
                        "CAP_SYS_ADMIN): %s" % r.stderr.strip())
        self.mounted = True

    def remount(self, readonly):
        subprocess.run(["mount", "-o", "remount,%s" % ("ro" if readonly else "rw"),
                        self.path], check=True, capture_output=True)

    def fill(self):
        """Writes a filler file until the file system is full."""
        chunk = b"\0" * 4096
        with open(self.filler, "ab", buffering=0) as f:
            while True:
                try:
                    f.write(chunk)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
        st = os.statvfs(self.path)
        return st.f_bavail

    def free(self):
        os.unlink(self.filler)

    def umount(self):
        if self.mounted:
            r = subprocess.run(["umount", self.path], capture_output=True)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", self.path], capture_output=True)
            self.mounted = False


def tmpfs_mounts():
    """Body of a fixture: yields mount(path, size='1m', readonly=False) ->
    Tmpfs, and unmounts them all at the end of the test.  Request the
    fixture before start_hard, so that hard is stopped first (fixtures are
    torn down in reverse order); a busy mount is detached lazily anyway."""
    mounted = []

    def mount(path, size="1m", readonly=False):
        t = Tmpfs(path, size, readonly)
        mounted.append(t)
        return t
    yield mount
    for t in mounted:
        t.umount()


# ------------------------------------------------------------ Prometheus


def prometheus_families(text):
    """{family name: family} of a text in the Prometheus format, read by
    python3-prometheus-client's parser, checking what that lenient parser
    lets pass: each family once, typed and documented, each sample once."""
    from prometheus_client.parser import text_string_to_metric_families
    families = {}
    seen = set()
    for family in text_string_to_metric_families(text):
        assert family.name not in families, "family %s twice" % family.name
        assert family.type in ("counter", "gauge"), (family.name, family.type)
        assert family.documentation, family.name
        families[family.name] = family
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in seen, "sample twice: %s" % (key,)
            seen.add(key)
            if family.type == "counter":
                assert s.name == family.name + "_total", s
            else:
                assert s.name == family.name, s
    return families


def prometheus_samples(families, name):
    """{labels as a sorted tuple: value} of one family."""
    return {tuple(sorted(s.labels.items())): s.value
            for s in families[name].samples}


# ------------------------------------------------------------ processes


def proc_status(pid):
    """/proc/PID/status as a dict of field -> text."""
    with open("/proc/%d/status" % pid) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False
