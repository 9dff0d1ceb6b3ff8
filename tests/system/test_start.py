"""A start comes up whenever it can answer (issue 17, item 1; SPEC 6).

A data file that cannot be opened or made, and a `user` hard has not the
privilege to become, no longer stop a start: a host whose resolver does
not start has no DNS, and then cannot fetch the fix.  hard answers with
its state in memory, logs why at error priority, says so in its service
status (test_notify.py) and retries the file every 5 s; `hard -t` still
reports the file as an error, so a configuration is caught before it is
pushed.  What still stops a start is tested in test_config.py (the port
taken, an invalid configuration)."""

import os
import pwd
import re
import subprocess
import tempfile

import pytest

import harness
from statehelpers import name_block, tmpfs_mounts, wait_sql

A = "127.0.0.2"


@pytest.fixture
def tmpfs():
    yield from tmpfs_mounts()


@pytest.fixture
def up(start_upstream):
    return start_upstream("--host-record=fwd.test,192.0.2.1")


BODY = name_block("f.test", [("a", None, "address = { %s }" % A)],
                  check_frequency=30, failure_mode="all")


def write_config(path, up, data_file, port=None, extra=""):
    with open(path, "w") as f:
        f.write(harness.hard_config(BODY, up.endpoint, port or harness.free_port(),
                                    data_file=data_file, extra=extra))
    os.chmod(path, 0o644)
    return path


def run_hard_as(as_nobody, *args, **kw):
    """hard with args, run to its end as nobody (setpriv) or as the
    test's user."""
    if as_nobody:
        return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup",
                               "--clear-groups", harness.HARD, *args], **kw)
    return subprocess.run([harness.HARD, *args], **kw)


def check_only(conf, *args, as_nobody=False):
    """`hard -t`: must refuse; returns its one line of standard error."""
    r = run_hard_as(as_nobody, "-t", *args, "-c", conf,
                    stdin=subprocess.DEVNULL, capture_output=True, text=True,
                    timeout=10)
    assert r.returncode == 1, "-t exit %d: %s%s" % (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


class Started:
    """hard started by the test itself (as another user, with setpriv),
    stopped by its pid."""

    def __init__(self, conf, port, *args, as_nobody=False):
        self.port = port
        self.err = tempfile.TemporaryFile(mode="w+")
        argv = [harness.HARD, "-f", *args, "-c", conf]
        if as_nobody:
            argv = ["setpriv", "--reuid=nobody", "--regid=nogroup",
                    "--clear-groups", *argv]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.err)

    def log(self):
        self.err.seek(0)
        return self.err.read()

    def wait_answer(self):
        def answered():
            assert self.proc.poll() is None, "hard exited %s:\n%s" % (
                self.proc.returncode, self.log())
            try:
                r = harness.query_at("127.0.0.1", self.port, "f.test", timeout=0.5)
            except Exception:
                return None
            return harness.addresses(r) == [A]
        harness.wait_until(answered, 10, what="hard answering f.test")

    def stop(self):
        harness._kill(self.proc)
        return self.proc.returncode


def assert_logged_once(log, db, reason):
    """The one error line of the start, at once: the writer's retries do
    not repeat it."""
    pattern = r"cannot open data file %s: .*%s.*; answering with the state in " \
              r"memory and retrying every 5 s" % (re.escape(db), reason)
    found = [line for line in log.splitlines() if re.search(pattern, line)]
    assert len(found) == 1, log


@pytest.mark.parametrize("case", ["directory", "fifo", "under_a_file",
                                  "read_only_file_system"])
def test_unusable_data_file_does_not_stop_a_start(workdir, tmpfs, start_hard, up, case):
    """-t says what is wrong with the file, in one line naming it; the
    start comes up, answers, and logs the same once; nothing is made
    where nothing could be."""
    if case == "directory":
        db = os.path.join(workdir, "state")
        os.mkdir(db)
        t_reason = start_reason = "Is a directory"
    elif case == "fifo":
        db = os.path.join(workdir, "pipe")
        os.mkfifo(db)
        t_reason = start_reason = "not a regular file"
    elif case == "under_a_file":
        plain = os.path.join(workdir, "plain")
        open(plain, "w").close()
        db = os.path.join(plain, "sub", "har.db")
        t_reason = "cannot create it: %s is not a directory" % plain
        start_reason = "cannot create directory %s/sub: Not a directory" % plain
    else:
        mnt = os.path.join(workdir, "ro")
        tmpfs(mnt, "1m", readonly=True)
        db = os.path.join(mnt, "har.db")
        t_reason = "cannot create it in %s: Read-only file system" % mnt
        start_reason = "Read-only file system"
    conf = write_config(os.path.join(workdir, "har.conf"), up, db)
    assert check_only(conf) == '%s: data_file "%s": %s' % (conf, db, t_reason)
    h = start_hard(BODY, upstream=up, data_file=db)
    assert harness.addresses(h.query("f.test")) == [A]
    assert harness.addresses(h.query("fwd.test")) == ["192.0.2.1"]
    assert_logged_once(h.log(), db, re.escape(start_reason))
    if case in ("under_a_file", "read_only_file_system"):
        assert not os.path.exists(db)


def test_data_file_without_permission_does_not_stop_a_start(shared_dir, up):
    """Permission is the user's that hard runs as: a hard started as
    nobody whose file is in a directory nobody cannot enter, and a root
    hard with -u nobody whose file only root could reach.  -t, run as the
    start would be, reports each; each start answers, and leaves no file
    behind."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start hard as root and as nobody")
    private = os.path.join(shared_dir, "private")
    os.mkdir(private, 0o700)
    db = os.path.join(private, "har.db")
    port = harness.free_port()
    conf = write_config(os.path.join(shared_dir, "har.conf"), up, db, port)
    assert check_only(conf, as_nobody=True) == \
        '%s: data_file "%s": Permission denied' % (conf, db)
    h = Started(conf, port, as_nobody=True)
    try:
        h.wait_answer()
        assert_logged_once(h.log(), db, "Permission denied")
    finally:
        assert h.stop() == 0, h.log()
    assert check_only(conf, "-u", "nobody") == \
        '%s: data_file "%s": user nobody cannot reach it: Permission denied' % (conf, db)
    port = harness.free_port()
    conf = write_config(conf, up, db, port)
    h = Started(conf, port, "-u", "nobody")
    try:
        h.wait_answer()
        assert_logged_once(h.log(), db, "user nobody cannot open it: Permission denied")
    finally:
        assert h.stop() == 0, h.log()
    assert os.listdir(private) == [], "a file was left behind"


def test_data_file_opens_once_it_can(shared_dir, up):
    """The start's retries: once the directory lets hard in, the file is
    made and holds the state, within the 5 s retry interval (and slack)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start hard as nobody")
    private = os.path.join(shared_dir, "private")
    os.mkdir(private, 0o000)
    os.chown(private, pwd.getpwnam("nobody").pw_uid, -1)
    db = os.path.join(private, "har.db")
    port = harness.free_port()
    conf = write_config(os.path.join(shared_dir, "har.conf"), up, db, port)
    h = Started(conf, port, as_nobody=True)
    try:
        h.wait_answer()
        assert_logged_once(h.log(), db, "Permission denied")
        os.chmod(private, 0o700)
        wait_sql(db, "SELECT count(*) AS n FROM candidates WHERE ip_address = '%s'" % A,
                 lambda rows: rows and rows[0]["n"] == 1)
        harness.wait_until(lambda: "data file %s is open again" % db in h.log(),
                           5, what="the log to say the file is open")
    finally:
        assert h.stop() == 0, h.log()


def test_user_without_the_privilege_to_change_is_a_warning(shared_dir, up):
    """`user` set, and hard started unprivileged (a DynamicUser= unit):
    -t says ok (a reload takes the same file), and the start warns that
    hard stays the user it is, and answers."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start hard as nobody")
    port = harness.free_port()
    conf = write_config(os.path.join(shared_dir, "har.conf"), up, "", port,
                        extra='user = "daemon"\n')
    r = run_hard_as(True, "-t", "-c", conf, capture_output=True, text=True,
                    timeout=10)
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr
    h = Started(conf, port, as_nobody=True)
    try:
        h.wait_answer()
        assert re.search(r"not started as root: cannot become user daemon, so "
                         r"hard stays user \d+", h.log()), h.log()
    finally:
        assert h.stop() == 0, h.log()


def test_cold_start_answers_from_a_whole_first_round(start_hard, start_http, up):
    """Nothing restored: hard binds its listeners but reads them only once
    every address has been checked (or a second has passed); the kernel
    holds the queries meanwhile.  Queried every 20 ms from the moment it
    is started, a name with a near and a far server, both up, gets no
    SERVFAIL and never the far server (the old hard answered SERVFAIL
    until the first check ended, then whichever server it had seen)."""
    near, far = start_http(A), start_http("127.0.0.3", delay=0.1)
    body = """
name cold.test {
    check_frequency = 0.4
    check_timeout = 0.3
    failure_mode = servfail
    candidate near { check_address = "%s" }
    candidate far { check_address = "%s" }
}
""" % (near.url(), far.url())
    h = start_hard(body, upstream=up, wait=False, extra="first_round_wait = 1\n")
    seen = []
    deadline = harness.time.monotonic() + 3
    while harness.time.monotonic() < deadline:
        try:
            seen.append(harness.answer(h, "cold.test", timeout=0.05))
        except harness.dns.exception.Timeout:
            h.assert_alive()
        harness.time.sleep(0.02)
    assert seen, "no reply within 3 s of the start; log:\n" + h.log()
    assert all(got == [A] for got in seen), seen


def test_cold_start_without_the_hold(start_hard, start_http, up):
    """first_round_wait = 0: hard reads its listeners at once, and answers
    SERVFAIL (failure_mode servfail) until its first check has ended: the
    behaviour the hold exists to avoid, for whoever prefers it."""
    server = start_http(A, delay=0.5)
    body = """
name cold.test {
    check_frequency = 30
    check_timeout = 5
    failure_mode = servfail
    candidate a { check_address = "%s" }
}
""" % server.url()
    h = start_hard(body, upstream=up, extra="first_round_wait = 0\n")
    assert harness.answer(h, "cold.test") == "SERVFAIL"
    harness.wait_answer(h, "cold.test", [A])
