"""Out of descriptors, the checks must not lose (issue 16 item 3).  TCP
clients that take every descriptor hard may open used to fail its checks
("connection failed"): the servers were marked down for hard's own
shortage and the names answered SERVFAIL.  Now hard keeps a reserve that
TCP clients cannot take, and a check that gets no socket all the same is
postponed, not counted against its server."""

import os
import re
import socket
import time

import pytest

import harness
from harness import answer
from statehelpers import name_block, sql

WEB, PORT = "127.0.0.2", "127.0.0.3"
FREQUENCY = 0.2
CLIENTS = 300	# more than the limit of the first test: without a reserve, all of it


@pytest.fixture
def servers(start_http, start_listener):
    return start_http(WEB), start_listener(PORT, kind="accept")


def body(http, listener):
    opts = dict(check_frequency=FREQUENCY, check_timeout=1,
                failure_mode="servfail")
    return (name_block("web.test", [("web", http.url())], **opts) +
            name_block("port.test", [("port", "%s:%d" % (PORT, listener.port))],
                       check_method="tcp", **opts))


EXPECTED = {"web.test": [WEB], "port.test": [PORT]}
# clients are never closed for idleness during the test, and there is no
# cap of tcp_max_connections to stop them before descriptors run out
EXTRA = "tcp_idle_timeout = 300\ntcp_max_connections = 100000\n"


def start(start_hard, upstream, workdir, servers, nofile=None):
    data_file = os.path.join(workdir, "har.db")
    hard = start_hard(body(*servers), upstream=upstream, data_file=data_file,
                      extra=EXTRA, nofile=nofile)
    for name, want in EXPECTED.items():
        harness.wait_answer(hard, name, want, timeout=10)
    return hard, data_file


def accept_queue(port):
    """Connections waiting in hard's TCP listen backlog on 127.0.0.1:port
    (a listening socket's rx_queue in /proc/net/tcp)."""
    local = "0100007F:%04X" % port
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[3] == "0A":
                return int(fields[4].split(":")[1], 16)
    return 0


def flood(hard, count):
    """Opens count TCP connections to hard, or as many as it takes: hard
    accepts one connection per wake-up, so the backlog is let drain
    before it fills (a full one drops connects for a second); when it
    does not drain, hard takes no more."""
    clients = []
    for _ in range(count):
        if accept_queue(hard.port) >= 32:
            try:
                harness.wait_until(lambda: accept_queue(hard.port) < 8, 2,
                                   what="hard to accept")
            except AssertionError:
                break
        clients.append(socket.create_connection((hard.addr, hard.port),
                                                timeout=3))
    return clients


def assert_names_hold(hard, seconds):
    """Every name answers its healthy address for `seconds` (many check
    intervals), UDP queries as any client would send them."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for name, want in EXPECTED.items():
            got = answer(hard, name, timeout=3)
            assert got == want, "%s answered %s, not %s; log:\n%s" % (
                name, got, want, hard.log()[-3000:])
        time.sleep(0.05)


def assert_nothing_marked_down(hard, data_file):
    assert "is down" not in hard.log(), hard.log()[-3000:]
    rows = harness.wait_until(lambda: sql(data_file, "SELECT name, healthy "
                                          "FROM candidates"), 5,
                              what="the data file's candidates")
    assert sorted((r["name"], r["healthy"]) for r in rows) == [
        ("port.test", 1), ("web.test", 1)], rows


def new_client_served_or_refused(hard):
    """A new TCP client gets its answer, or is refused cleanly (refused,
    reset or closed): never left hanging."""
    try:
        with socket.create_connection((hard.addr, hard.port), timeout=3) as s:
            s.settimeout(3)
            harness.tcp_send(s, harness.make_query("web.test").to_wire())
            return harness.addresses(harness.tcp_recv(s))
    except (ConnectionRefusedError, ConnectionResetError, EOFError):
        return "refused"


def close_all(clients):
    for c in clients:
        c.close()


def test_tcp_clients_cannot_take_the_checks_descriptors(
        start_hard, upstream, workdir, servers):
    """An open file limit of 128 that hard can raise only to 256, far from
    what tcp_max_connections = 100000 needs, and 300 clients: hard serves
    at most what its reserve leaves them (closing the idlest for each new
    one) and its checks go on."""
    hard, data_file = start(start_hard, upstream, workdir, servers,
                            nofile=(128, 256))
    clients = flood(hard, CLIENTS)
    try:
        assert_names_hold(hard, 15 * FREQUENCY)
        assert new_client_served_or_refused(hard) in ([WEB], "refused")
    finally:
        close_all(clients)
    assert_nothing_marked_down(hard, data_file)
    assert hard.nofile_limit() == (256, 256)
    assert "raised the open file limit from 128 to 256" in hard.log()
    # at least half the limit, and never all of it
    cap = int(re.search(r"at most (\d+) TCP clients are served at once",
                        hard.log()).group(1))
    assert 128 <= cap < 256 - 32, cap
    assert "TCP connection cap (%d) reached" % cap in hard.log()  # the flood got there


def test_check_without_a_socket_is_postponed_not_failed(
        start_hard, upstream, workdir, servers):
    """The limit lowered under hard's feet, so that TCP clients do take
    every descriptor: the HTTP and TCP checks that cannot open a socket are
    postponed, logged once, and the names keep their healthy addresses;
    once the clients leave, the checks run again."""
    hard, data_file = start(start_hard, upstream, workdir, servers)
    hard.limit_descriptors(8)
    clients = flood(hard, CLIENTS)
    try:
        harness.wait_until(lambda: "cannot accept TCP connections" in hard.log(), 5,
                           what="the clients to take every descriptor")
        assert_names_hold(hard, 15 * FREQUENCY)
        log = hard.log()
        assert log.count("checks are postponed") == 1, log[-3000:]
        assert "Too many open files; hard itself is short of them" in log
    finally:
        close_all(clients)
    harness.wait_until(lambda: "checks get sockets again" in hard.log(), 5,
                       what="the end of the shortage logged")
    before = web_checks(data_file)
    harness.wait_until(lambda: web_checks(data_file) > before + 2, 5,
                       what="web.test checked again")
    assert_nothing_marked_down(hard, data_file)
    assert hard.log().count("checks are postponed") == 1


def web_checks(data_file):
    return sql(data_file, "SELECT checks FROM candidates WHERE name = 'web.test'")[0]["checks"]
