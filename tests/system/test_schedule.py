"""The check schedule (issue 11 items 1-3, issue 12's even spread), seen
where it matters: at real HTTP servers.  A check's arrival time is recorded
by the server as it accepts the connection.  Jitter makes every interval
differ within its bounds; one hard's checks are spread over the whole
interval, not bunched into its first second; restored addresses start
spread over a whole interval, unknown ones at once; a check that disagrees
with health is confirmed after recheck_frequency; an idle name is checked
at idle_check_frequency and woken by a query (checked again at once only
if not checked in the last check_frequency); idle_after is at least
check_frequency; a reload of the interval moves pending checks (a restored
first check too) as har.conf(5) says, and a changed schedule option counts
as a changed name; the names table shows the last query time and
idleness."""

import math
import os
import selectors
import signal
import socket
import threading
import time

import pytest

import harness
from harness import answer, wait_answer
from statehelpers import log_lines, sql, wait_log

A, B = "127.0.0.2", "127.0.0.3"
RESPONSE = (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n"
            b"Connection: close\r\n\r\nok\n")


class ArrivalServer:
    """One thread answering HTTP 200 on one port of many loopback addresses,
    recording when each connection is accepted (time.monotonic) and at
    which address."""

    def __init__(self, addrs):
        self.addrs = list(addrs)
        self.lock = threading.Lock()
        self.arrivals = []  # (monotonic time, address)
        self.selector = selectors.DefaultSelector()
        self.listeners = self._bind()
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _bind(self):
        for _ in range(50):
            port = harness.free_port(self.addrs[0])
            listeners = []
            try:
                for addr in self.addrs:
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    listeners.append(s)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((addr, port))
                    s.listen(256)
                    s.setblocking(False)
            except OSError:
                for s in listeners:
                    s.close()
                continue
            self.port = port
            for s in listeners:
                self.selector.register(s, selectors.EVENT_READ, ("listen", s))
            return listeners
        raise RuntimeError("no port free on every address")

    def url(self, addr=None):
        return "http://%s:%d/" % (addr or self.addrs[0], self.port)

    def _serve(self):
        buffers = {}
        while not self.stopping:
            for key, _ in self.selector.select(0.05):
                kind, sock = key.data
                if kind == "listen":
                    self._accept(sock, buffers)
                else:
                    self._read(sock, buffers)

    def _accept(self, listener, buffers):
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, OSError):
                return
            at = time.monotonic()
            with self.lock:
                self.arrivals.append((at, listener.getsockname()[0]))
            conn.setblocking(False)
            buffers[conn] = b""
            self.selector.register(conn, selectors.EVENT_READ, ("conn", conn))

    def _read(self, conn, buffers):
        try:
            data = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        buffers[conn] += data
        if data and b"\r\n\r\n" not in buffers[conn]:
            return
        if data:
            try:
                conn.sendall(RESPONSE)
            except OSError:
                pass
        self.selector.unregister(conn)
        del buffers[conn]
        conn.close()

    def times(self, addr=None, since=0.0):
        with self.lock:
            return [t for t, a in self.arrivals
                    if t >= since and (addr is None or a == addr)]

    def stop(self):
        self.stopping = True
        self.thread.join(2)
        for key in list(self.selector.get_map().values()):
            key.data[1].close()
        self.selector.close()


@pytest.fixture
def start_arrivals():
    started = []

    def start(addrs):
        s = ArrivalServer(addrs)
        started.append(s)
        return s
    yield start
    for s in started:
        s.stop()


@pytest.fixture
def up(start_upstream):
    return start_upstream()


def name_block(title, addrs, url, **opts):
    """One candidate checking url at every address of addrs."""
    lines = ["name %s {" % title]
    lines += ["    %s = %s" % kv for kv in opts.items()]
    lines.append('    candidate c {')
    lines.append('        check_address = "%s"' % url)
    lines.append('        address = { %s }' % ", ".join(addrs))
    lines.append("    }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def intervals(times):
    return [b - a for a, b in zip(times, times[1:])]


def per_second(times, start, seconds):
    counts = [0] * seconds
    for t in times:
        second = math.floor(t - start)
        if 0 <= second < seconds:
            counts[second] += 1
    return counts


def test_jitter_varies_intervals_within_bounds(start_hard, start_arrivals, up):
    """check_frequency 1, check_jitter 0.5: after the first check every
    interval lies within f(1 - j/2) .. f(1 + j/2) (loose by the machine's
    delays), they differ from each other, and they average f."""
    addrs = ["127.0.0.%d" % i for i in range(2, 6)]
    server = start_arrivals(addrs)
    start_hard(name_block("jitter.test", addrs, server.url("jitter.test"),
                          check_frequency=1, check_jitter=0.5,
                          check_timeout=0.5), upstream=up)
    harness.wait_until(lambda: all(len(server.times(a)) >= 8 for a in addrs), 20,
                       what="eight checks of each address")
    all_intervals = []
    for addr in addrs:
        times = server.times(addr)
        assert len(times) >= 7, (addr, times)
        # the first interval joins the grid: half an interval to one and a
        # half, widened by the jitter's j/4 either way
        first = times[1] - times[0]
        assert 0.375 - 0.1 <= first <= 1.625 + 0.15, (addr, first)
        steady = intervals(times[1:])
        for interval in steady:
            assert 0.75 - 0.15 <= interval <= 1.25 + 0.15, (addr, steady)
        all_intervals += steady
    spread = max(all_intervals) - min(all_intervals)
    assert spread > 0.2, "intervals do not vary: %s" % all_intervals
    mean = sum(all_intervals) / len(all_intervals)
    assert 0.9 <= mean <= 1.1, all_intervals


ADDRESSES = ["127.0.1.%d" % i for i in range(1, 201)]


def test_checks_spread_over_the_interval(start_hard, start_arrivals, up):
    """200 addresses at check_frequency 4: the first round comes at once
    (within about a second); after it, every second of the interval gets
    about a quarter of the checks, not the first second all of them."""
    server = start_arrivals(ADDRESSES)
    start_hard(name_block("spread.test", ADDRESSES, server.url("spread.test"),
                          check_frequency=4, check_timeout=2), upstream=up)
    harness.wait_until(lambda: len(server.times()) >= 200, 10,
                       what="the first round")
    start = min(server.times())
    harness.wait_until(lambda: max(server.times()) >= start + 14, 20,
                       what="14 s of checks")
    times = server.times()
    first = sorted(times)[:200]
    assert first[-1] - first[0] < 1.5, "first round not at once: %.2f s" % (
        first[-1] - first[0])
    # steady state: two whole intervals after the first one and a half, in
    # two-second windows: a check a loaded machine starts late falls in the
    # next second, not outside the window.
    steady = per_second(times, first[0] + 6, 8)
    windows = [steady[i] + steady[i + 1] for i in range(0, 8, 2)]
    mean = 2 * 200 / 4
    print("checks per second:", per_second(times, first[0], 14))
    for count in windows:
        assert mean * 0.75 <= count <= mean * 1.25, windows


def test_restored_addresses_spread_unknown_at_once(workdir, start_hard,
                                                   start_arrivals, up):
    """Warm start: addresses whose state the data file restores are first
    checked spread over a whole check_frequency; without a data file (or
    unknown state) they are all checked within the first second."""
    server = start_arrivals(ADDRESSES)
    data = os.path.join(workdir, "state.db")
    body = name_block("warm.test", ADDRESSES, server.url("warm.test"),
                      check_frequency=4, check_timeout=2)
    h = start_hard(body, upstream=up, data_file=data)
    harness.wait_until(lambda: len(server.times()) >= 200, 10,
                       what="the first round")
    wait_log(h, r"warm\.test candidate c address 127\.0\.1\.200 is up")
    # every address's state in the file, or it is unknown after the restart
    harness.wait_until(lambda: sql(data, "SELECT count(*) AS n FROM candidates"
                                   " WHERE healthy = 1") == [{"n": 200}], 10,
                       what="the 200 addresses up in the data file")
    h.stop()
    restarted = time.monotonic()
    start_hard(body, upstream=up, data_file=data)
    harness.wait_until(lambda: len(server.times(since=restarted)) >= 200, 10,
                       what="the first round after the restart")
    first = sorted(server.times(since=restarted))[:200]
    counts = per_second(first, restarted, 5)
    print("first checks per second after a warm start:", counts)
    assert first[-1] - first[0] > 3, counts
    assert max(counts) <= 80, counts


def test_recheck_shortens_failover(start_hard, start_http, up):
    """check_frequency 3, fall 3: a server killed right after a check is
    found failing about 3 s later and rechecked every second, so it leaves
    the answers after about 5 s, not 9."""
    sa, sb = start_http(A), start_http(B)
    h = start_hard("""
name fail.test {
    check_frequency = 3
    check_timeout = 1
    fall = 3
    selection_method = all
    candidate a { check_address = "%s" }
    candidate b { check_address = "%s" }
}
""" % (sa.url(), sb.url()), upstream=up)
    wait_answer(h, "fail.test", [A, B])
    # Killed once a check's whole response is sent, not once its request
    # is seen: a server killed between the two fails that check at once
    # (the failover then takes 2 s, not 5).
    sent = sa.responses_sent()
    harness.wait_until(lambda: sa.responses_sent() > sent, 5, 0.005,
                       what="a check of a")
    killed = time.monotonic()
    sa.stop()
    wait_answer(h, "fail.test", [B], timeout=12)
    took = time.monotonic() - killed
    print("left the answers %.2f s after the kill" % took)
    assert 4 <= took <= 7.5, "left after %.1f s" % took


def test_idle_name_checked_slowly_and_woken(workdir, start_hard,
                                            start_arrivals, up):
    """idle_after 2, idle_check_frequency 5: unqueried, the name goes idle
    (logged once) and is checked every 5 s instead of every second; a
    query is answered at once and wakes it (logged once), its address
    checked at once and every second again; the names table shows the
    last query time and idle."""
    server = start_arrivals([A])
    data = os.path.join(workdir, "state.db")
    h = start_hard(name_block("idle.test", [A], server.url("idle.test"),
                              check_frequency=1, check_jitter=0,
                              idle_after=2, idle_check_frequency=5)
                   + name_block("busy.test", [B], "http://%s:1/" % B),
                   upstream=up, data_file=data)
    wait_log(h, r"idle\.test is idle", timeout=5)
    harness.wait_until(lambda: sql(data, "SELECT idle FROM names WHERE"
                                   " name = 'idle.test'") == [{"idle": 1}], 3,
                       what="idle in the names table")
    row = sql(data, "SELECT last_query_time FROM names WHERE name = 'idle.test'")
    assert row == [{"last_query_time": None}]
    idle_from = time.monotonic()
    time.sleep(7)
    idle_checks = server.times(since=idle_from)
    assert 1 <= len(idle_checks) <= 2, intervals(idle_checks)
    queried = time.monotonic()
    queried_wall = time.time()
    assert answer(h, "idle.test") == [A]
    harness.wait_until(lambda: server.times(since=queried), 1.5, 0.01,
                       what="the check a query triggers")
    wait_log(h, r"idle\.test is no longer idle \(queried\)")
    # kept awake by queries: checked every second again
    for _ in range(8):
        answer(h, "idle.test")
        time.sleep(0.5)
    awake = server.times(since=queried)
    assert len(awake) >= 4, intervals(awake)
    assert max(intervals(awake)) < 1.9, intervals(awake)  # idle: 5 s
    harness.wait_until(lambda: sql(data, "SELECT idle FROM names WHERE"
                                   " name = 'idle.test'") == [{"idle": 0}], 3,
                       what="awake in the names table")
    last = sql(data, "SELECT last_query_time FROM names"
               " WHERE name = 'idle.test'")[0]["last_query_time"]
    assert queried_wall - 0.5 <= last <= time.time() + 0.5
    assert len(log_lines(h, r"idle\.test is idle")) == 1
    assert len(log_lines(h, r"idle\.test is no longer idle")) == 1


def test_reload_to_shorter_check_frequency_applies_now(workdir, start_hard,
                                                       start_arrivals, up):
    """A reload from check_frequency 60 to 1 moves each pending check onto
    the new schedule: checked within a second or so, not after a minute."""
    server = start_arrivals([A])
    # check_timeout set: its default follows check_frequency, and a changed
    # check_timeout restarts the check by itself
    h = start_hard(name_block("reload.test", [A], server.url("reload.test"),
                              check_frequency=60, check_timeout=0.5),
                   upstream=up)
    harness.wait_until(lambda: server.times(), 3, what="the first check")
    time.sleep(1)
    with open(h.conf + ".new", "w") as f:
        f.write(h.config.replace("check_frequency = 60", "check_frequency = 1"))
    os.replace(h.conf + ".new", h.conf)
    reloaded = time.monotonic()
    h.signal(signal.SIGHUP)
    harness.wait_until(lambda: len(server.times(since=reloaded)) >= 3, 8,
                       what="checks at the new frequency")


def test_idle_state_kept_over_a_restart(workdir, start_hard, start_arrivals,
                                        up):
    """The last query time is kept in the data file: a name idle when hard
    stopped is idle again as soon as it starts, not idle_after later."""
    server = start_arrivals([A])
    data = os.path.join(workdir, "state.db")
    body = name_block("idle.test", [A], server.url("idle.test"),
                      check_frequency=1, idle_after=2, idle_check_frequency=5)
    h = start_hard(body, upstream=up, data_file=data)
    wait_answer(h, "idle.test", [A])
    wait_log(h, r"idle\.test is idle", timeout=5)
    row = harness.wait_until(
        lambda: sql(data, "SELECT last_query_time, idle FROM names"
                    " WHERE idle = 1"), 3, what="idle in the names table")[0]
    assert row["last_query_time"] is not None
    h.stop()
    # Idle within the first sweeps after the start; not restored, it would
    # be idle_after (2 s) after it.  Counted from before the start, which
    # a loaded machine may make slow.
    started = time.monotonic()
    h = start_hard(body, upstream=up, data_file=data)
    wait_log(h, r"idle\.test is idle",
             timeout=max(0.1, started + 1.6 - time.monotonic()))
    assert sql(data, "SELECT last_query_time FROM names") == [
        {"last_query_time": row["last_query_time"]}]


def rewrite(h, old, new):
    """Replaces old by new in hard's configuration and sends SIGHUP;
    returns the monotonic time of the signal."""
    assert old in h.config, (old, h.config)
    h.config = h.config.replace(old, new)
    with open(h.conf + ".new", "w") as f:
        f.write(h.config)
    os.replace(h.conf + ".new", h.conf)
    at = time.monotonic()
    h.signal(signal.SIGHUP)
    return at


def test_reload_moves_a_restored_first_check(workdir, start_hard,
                                             start_arrivals, up):
    """Warm start at check_frequency 3600: the restored address's first
    check is somewhere in the next hour.  A reload to check_frequency 1 a
    second later brings it to the new grid at once: checked within about
    a second, not an hour later."""
    server = start_arrivals([A])
    data = os.path.join(workdir, "state.db")
    body = name_block("warm.test", [A], server.url("warm.test"),
                      check_frequency=3600, check_timeout=0.5)
    h = start_hard(body, upstream=up, data_file=data)
    wait_log(h, r"warm\.test candidate c address 127\.0\.0\.2 is up")
    harness.wait_until(lambda: sql(data, "SELECT healthy FROM candidates")
                       == [{"healthy": 1}], 10,
                       what="the address up in the data file")
    h.stop()
    h = start_hard(body, upstream=up, data_file=data)
    time.sleep(1)
    reloaded = rewrite(h, "check_frequency = 3600", "check_frequency = 1")
    wait_log(h, r"reloaded .*1 changed")
    harness.wait_until(lambda: len(server.times(since=reloaded)) >= 2, 6,
                       what="checks at the new frequency")


def test_reload_to_longer_check_frequency(workdir, start_hard, start_arrivals,
                                          up):
    """A reload from check_frequency 1 to 6 right after a check moves the
    next one no sooner than half a new interval (3 s) after that check, to
    its place on the new grid: within one and a half new intervals of it;
    and the one after that comes one new interval later."""
    server = start_arrivals([A])
    h = start_hard(name_block("longer.test", [A], server.url("longer.test"),
                              check_frequency=1, check_jitter=0,
                              check_timeout=0.5), upstream=up)
    harness.wait_until(lambda: len(server.times()) >= 2, 3,
                       what="two checks")
    count = len(server.times())
    harness.wait_until(lambda: len(server.times()) > count, 2, 0.005,
                       what="a check")
    last = server.times()[-1]
    rewrite(h, "check_frequency = 1", "check_frequency = 6")
    wait_log(h, r"reloaded .*1 changed")
    after = harness.wait_until(lambda: server.times(since=last + 0.01), 10,
                               what="the check after the reload")
    # (the server's arrival times carry its own scheduling delays: 0.15 s
    # either way on a loaded machine)
    assert last + 3 - 0.15 <= after[0] <= last + 9 + 0.7, after[0] - last
    following = harness.wait_until(
        lambda: server.times(since=after[0] + 0.01), 8,
        what="the next check on the new grid")
    assert 6 - 1 <= following[0] - after[0] <= 6 + 1, \
        following[0] - after[0]


def test_short_idle_after_acts_as_check_frequency(start_hard, start_arrivals,
                                                  up):
    """idle_after 1 with check_frequency 10 acts as 10: a query every
    1.5 s keeps the name awake, checked every 10 s, not idling between
    two queries and woken (and checked at once) by each."""
    server = start_arrivals([A])
    h = start_hard(name_block("short.test", [A], server.url("short.test"),
                              check_frequency=10, idle_after=1,
                              check_timeout=0.5), upstream=up)
    wait_answer(h, "short.test", [A])
    began = time.monotonic()
    for _ in range(9):
        assert answer(h, "short.test") == [A]
        time.sleep(1.5)
    checks = server.times(since=began - 1)
    print("checks after the start:", [t - began for t in checks])
    assert 1 <= len(checks) <= 3, len(checks)
    assert log_lines(h, r"short\.test is (no longer )?idle") == []


def test_wake_keeps_a_recent_check(start_hard, start_arrivals, up):
    """A query that wakes an idle name right after one of its checks does
    not check it again at once: its next check is at its place on the
    awake grid, at least half a check_frequency (2 s) after that one; the
    wake is logged as checking 0 of its 1 addresses now."""
    server = start_arrivals([A])
    h = start_hard(name_block("wake.test", [A], server.url("wake.test"),
                              check_frequency=4, check_jitter=0,
                              idle_after=4, idle_check_frequency=8,
                              check_timeout=0.5), upstream=up)
    wait_log(h, r"wake\.test is idle", timeout=8)
    idle_from = time.monotonic()
    harness.wait_until(lambda: server.times(since=idle_from), 10, 0.005,
                       what="a check of the idle name")
    last = server.times(since=idle_from)[0]
    queried = time.monotonic()
    assert answer(h, "wake.test") == [A]
    wait_log(h, r"wake\.test is no longer idle \(queried\): checking 0 of "
             r"its 1 addresses now")
    for _ in range(7):  # kept awake
        answer(h, "wake.test")
        time.sleep(1)
    checks = server.times(since=last + 0.01)
    print("query %.2f s after the check; checks after it at %s" % (
        queried - last, [t - last for t in checks]))
    assert checks, "no check after the wake"
    assert last + 2 - 0.15 <= checks[0] <= last + 6 + 0.7, checks[0] - last
    assert len(log_lines(h, r"wake\.test is idle")) == 1


SCHEDULE_OPTIONS = [("check_jitter", "0.1", "0.3"),
                    ("recheck_frequency", "1", "0.5"),
                    ("idle_after", "3600", "7200"),
                    ("idle_check_frequency", "60", "120")]


def test_reload_counts_a_changed_schedule_option(start_hard, up):
    """A reload that changes only check_jitter, recheck_frequency,
    idle_after or idle_check_frequency counts the name as changed in its
    summary."""
    h = start_hard(name_block("opts.test", [A], "http://%s:1/" % A,
                              check_frequency=5, **{
                                  option: value for option, value, _
                                  in SCHEDULE_OPTIONS}), upstream=up)
    for count, (option, old, new) in enumerate(SCHEDULE_OPTIONS, 1):
        rewrite(h, "%s = %s\n" % (option, old), "%s = %s\n" % (option, new))
        lines = wait_log(h, r"reloaded .*: 1 names \(", count=count)
        assert lines[-1].endswith("(0 added, 0 removed, 1 changed)"), \
            (option, lines[-1])


def age_recorded_checks(db, seconds):
    """As if hard had been stopped `seconds` longer: every recorded check
    moved that far into the past."""
    sql(db, "UPDATE candidates SET last_check_time = last_check_time - %d"
        % seconds, readonly=False)


@pytest.mark.parametrize("server_while_stopped", ["died", "came_back"])
def test_state_older_than_the_interval_is_checked_at_once(
        workdir, start_hard, start_http, up, server_while_stopped):
    """check_frequency 300: a restored address whose last check is older
    than that (hard stopped for 10 minutes) is checked at once, not at its
    place in the interval.  A server that died while hard was stopped
    leaves the answers within about a check timeout of the start (SERVFAIL
    here); one that came back is answered once its first check passes."""
    server = start_http(A)
    if server_while_stopped == "came_back":
        server.set(status=503)
    db = os.path.join(workdir, "state.db")
    body = """
name stale.test {
    check_frequency = 300
    check_timeout = 1
    failure_mode = servfail
    candidate a { check_address = "%s" }
}
""" % server.url()
    h = start_hard(body, upstream=up, data_file=db)
    assert not log_lines(h, r"restored addresses were last checked"), h.log()
    before = [A] if server_while_stopped == "died" else "SERVFAIL"
    wait_answer(h, "stale.test", before)
    healthy = 1 if server_while_stopped == "died" else 0
    harness.wait_until(lambda: sql(db, "SELECT healthy FROM candidates") ==
                       [{"healthy": healthy}], 5, what="the check in the file")
    assert h.stop() == 0
    age_recorded_checks(db, 600)
    if server_while_stopped == "died":
        server.stop()
    else:
        server.set(status=200)
    after = "SERVFAIL" if server_while_stopped == "died" else [A]
    h = start_hard(body, upstream=up, data_file=db)
    # and says how many it checks at once (a fleet's restart can be read
    # from it: about the restart's gap over check_frequency of them)
    assert len(log_lines(h, r"1 of 1 restored addresses were last checked longer "
                         r"ago than their check_frequency: checking them now")) == 1, h.log()
    # 1 s of spread, 1 s of check timeout; at its place in a 300 s
    # interval the first check would come minutes later (or by chance
    # sooner: a 3% chance that the old behaviour passes this bound).
    wait_answer(h, "stale.test", after, timeout=10)
