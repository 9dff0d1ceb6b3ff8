"""Live metrics from hard itself (issue 18 item 1; hard.8 METRICS): with
metrics_listen set, hard serves GET /metrics in the Prometheus text format
0.0.4 from memory, under the names and labels of `har-status --prometheus`.
Scraped with a real HTTP client (urllib) while real servers go down, real
queries come (dnspython), the configuration is reloaded and clients
misbehave; every text is read back by python3-prometheus-client's parser."""

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import harness
from statehelpers import (name_block, prometheus_families, prometheus_samples,
                          sql_value, wait_answer, wait_log)
from test_store import exclusive_lock

HAR_STATUS = os.path.join(harness.REPO, "contrib", "har-status")
A, B = "127.0.0.2", "127.0.0.3"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_CONNECTIONS = 8	# METRICS_MAX_CONNECTIONS
# Never a proxy from the environment: the requests go to hard itself.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def up(start_upstream):
    return start_upstream("--host-record=fwd.test,192.0.2.1")


def http(port, path="/metrics", method="GET", timeout=5.0):
    """(status, headers, body) of one request; an HTTP error is an answer."""
    request = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path),
                                     method=method)
    try:
        with OPENER.open(request, timeout=timeout) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def scrape(port):
    """The families of one scrape, checked as the parser reads them."""
    status, headers, body = http(port)
    assert status == 200, (status, body)
    assert headers["Content-Type"] == CONTENT_TYPE
    assert body.endswith("\n")
    return prometheus_families(body)


def value(families, family, **labels):
    """The sample of family with exactly these labels, or None."""
    if family not in families:
        return None
    return prometheus_samples(families, family).get(tuple(sorted(labels.items())))


def address_up(families):
    """{address: har_address_up} of every checked address."""
    if "har_address_up" not in families:
        return {}
    return {dict(k)["address"]: v
            for k, v in prometheus_samples(families, "har_address_up").items()}


def start_metrics(start_hard, body, up, extra="", **kw):
    """hard with metrics_listen on a free loopback port: (hard, port).  A
    port taken between the choice and hard's bind is logged and retried by
    hard; then another is tried."""
    for _ in range(3):
        # Both ports chosen before either is bound: they must differ, or
        # hard refuses the configuration (a DNS listener's port).
        dns_port = kw.pop("port", None) or harness.free_port()
        port = harness.free_port()
        while port == dns_port:
            port = harness.free_port()
        h = start_hard(body, upstream=up, extra='metrics_listen = "127.0.0.1:%d"\n'
                       % port + extra, port=dns_port, **kw)
        line = wait_log(h, r"serving metrics on|cannot listen for metrics")[0]
        if "serving metrics on http://127.0.0.1:%d/metrics" % port in line:
            return h, port
        h.stop()
    raise AssertionError("no free port for metrics_listen")


def listening_tcp_ports(pid):
    """The TCP ports process pid listens on, from its sockets' inodes."""
    inodes = harness.socket_inodes(pid)
    ports = set()
    for table in ("tcp", "tcp6"):
        with open("/proc/%d/net/%s" % (pid, table)) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[9]) in inodes:	# LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def refused(port):
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


# ------------------------------------------------------------ checks, queries


def test_address_up_follows_a_server_that_stops(start_hard, start_http, up):
    """Two HTTP candidates up; one server is stopped: its address's
    har_address_up goes to 0 in the next scrapes, the other stays 1."""
    a, b = start_http(A), start_http(B)
    h, port = start_metrics(start_hard, name_block(
        "web.test", [("a", a.url()), ("b", b.url())], selection_method="all"), up)
    wait_answer(h, "web.test", [A, B])
    harness.wait_until(lambda: address_up(scrape(port)) == {A: 1, B: 1}, 10,
                       what="both addresses up in a scrape")
    b.stop()
    t0 = time.monotonic()
    harness.wait_until(lambda: address_up(scrape(port)).get(B) == 0, 10,
                       what="har_address_up of %s to go to 0" % B)
    took = time.monotonic() - t0
    assert address_up(scrape(port)) == {A: 1, B: 0}
    # at once: within a check (check_frequency 0.3 s), not a write later
    assert took < 3, took
    wait_answer(h, "web.test", [A])
    families = scrape(port)
    assert value(families, "har_address_share", name="web.test", candidate="b",
                 address=B) == 0
    assert value(families, "har_address_share", name="web.test", candidate="a",
                 address=A) == 1


def test_counters_count_queries_live(start_hard, start_http, up):
    """Queries counted exactly between two scrapes, with no write between:
    answered, NODATA, forwarded, by transport."""
    a = start_http(A)
    h, port = start_metrics(start_hard, name_block("web.test", [("a", a.url())]), up)
    wait_answer(h, "web.test", [A])
    before = scrape(port)
    for tcp in (False, False, False, True, True):
        assert harness.answer(h, "web.test", tcp=tcp) == [A]
    for _ in range(3):
        r = h.query("web.test", "AAAA")
        assert harness.rcode_text(r) == "NOERROR" and not r.answer
    assert harness.answer(h, "fwd.test") == ["192.0.2.1"]
    after = scrape(port)

    def delta(family, **labels):
        return value(after, family, **labels) - (value(before, family, **labels) or 0)
    assert delta("har_name_queries", name="web.test", result="answered") == 5
    assert delta("har_name_queries", name="web.test", result="nodata") == 3
    assert delta("har_queries", transport="udp") == 7
    assert delta("har_queries", transport="tcp") == 2
    assert delta("har_queries_forwarded") == 1
    assert value(after, "har_nameserver_replies", nameserver=up.endpoint,
                 rcode="NOERROR") >= 1
    assert value(after, "har_nameserver_up", nameserver=up.endpoint) == 1
    assert value(after, "har_up") == 1
    # the checks go on (every 0.3 s), and so do their counters
    checks = value(after, "har_checks")
    harness.wait_until(lambda: value(scrape(port), "har_checks") > checks, 5,
                       what="har_checks_total to grow")


def test_same_vocabulary_as_har_status(workdir, start_hard, start_http, up):
    """One vocabulary: once the data file has caught up, the scrape and
    `har-status --prometheus` of the same running hard have the same
    families, types, help texts, label sets and values (the data file
    cannot say whether it is writable: that family is the scrape's own)."""
    a = start_http(A)
    db = os.path.join(workdir, "har.db")
    dead = "http://%s:%d/" % (B, harness.dead_port(B))
    body = (name_block("web.test", [("a", a.url(), "admin_state = drain")],
                       check_frequency=60, drain_status="{ 503 }")
            + name_block("down.test", [("d", dead)], check_frequency=60,
                         failure_mode="servfail"))
    h, port = start_metrics(start_hard, body, up, data_file=db)
    wait_answer(h, "web.test", [A])
    wait_answer(h, "down.test", "SERVFAIL")
    for name in ("web.test", "down.test", "fwd.test", "nx.test"):
        harness.answer(h, name)

    def caught_up():
        live = scrape(port)
        r = subprocess.run([HAR_STATUS, "--prometheus", db], capture_output=True,
                           text=True, timeout=20)
        assert r.returncode == 0 and r.stderr == "", r
        stored = prometheus_families(r.stdout)
        # both addresses checked: the file has a row for an address from
        # its first check on, where the scrape shows it from the start
        same = len(address_up(live)) == 2 and all(
            prometheus_samples(live, f) == prometheus_samples(stored, f)
            for f in ("har_queries", "har_name_queries", "har_checks",
                      "har_nameserver_queries", "har_address_up"))
        return (live, stored) if same else None
    live, stored = harness.wait_until(caught_up, 15, 0.2,
                                      what="the data file to catch up")
    assert set(live) - {"har_data_file_writable"} == set(stored)
    assert value(live, "har_data_file_writable") == 1
    for name, family in stored.items():
        assert family.type == live[name].type, name
        assert family.documentation == live[name].documentation, name
        got, want = prometheus_samples(live, name), prometheus_samples(stored, name)
        assert set(got) == set(want), name
        for labels, v in want.items():
            if name == "har_data_file_last_write_timestamp_seconds":
                assert abs(got[labels] - v) < 3, (name, got[labels], v)
            else:
                assert got[labels] == pytest.approx(v, rel=1e-9), (name, labels)
    assert value(live, "har_up") == 1
    assert value(live, "har_address_admin_state", name="web.test", candidate="a",
                 address=A, state="drain") == 1
    assert value(live, "har_address_draining", name="web.test", candidate="a",
                 address=A) == 0
    assert value(live, "har_info", version=sql_value(db, "SELECT version FROM daemon"),
                 config_file=h.conf) == 1


def test_data_file_writable_follows_a_lock(workdir, start_hard, start_http, up):
    """Another process holds the data file locked: har_data_file_writable
    goes to 0 while hard keeps answering, and back to 1, with a newer last
    write time, once the lock is released."""
    a = start_http(A)
    db = os.path.join(workdir, "har.db")
    h, port = start_metrics(start_hard, name_block(
        "lock.test", [("c%d" % i, a.url()) for i in range(3)], check_frequency=0.2),
        up, data_file=db)
    wait_answer(h, "lock.test", [A])
    harness.wait_until(lambda: value(scrape(port), "har_data_file_writable") == 1
                       and value(scrape(port),
                                 "har_data_file_last_write_timestamp_seconds"), 10)
    with exclusive_lock(db):
        harness.wait_until(lambda: value(scrape(port), "har_data_file_writable") == 0,
                           10, what="har_data_file_writable 0 under the lock")
        locked = value(scrape(port), "har_data_file_last_write_timestamp_seconds")
        assert harness.answer(h, "lock.test") == [A]
        released = time.time()
    harness.wait_until(lambda: value(scrape(port), "har_data_file_writable") == 1,
                       10, what="har_data_file_writable 1 after the lock")
    written = value(scrape(port), "har_data_file_last_write_timestamp_seconds")
    assert written > locked and written >= released - 1, (locked, written, released)


# ------------------------------------------------------------ HTTP


def raw_request(port, data, timeout=10.0):
    """Sends data as it is; returns everything hard sends back until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        reply = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return reply.decode(errors="replace")
            reply += chunk


def test_other_paths_methods_and_bad_requests(start_hard, up):
    """404 for another path, 405 (with Allow) for another method, HEAD
    without a body, a query string ignored, 400 for a request line that is
    not HTTP/1.x, 431 for headers beyond 4 KB."""
    h, port = start_metrics(start_hard, "", up)
    status, _, body = http(port, "/")
    assert status == 404 and "/metrics" in body
    assert http(port, "/metricsx")[0] == 404
    assert http(port, "/other/metrics")[0] == 404
    for method in ("POST", "PUT", "DELETE"):
        status, headers, _ = http(port, method=method)
        assert status == 405 and headers["Allow"] == "GET, HEAD", (method, status)
    status, headers, body = http(port, method="HEAD")
    assert status == 200 and body == "" and headers["Content-Type"] == CONTENT_TYPE
    status, _, body = http(port, "/metrics?name[]=har_up")
    assert status == 200 and "\nhar_up 1\n" in body
    assert raw_request(port, b"hello\r\n\r\n").startswith("HTTP/1.1 400 ")
    assert raw_request(port, b"GET /metrics SPDY/3\r\n\r\n").startswith("HTTP/1.1 400 ")
    big = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"x" * 5000 + b"\r\n\r\n"
    assert raw_request(port, big).startswith("HTTP/1.1 431 ")
    # an HTTP/1.0 client, a bare LF between lines
    reply = raw_request(port, b"GET /metrics HTTP/1.0\n\n")
    assert reply.startswith("HTTP/1.1 200 OK\r\n") and "\nhar_up 1\n" in reply
    h.assert_alive()


def test_clients_that_send_nothing_do_not_hold_up_answers(start_hard, start_http, up):
    """Connections that never send a request (or only part of one) fill
    every slot: DNS is answered at once meanwhile, a real scrape still gets
    its text (the oldest silent connection makes room), and the silent ones
    are closed after the 5 s request timeout."""
    a = start_http(A)
    h, port = start_metrics(start_hard, name_block("web.test", [("a", a.url())]), up)
    wait_answer(h, "web.test", [A])
    silent = [socket.create_connection(("127.0.0.1", port), timeout=2)
              for _ in range(MAX_CONNECTIONS)]
    silent[-1].sendall(b"GET /metr")
    opened = time.monotonic()
    for _ in range(20):
        t0 = time.monotonic()
        assert harness.answer(h, "web.test", timeout=2.0) == [A]
        assert time.monotonic() - t0 < 1.0
    assert address_up(scrape(port)) == {A: 1}
    assert harness.closed_by_peer(silent[0], timeout=2), \
        "the oldest silent connection should have made room"
    harness.wait_until(lambda: all(harness.closed_by_peer(s) for s in silent), 15,
                       what="the silent connections to be closed")
    assert time.monotonic() - opened >= 4.5, "closed before the request timeout"
    for s in silent:
        s.close()
    assert harness.answer(h, "web.test") == [A]


def long_title(n):
    return "n%02d-%s.%s.%s.test" % (n, "a" * 55, "b" * 60, "c" * 60)


def large_text_config(refusing_port):
    """1,000 addresses with long names and titles, 100 to a name: about
    4 MB of text, a name's part far larger than a socket takes at once."""
    return "".join(
        name_block(long_title(n), [("c%03d-%s" % (c, "x" * 200), "127.0.%d.%d:%d" % (
            10 + n, c + 1, refusing_port)) for c in range(100)],
            check_method="tcp", check_frequency=3600)
        for n in range(10))


def slow_scrape(port):
    """A connected socket with a small receive window that has sent its
    request."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    return s


def test_a_large_text_to_a_slow_reader(start_hard, refusing_port, up):
    """About 4 MB of text to a client with a small receive window that
    reads slowly: hard's writes are partial and wait for the socket to
    drain; DNS is answered at once meanwhile, and the text arrives whole."""
    names = large_text_config(refusing_port)
    h, port = start_metrics(start_hard, names, up)
    harness.wait_until(lambda: len(address_up(scrape(port))) == 1000, 20,
                       what="every address checked once")
    with slow_scrape(port) as s:
        reply, slow_reads = b"", 0
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
            if slow_reads < 20 and len(reply) > slow_reads * 65536:
                slow_reads += 1
                time.sleep(0.05)
                t0 = time.monotonic()
                assert harness.answer(h, long_title(0), timeout=2.0) == "NXDOMAIN"
                assert time.monotonic() - t0 < 1.0
    assert slow_reads == 20
    head, _, body = reply.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200 OK")
    assert len(body) > 3000000, len(body)
    families = prometheus_families(body)
    assert len(prometheus_samples(families, "har_address_admin_state")) == 4000
    assert len(address_up(families)) == 1000


def test_a_reload_during_a_large_scrape_resets_it(start_hard, refusing_port, up):
    """A SIGHUP while a large text is half sent replaces the names it is
    written from: the scrape is reset, not ended cleanly, so the scraper
    cannot take the half for the whole; the next scrape is whole."""
    h, port = start_metrics(start_hard, large_text_config(refusing_port), up)
    harness.wait_until(lambda: len(address_up(scrape(port))) == 1000, 20,
                       what="every address checked once")
    with slow_scrape(port) as s:
        got = s.recv(4096)
        assert got.startswith(b"HTTP/1.1 200 OK")
        h.signal(signal.SIGHUP)
        wait_log(h, r"reloaded .*: 10 names")
        with pytest.raises(ConnectionResetError):
            while s.recv(65536):
                pass
    assert len(address_up(scrape(port))) == 1000


@pytest.fixture
def refusing_port():
    """A TCP port that nothing listens on, on any 127.0.x.y (refused at
    once): the large text's addresses are checked once and down."""
    return harness.dead_port()


# ------------------------------------------------------------ reload, off


def test_reload_follows_names_result_and_listener(start_hard, start_http, up):
    """A SIGHUP that changes the names changes the exported names; one
    that fails says so (har_config_last_reload_successful 0) and changes
    nothing; a moved metrics_listen is served on its new port only, and a
    removed one on none."""
    a = start_http(A)
    h, port = start_metrics(start_hard, name_block("one.test", [("a", a.url())]), up)
    wait_answer(h, "one.test", [A])
    first = scrape(port)
    loaded = value(first, "har_config_last_load_timestamp_seconds")
    assert value(first, "har_config_last_reload_successful") == 1
    assert value(first, "har_name_queries", name="one.test", result="answered") >= 1
    with open(h.conf) as f:
        config = f.read()
    with open(h.conf, "w") as f:
        f.write(config.replace("one.test", "two.test"))
    h.signal(signal.SIGHUP)

    def names(families):
        return {dict(k)["name"] for k in prometheus_samples(families, "har_name_queries")}
    harness.wait_until(lambda: names(scrape(port)) == {"two.test"}, 10,
                       what="the scrape to show two.test alone")
    wait_answer(h, "two.test", [A])
    second = scrape(port)
    assert value(second, "har_config_last_reload_successful") == 1
    assert value(second, "har_config_last_load_timestamp_seconds") > loaded
    assert {dict(k)["name"] for k in
            prometheus_samples(second, "har_address_up")} == {"two.test"}

    with open(h.conf, "w") as f:
        f.write(config.replace("one.test", "two.test") + "\nno_such_option = 1\n")
    h.signal(signal.SIGHUP)
    harness.wait_until(
        lambda: value(scrape(port), "har_config_last_reload_successful") == 0, 10,
        what="the failed reload in the scrape")
    third = scrape(port)
    assert value(third, "har_config_last_reload_timestamp_seconds") > \
        value(second, "har_config_last_reload_timestamp_seconds")
    assert value(third, "har_config_last_load_timestamp_seconds") == \
        value(second, "har_config_last_load_timestamp_seconds")
    assert names(third) == {"two.test"}

    moved = harness.free_port()
    with open(h.conf, "w") as f:
        f.write(config.replace("one.test", "two.test").replace(
            "127.0.0.1:%d" % port, "127.0.0.1:%d" % moved))
    h.signal(signal.SIGHUP)
    harness.wait_until(lambda: not refused(moved) and refused(port), 10,
                       what="metrics to move from port %d to %d" % (port, moved))
    assert value(scrape(moved), "har_config_last_reload_successful") == 1

    with open(h.conf, "w") as f:
        f.write(config.replace("one.test", "two.test").replace(
            'metrics_listen = "127.0.0.1:%d"' % port, ""))
    h.signal(signal.SIGHUP)
    harness.wait_until(lambda: refused(moved), 10, what="metrics to stop")
    wait_log(h, r"no longer serving metrics on http://127.0.0.1:%d/" % moved)
    assert listening_tcp_ports(h.pid) == {h.port}
    assert harness.answer(h, "two.test") == [A]


def test_metrics_off_opens_no_socket(start_hard, up):
    """Without metrics_listen (the default) hard listens on its DNS port
    and no other."""
    h = start_hard("", upstream=up)
    assert listening_tcp_ports(h.pid) == {h.port}
    assert "metrics" not in h.log()


def test_metrics_listen_checked_by_t(workdir):
    """-t refuses a metrics_listen that is not PORT, IP:PORT or
    [IPv6]:PORT, or that is a DNS listener's address and port; it accepts
    a port alone (on 127.0.0.1) and IPv6; a non-loopback address is
    accepted with a warning (and never started here)."""
    path = os.path.join(workdir, "har.conf")

    def check(setting):
        with open(path, "w") as f:
            f.write('nameservers = { 127.0.0.1:1 }\ndns_bind_interfaces = { 127.0.0.1 }\n'
                    'dns_listen_port = 5353\ndata_file = ""\n%s\n' % setting)
        return harness.run_hard("-t", "-c", path)
    for good in ('metrics_listen = "9153"', 'metrics_listen = "127.0.0.1:9153"',
                 'metrics_listen = "[::1]:9153"', 'metrics_listen = ""',
                 'metrics_listen = "127.0.0.1:53"'):
        r = check(good)
        assert r.returncode == 0 and r.stdout == "ok\n" and r.stderr == "", (good, r)
    for bad in ("nonsense", "127.0.0.1", "::1", "127.0.0.1:0", "127.0.0.1:65536",
                "localhost:9153", "[::1]"):
        r = check('metrics_listen = "%s"' % bad)
        assert r.returncode == 1 and r.stdout == "", (bad, r)
        assert '%s:5: metrics_listen: "%s" is not PORT, IP:PORT or [IPv6]:PORT' % (
            path, bad) in r.stderr, (bad, r.stderr)
    r = check('metrics_listen = "127.0.0.1:5353"')
    assert r.returncode == 1 and "metrics_listen 127.0.0.1:5353 is a DNS " \
        "listener's address and port" in r.stderr, r
    r = check('metrics_listen = "0.0.0.0:5353"')
    assert r.returncode == 1 and "is a DNS listener's" in r.stderr, r
    r = check('metrics_listen = "192.0.2.1:9153"')
    assert r.returncode == 0 and r.stdout == "ok\n", r
    assert "warning: metrics_listen 192.0.2.1:9153 is not a loopback address" in r.stderr


def test_metrics_listen_taken_is_retried(start_hard, up):
    """A metrics port that another program holds does not stop hard: it
    answers, logs the failure once, and serves the metrics once the port
    is free (tried again every 5 s)."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    h = start_hard("", upstream=up, extra='metrics_listen = "127.0.0.1:%d"\n' % port)
    wait_log(h, r"cannot listen for metrics on 127.0.0.1:%d: Address already in use; "
             r"trying again every 5 s" % port)
    assert harness.answer(h, "fwd.test") == ["192.0.2.1"]
    holder.close()
    wait_log(h, r"serving metrics on http://127.0.0.1:%d/metrics" % port, timeout=15)
    assert value(scrape(port), "har_up") == 1
    assert len([l for l in h.log().splitlines() if "cannot listen for metrics" in l]) == 1
