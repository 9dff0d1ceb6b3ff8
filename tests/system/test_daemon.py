"""Running hard in production (issue 5, SPEC sections 2 and 7): SIGTERM,
the pidfile, privilege drop, daemon mode, -V/-h/-t, and the man pages."""

import os
import pwd
import re
import signal
import subprocess
import time

import pytest

import harness
from harness import run_hard
from statehelpers import (SQLITE3, answer, name_block, pid_alive, proc_status, sql_text,
                          sql_value, stable_value, wait_answer, wait_sql)

A = "127.0.0.2"
MAN_PAGES = [os.path.join(harness.REPO, p) for p in ("hard.8", "har.conf.5")]


@pytest.fixture
def up(start_upstream):
    return start_upstream("--host-record=fwd.test,192.0.2.1")


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def read_pid(pidfile):
    try:
        with open(pidfile) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    return int(text) if text.endswith("\n") else None


def wait_pidfile(pidfile, pid):
    """hard writes its pidfile just after it starts listening."""
    got = harness.wait_until(lambda: read_pid(pidfile), 5, what="pidfile %s" % pidfile)
    assert got == pid, "pidfile holds %s, not %d" % (got, pid)


def test_sigterm_flushes_and_removes_pidfile(workdir, start_hard, start_http, up):
    """SIGTERM: exit 0, pidfile removed, pending state written (the queries
    answered just before the signal are in the file), file whole."""
    s = start_http(A)
    pidfile = os.path.join(workdir, "hard.pid")
    db = os.path.join(workdir, "har.db")
    h = start_hard(name_block("t.test", [("a", s.url())], check_frequency=0.3),
                   upstream=up, data_file=db, args=("-f", "-p", pidfile))
    wait_pidfile(pidfile, h.pid)
    wait_answer(h, "t.test", [A])
    # settled: unchanged for three flush intervals (0.5 s), so that a late
    # flush of wait_answer's queries is not counted among the 25 below
    n = stable_value(db, "SELECT queries FROM names", quiet=1.5, timeout=15)
    for _ in range(25):  # answered, not yet written: the stop must write them
        assert answer(h, "t.test") == [A]
    h.signal(signal.SIGTERM)
    assert h.proc.wait(5) == 0
    h.expect_exit = True
    assert not os.path.exists(pidfile), "pidfile left behind"
    assert sql_value(db, "SELECT queries FROM names") == n + 25
    # The last batch stays committed in the WAL (the stop copies nothing
    # into the database: test_stop.py); sqlite3 reads it with the file.
    assert sql_text(db, "PRAGMA integrity_check") == "ok"
    # no listener left behind
    with pytest.raises(OSError):
        harness.tcp_connect(h.addr, h.port, timeout=0.5).close()


def test_second_instance_refused(workdir, start_hard, up):
    pidfile = os.path.join(workdir, "hard.pid")
    body = name_block("p.test", [("a", None, "address = { %s }" % A)],
                      check_frequency=30, failure_mode="all")
    h = start_hard(body, upstream=up, args=("-f", "-p", pidfile))
    wait_pidfile(pidfile, h.pid)
    conf2 = write(os.path.join(workdir, "second.conf"),
                  harness.hard_config(body, up.endpoint, harness.free_port()))
    res = run_hard("-f", "-p", pidfile, "-c", conf2, timeout=5)
    assert res.returncode == 1, (res.returncode, res.stderr)
    assert str(h.pid) in res.stderr and "running" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    h.assert_alive()
    with open(pidfile) as f:
        assert int(f.read()) == h.pid, "the refused instance touched the pidfile"
    assert answer(h, "p.test") == [A]
    # a stale pidfile (its process is gone) does not stop a new start
    h.stop()
    dead = subprocess.Popen(["true"])
    dead.wait()
    write(pidfile, "%d\n" % dead.pid)
    h2 = start_hard(body, upstream=up, args=("-f", "-p", pidfile))
    wait_pidfile(pidfile, h2.pid)
    assert answer(h2, "p.test") == [A]


def test_privilege_drop(workdir, shared_dir, start_hard, start_http, up):
    """Started as root with -u nobody: every uid and gid is nobody's, no
    supplementary group is left, and the data file (whose directory hard
    creates, owned by nobody) is still written."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start hard as root")
    nobody = pwd.getpwnam("nobody")
    s = start_http(A)
    db = os.path.join(shared_dir, "var", "har", "har.db")
    h = start_hard(name_block("priv.test", [("a", s.url())], check_frequency=0.3),
                   upstream=up, data_file=db, args=("-f", "-u", "nobody"))
    wait_answer(h, "priv.test", [A])
    st = proc_status(h.pid)
    assert st["Uid"].split() == [str(nobody.pw_uid)] * 4, st["Uid"]
    assert st["Gid"].split() == [str(nobody.pw_gid)] * 4, st["Gid"]
    assert st["Groups"].split() in ([], [str(nobody.pw_gid)]), st["Groups"]
    assert int(st["CapEff"], 16) == 0, "capabilities kept: %s" % st["CapEff"]
    for d in (os.path.dirname(db), os.path.dirname(os.path.dirname(db))):
        assert os.stat(d).st_uid == nobody.pw_uid, "%s not owned by nobody" % d
    assert os.stat(db).st_uid == nobody.pw_uid
    # written after the drop, and still being written
    wait_sql(db, "SELECT checks FROM candidates", lambda r: r and r[0]["checks"] >= 2)
    first = sql_value(db, "SELECT checks FROM candidates")
    wait_sql(db, "SELECT checks FROM candidates",
             lambda r: r[0]["checks"] >= first + 2)
    assert "running as user nobody" in h.log()
    assert not [l for l in h.log().splitlines() if "cannot write data file" in l]
    assert answer(h, "fwd.test") == ["192.0.2.1"]


@pytest.mark.parametrize("existing", [False, True], ids=["made", "given"])
def test_pidfile_removed_after_privilege_drop(shared_dir, start_hard, up, existing):
    """The documented set-up (hard(8), README): started as root with
    -u nobody -p DIR/hard.pid, where DIR is nobody's (systemd's
    RuntimeDirectory, or install -d -o nobody) or does not exist yet (/run/har
    after a reboot; hard then makes it, owned by nobody).  Running as nobody,
    hard removes the pid file at SIGTERM (issue 9 item 16)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start hard as root")
    nobody = pwd.getpwnam("nobody")
    rundir = os.path.join(shared_dir, "run", "har")
    os.mkdir(os.path.dirname(rundir))
    if existing:
        os.mkdir(rundir, 0o755)
        os.chown(rundir, nobody.pw_uid, nobody.pw_gid)
    pidfile = os.path.join(rundir, "hard.pid")
    body = name_block("pid.test", [("a", None, "address = { %s }" % A)],
                      check_frequency=30, failure_mode="all")
    h = start_hard(body, upstream=up, args=("-f", "-u", "nobody", "-p", pidfile))
    wait_pidfile(pidfile, h.pid)
    assert os.stat(rundir).st_uid == nobody.pw_uid, "pid directory not given to nobody"
    assert proc_status(h.pid)["Uid"].split()[0] == str(nobody.pw_uid)
    assert answer(h, "pid.test") == [A]
    h.signal(signal.SIGTERM)
    assert h.proc.wait(5) == 0
    h.expect_exit = True
    assert not os.path.exists(pidfile), "pidfile left behind:\n" + h.log()
    assert "pid file" not in h.log(), h.log()


def test_pidfile_in_root_directory_is_reported(shared_dir, start_hard, up):
    """A pid file in a directory only root may write cannot be removed by
    hard once it runs as nobody: it says so at start, and again at stop,
    naming the file and the fix, and still exits 0."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start hard as root")
    pidfile = os.path.join(shared_dir, "hard.pid")
    body = name_block("pid.test", [("a", None, "address = { %s }" % A)],
                      check_frequency=30, failure_mode="all")
    h = start_hard(body, upstream=up, args=("-f", "-u", "nobody", "-p", pidfile))
    wait_pidfile(pidfile, h.pid)
    harness.wait_until(lambda: "will be left behind" in h.log(), 3,
                       what="the warning at start")
    assert pidfile in h.log() and "/run/har" in h.log(), h.log()
    h.signal(signal.SIGTERM)
    assert h.proc.wait(5) == 0
    h.expect_exit = True
    stop = [l for l in h.log().splitlines() if "cannot remove pid file" in l]
    assert len(stop) == 1 and pidfile in stop[0] and "not writable" in stop[0], h.log()


def daemon_files(shared_dir, up):
    """A port, and the pid file, data file and configuration of a daemon
    answering d.test, in shared_dir."""
    port = harness.free_port()
    pidfile = os.path.join(shared_dir, "hard.pid")
    db = os.path.join(shared_dir, "har.db")
    conf = write(os.path.join(shared_dir, "har.conf"), harness.hard_config(
        name_block("d.test", [("a", None, "address = { %s }" % A)],
                   check_frequency=30, failure_mode="all"),
        up.endpoint, port, data_file=db))
    return port, pidfile, db, conf


def run_daemon(pidfile, conf):
    """hard without -f: the command's result (the daemon stays behind)."""
    return subprocess.run([harness.HARD, "-p", pidfile, "-c", conf],
                          stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=10)


def test_daemon_mode(workdir, shared_dir, up):
    """Without -f: the command returns 0 promptly; the daemon (detached:
    new session, cwd /, stdio on /dev/null) answers and writes its pid."""
    port, pidfile, db, conf = daemon_files(shared_dir, up)
    t0 = time.monotonic()
    res = run_daemon(pidfile, conf)
    took = time.monotonic() - t0
    pid = None
    try:
        assert res.returncode == 0, res.stderr
        assert took < 5, "the parent took %.1fs to return" % took
        assert res.stdout == "" and res.stderr == "", (res.stdout, res.stderr)
        pid = harness.wait_until(lambda: read_pid(pidfile), 5, what="the pidfile")
        assert pid_alive(pid)
        r = harness.wait_until(
            lambda: harness.query_at("127.0.0.1", port, "d.test", timeout=0.5),
            5, what="the daemon to answer")
        assert harness.addresses(r) == [A]
        assert answer_at(port, "fwd.test") == ["192.0.2.1"]
        st = proc_status(pid)
        assert st["Name"] == "hard"
        ppid = int(st["PPid"])
        assert ppid != os.getpid(), "still the child of its caller"
        assert ppid == 1 or os.getsid(pid) == pid, \
            "not detached: ppid %d, sid %d, pid %d" % (ppid, os.getsid(pid), pid)
        assert os.getsid(pid) != os.getsid(0), "still in the caller's session"
        assert os.readlink("/proc/%d/cwd" % pid) == "/"
        for fd in (0, 1, 2):
            assert os.readlink("/proc/%d/fd/%d" % (pid, fd)) == "/dev/null"
        wait_sql(db, "SELECT queries FROM names", lambda r: r and r[0]["queries"] >= 1)
        os.kill(pid, signal.SIGTERM)
        harness.wait_until(lambda: not pid_alive(pid), 5, what="the daemon to stop")
        assert not os.path.exists(pidfile)
        pid = None
    finally:
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def posix_lock_holders(path):
    """The pids holding a POSIX (fcntl) lock on path, from /proc/locks."""
    st = os.stat(path)
    inode = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    holders = set()
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if "POSIX" in fields and fields[-3] == inode:
                holders.add(int(fields[-4]))
    return holders


def test_daemon_holds_its_data_file(workdir, shared_dir, up):
    """The daemon's data file connection is its own, not its parent's: an
    SQLite connection does not cross fork() (its POSIX locks stay with the
    parent, which exits).  A daemon that kept it held no lock on its file,
    so an operator's sqlite3 took the file for unused and, on closing,
    copied and removed the WAL the daemon went on writing to (in CI the
    daemon's rows then never reached a reader).  Now the daemon holds the
    lock, a reader leaves the WAL alone, and the counts keep coming."""
    port, pidfile, db, conf = daemon_files(shared_dir, up)
    res = run_daemon(pidfile, conf)
    assert res.returncode == 0, res.stderr
    pid = harness.wait_until(lambda: read_pid(pidfile), 5, what="the pidfile")
    try:
        wait_sql(db, "SELECT count(*) AS n FROM daemon", lambda r: r[0]["n"] == 1)
        assert pid in posix_lock_holders(db + "-shm"), open("/proc/locks").read()
        # An operator's look, read-write as the sqlite3 CLI opens by default.
        r = subprocess.run([SQLITE3, db, "SELECT count(*) FROM candidates"],
                           capture_output=True, text=True, timeout=10,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        assert os.path.exists(db + "-wal"), "the reader removed the daemon's WAL"
        for _ in range(3):
            assert answer_at(port, "d.test") == [A]
        wait_sql(db, "SELECT queries FROM names", lambda r: r and r[0]["queries"] >= 3)
    finally:
        os.kill(pid, signal.SIGTERM)
        harness.wait_until(lambda: not pid_alive(pid), 5, what="the daemon to stop")


def answer_at(port, name):
    r = harness.query_at("127.0.0.1", port, name, timeout=1)
    return harness.addresses(r)


def test_daemon_start_failure_reported(workdir, up):
    """A start-up failure in daemon mode is still reported on stderr with
    exit 1 and a clear message naming the cause (everything that can fail
    is tried before detaching, while stderr is still the caller's)."""
    import socket
    port = harness.free_port()
    conf = write(os.path.join(workdir, "d.conf"), harness.hard_config(
        name_block("d.test", [("a", None, "address = { %s }" % A)]),
        up.endpoint, port))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        res = subprocess.run([harness.HARD, "-c", conf], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=10)
    assert res.returncode == 1 and str(port) in res.stderr, res.stderr


def test_version_help_and_check(workdir, up):
    res = run_hard("-V")
    assert res.returncode == 0 and res.stdout.strip() == "hard 0.1.0", res
    res = run_hard("-h")
    assert res.returncode == 0, res
    usage = res.stdout + res.stderr
    for flag in ("-f", "-d", "-t", "-c", "-p", "-u", "-V", "-h"):
        assert flag in usage, (flag, usage)
    # -t: ok, exit 0, and nothing touched (no data file, no socket)
    db = os.path.join(workdir, "never", "har.db")
    port = harness.free_port()
    conf = write(os.path.join(workdir, "t.conf"), harness.hard_config(
        name_block("t.test", [("a", None, "address = { %s }" % A)]), up.endpoint,
        port, data_file=db))
    res = run_hard("-t", "-c", conf)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res
    assert not os.path.exists(os.path.dirname(db))
    with open(conf, "a") as f:
        f.write("name bad.test {\n    ttl = -1\n    candidate x { }\n}\n")
    res = run_hard("-t", "-c", conf)
    assert res.returncode == 1 and "%s:" % conf in res.stderr, res


@pytest.mark.parametrize("page", MAN_PAGES, ids=os.path.basename)
def test_man_page_renders_cleanly(page):
    assert os.path.exists(page), page
    res = subprocess.run(["mandoc", "-T", "lint", "-W", "warning", page],
                         capture_output=True, text=True)
    assert res.stdout == "" and res.stderr == "", res.stdout + res.stderr
    res = subprocess.run(["groff", "-ww", "-mandoc", "-Tutf8", page],
                         capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    text = re.sub(".\x08", "", res.stdout)  # overstrike bold/underline
    assert "NAME" in text and "SEE ALSO" in text and len(text) > 2000
    env = dict(os.environ, MANWIDTH="80", MAN_KEEP_FORMATTING="0")
    res = subprocess.run(["man", "--warnings", "-l", page], capture_output=True,
                         text=True, env=env)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert "DESCRIPTION" in re.sub(".\x08", "", res.stdout)
