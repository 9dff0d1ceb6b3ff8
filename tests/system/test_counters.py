"""Counters for monitoring (issue 10 item 4, hard.8 STATE FILE): hard counts
what it does in memory and writes the counters into the data file with each
flush; `har-status --prometheus` prints them, with every address's health,
RTT and admin state, in the Prometheus text format, which a real parser
(python3-prometheus-client's) reads back to the values in the file."""

import os
import signal
import socket
import struct
import subprocess
import time

import dns.flags
import dns.opcode
import pytest
from prometheus_client.parser import text_string_to_metric_families

import harness
from statehelpers import (SQLITE3, name_block, sql, sql_value, stable_value,
                          wait_answer, wait_sql)

HAR_STATUS = os.path.join(harness.REPO, "contrib", "har-status")
CRON = os.path.join(harness.REPO, "contrib", "har-prometheus.cron")
A, B = "127.0.0.2", "127.0.0.3"


@pytest.fixture
def up(start_upstream):
    return start_upstream("--host-record=fwd.test,192.0.2.1")


def names_config(url, dead):
    """web.test is healthy (IPv4 only: AAAA is NODATA); the others' only
    candidate is refused, so each answers by its failure_mode."""
    dead_url = "http://%s:%d/" % (B, dead)
    return (name_block("web.test", [("a", url)])
            + name_block("down.test", [("d", dead_url)], failure_mode="servfail")
            + name_block("all.test", [("d", dead_url)], failure_mode="all")
            + name_block("none.test", [("d", dead_url)], failure_mode="none"))


def start_mix(workdir, start_hard, start_http, up, extra=""):
    s = start_http(A)
    db = os.path.join(workdir, "har.db")
    h = start_hard(names_config(s.url(), harness.dead_port(B)), upstream=up,
                   data_file=db, extra=extra)
    wait_answer(h, "web.test", [A])
    wait_answer(h, "down.test", "SERVFAIL")
    return h, db


def read_counters(db):
    """Everything the counter tables hold, keyed for comparison."""
    out = {("total", r["counter"], r["kind"]): r["value"]
           for r in sql(db, "SELECT * FROM totals")}
    for r in sql(db, "SELECT * FROM name_counters"):
        for column, value in r.items():
            if column != "name":
                out[("name", r["name"], column)] = value
    for r in sql(db, "SELECT * FROM nameservers"):
        for column in ("queries", "timeouts", "errors", "up"):
            out[("nameserver", r["nameserver"], column)] = r[column]
    for r in sql(db, "SELECT * FROM nameserver_replies"):
        out[("replies", r["nameserver"], r["rcode"])] = r["replies"]
    return out


def settled_counters(db):
    """The counters once the queries counted so far are all in the file:
    unchanged for three flush intervals (0.5 s each), so that one flush
    late on a loaded machine is not taken for the end of the writes."""
    stable_value(db, "SELECT group_concat(value) FROM totals"
                 " WHERE counter NOT LIKE 'checks%'", quiet=1.5, timeout=15)
    return read_counters(db)


def send_udp(h, payload):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(payload, (h.addr, h.port))


def query_wire(name, rdtype="A"):
    return harness.make_query(name, rdtype).to_wire()


def test_counters_after_a_known_mix_of_queries(workdir, start_hard, start_http, up):
    """Exact counts, over UDP and TCP: 5 answered A, 2 NODATA AAAA, each
    failure_mode, 3 forwarded NXDOMAIN, FORMERR, NOTIMP, BADVERS, and the
    drops (short, a response, an oversize datagram, a bad TCP length)."""
    h, db = start_mix(workdir, start_hard, start_http, up)
    before = settled_counters(db)
    ns = up.endpoint

    for tcp in (False, False, False, True, True):
        assert harness.answer(h, "web.test", tcp=tcp) == [A]
    for _ in range(2):
        r = h.query("web.test", "AAAA")
        assert harness.rcode_text(r) == "NOERROR" and not r.answer
    for _ in range(2):
        assert harness.answer(h, "down.test") == "SERVFAIL"
    assert harness.answer(h, "all.test") == [B]
    assert harness.answer(h, "none.test") == "NXDOMAIN"
    for name, tcp in (("nx1.test", False), ("nx2.test", False), ("nx3.test", True)):
        assert harness.answer(h, name, tcp=tcp) == "NXDOMAIN"
    reply = h.udp_raw(struct.pack("!6H", 0x1234, 0x0100, 0, 0, 0, 0), timeout=3)
    assert reply and reply[3] & 0x0f == 1          # FORMERR
    status = harness.make_query("web.test")
    status.set_opcode(dns.opcode.STATUS)
    reply = h.udp_raw(status.to_wire(), timeout=3)
    assert reply and reply[3] & 0x0f == 4          # NOTIMP
    assert harness.rcode_text(h.query("web.test", edns=1)) == "BADVERS"
    send_udp(h, b"\x00\x01\x02")
    send_udp(h, b"\x00\x01\x02\x03\x04")
    response = harness.make_query("web.test")
    response.flags |= dns.flags.QR
    send_udp(h, response.to_wire())
    send_udp(h, query_wire("web.test") + b"\x00" * 5000)
    with h.tcp() as c:
        c.sendall(b"\x00\x05hello")
        harness.wait_until(lambda: harness.closed_by_peer(c, 0.1), 3,
                           what="hard to close a TCP connection with a bad length")

    expected = dict(before)

    def add(key, n):
        expected[key] = expected.get(key, 0) + n
    add(("total", "queries", "udp"), 3 + 2 + 2 + 1 + 1 + 2 + 3 + 4)
    add(("total", "queries", "tcp"), 2 + 1 + 1)
    add(("total", "forwarded", ""), 4)
    add(("total", "malformed", "formerr"), 1)
    add(("total", "malformed", "notimp"), 1)
    add(("total", "malformed", "badvers"), 1)
    add(("total", "dropped", "short"), 2)
    add(("total", "dropped", "response"), 1)
    add(("total", "dropped", "oversize"), 1)
    add(("total", "dropped", "tcp_length"), 1)
    add(("total", "tcp_connections_accepted", ""), 4)
    add(("name", "web.test", "answered"), 5)
    add(("name", "web.test", "nodata"), 2)
    add(("name", "down.test", "servfail"), 2)
    add(("name", "down.test", "failure_servfail"), 2)
    add(("name", "all.test", "answered"), 1)
    add(("name", "all.test", "failure_all"), 1)
    add(("name", "none.test", "failure_none"), 1)
    add(("nameserver", ns, "queries"), 4)
    add(("replies", ns, "NXDOMAIN"), 4)

    def arrived():
        got = read_counters(db)
        return all(got.get(k) == v for k, v in expected.items()
                   if not k[1].startswith("checks"))
    try:
        harness.wait_until(arrived, timeout=10, interval=0.1)
    except AssertionError:
        pass   # the comparison below says what differs
    time.sleep(1.5)  # more flushes, even on a loaded machine: nothing counted twice or late
    got = read_counters(db)
    wrong = {k: (expected.get(k), got.get(k)) for k in set(expected) | set(got)
             if expected.get(k) != got.get(k) and not k[1].startswith("checks")}
    assert not wrong, "counter: (expected, in the file): %s" % wrong
    assert got[("total", "tcp_connections_open", "")] == 0
    assert got[("nameserver", ns, "up")] == 1

    # Checks: the totals agree with the rows of the addresses, in one read.
    row = sql(db, "SELECT (SELECT value FROM totals WHERE counter = 'checks') AS total,"
              " (SELECT value FROM totals WHERE counter = 'checks_failed') AS failed,"
              " (SELECT sum(checks) FROM candidates) AS checks,"
              " (SELECT sum(checks - successes) FROM candidates) AS failures")[0]
    assert row["total"] == row["checks"] and row["total"] > 0, row
    assert row["failed"] == row["failures"] and row["failed"] > 0, row

    # The daemon: version, start, configuration file and its last load.
    daemon = sql(db, "SELECT * FROM daemon")
    assert len(daemon) == 1, daemon
    d = daemon[0]
    assert d["version"] == harness.run_hard("-V").stdout.split()[1]
    assert d["pid"] == h.pid
    assert d["config_file"] == h.conf
    assert abs(d["start_time"] - time.time()) < 60
    assert d["config_load_time"] >= d["start_time"]
    assert sql_value(db, "PRAGMA user_version") == 5


def test_counters_survive_a_reload_and_show_it(workdir, start_hard, start_http, up):
    """A SIGHUP keeps the counters of names that stay and moves the load
    time of the configuration; a removed name's counters go with it."""
    h, db = start_mix(workdir, start_hard, start_http, up)
    for _ in range(3):
        assert harness.answer(h, "web.test") == [A]
    wait_sql(db, "SELECT answered FROM name_counters WHERE name = 'web.test'",
             lambda r: r and r[0]["answered"] >= 3)
    before = settled_counters(db)
    loaded = sql_value(db, "SELECT config_load_time FROM daemon")
    with open(h.conf) as f:
        config = f.read()
    with open(h.conf, "w") as f:
        f.write(config.replace("name none.test", "name gone.test")
                .split("name gone.test")[0])
    h.signal(signal.SIGHUP)
    wait_sql(db, "SELECT config_load_time FROM daemon",
             lambda r: r and r[0]["config_load_time"] > loaded)
    wait_sql(db, "SELECT name FROM name_counters ORDER BY name",
             lambda r: [x["name"] for x in r] == ["all.test", "down.test", "web.test"])
    assert harness.answer(h, "web.test") == [A]
    wait_sql(db, "SELECT answered FROM name_counters WHERE name = 'web.test'",
             lambda r: r and r[0]["answered"] == before[("name", "web.test", "answered")] + 1)


def test_upstream_counters_live_and_silent(start_hard, up, silent_upstream, workdir):
    """One silent and one live nameserver: the silent one times out, is
    down, and has no replies; the live one has every query, each reply by
    rcode, and a smoothed RTT."""
    db = os.path.join(workdir, "har.db")
    silent, live = silent_upstream.endpoint, up.endpoint
    h = start_hard("", upstream=[silent, live], data_file=db,
                   extra="resolver_timeout = 0.3\nresolver_total_timeout = 1.0\n")
    assert harness.answer(h, "fwd.test") == ["192.0.2.1"]
    rows = wait_sql(db, "SELECT * FROM nameservers ORDER BY position",
                    lambda r: len(r) == 2 and r[0]["timeouts"] == 1, timeout=4)
    assert [r["nameserver"] for r in rows] == [silent, live]
    assert {k: rows[0][k] for k in ("up", "queries", "timeouts", "errors")} == \
        {"up": 0, "queries": 1, "timeouts": 1, "errors": 0}, rows[0]
    assert rows[0]["rtt"] is None
    assert {k: rows[1][k] for k in ("up", "queries", "timeouts", "errors")} == \
        {"up": 1, "queries": 1, "timeouts": 0, "errors": 0}, rows[1]
    assert 0 < rows[1]["rtt"] < 1.0, rows[1]

    for name in ("fwd.test", "fwd.test", "nx.test", "fwd.test"):
        harness.answer(h, name)
    wait_sql(db, "SELECT rcode, replies FROM nameserver_replies ORDER BY rcode",
             lambda r: r == [{"rcode": "NOERROR", "replies": 4},
                             {"rcode": "NXDOMAIN", "replies": 1}])
    # Probes of the silent one (one a second at most) end in timeouts too.
    rows = wait_sql(db, "SELECT * FROM nameservers ORDER BY position",
                    lambda r: r[0]["queries"] == r[0]["timeouts"], timeout=4)
    assert rows[1]["queries"] == 5 and rows[1]["up"] == 1, rows
    assert rows[0]["up"] == 0 and rows[0]["queries"] >= 1, rows
    assert sql(db, "SELECT * FROM nameserver_replies WHERE nameserver = '%s'"
               % silent) == []


# ------------------------------------------------------------ Prometheus


def prometheus(db):
    r = subprocess.run([HAR_STATUS, "--prometheus", db], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode == 0 and r.stderr == "", r
    return r.stdout


def parse(text):
    """{family name: family}, checking what the lenient parser lets pass:
    each family once, typed, and each sample once."""
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


def samples(families, name):
    """{labels as a sorted tuple: value} of one family."""
    return {tuple(sorted(s.labels.items())): s.value
            for s in families[name].samples}


COUNTER_FAMILIES = {
    "har_queries": ("total", "queries", "transport"),
    "har_queries_forwarded": ("total", "forwarded", None),
    "har_forward_failures": ("total", "forward_failures", None),
    "har_queries_dropped": ("total", "dropped", "reason"),
    "har_queries_malformed": ("total", "malformed", "reason"),
    "har_tcp_connections_accepted": ("total", "tcp_connections_accepted", None),
    "har_tcp_connections_refused": ("total", "tcp_connections_refused", None),
    "har_tcp_connections_closed": ("total", "tcp_connections_closed", "reason"),
    "har_checks": ("total", "checks", None),
    "har_checks_failed": ("total", "checks_failed", None),
}


def test_prometheus_output_parses_and_matches_the_file(workdir, start_hard,
                                                      start_http, up):
    h, db = start_mix(workdir, start_hard, start_http, up)
    for name, rdtype, tcp in (("web.test", "A", True), ("web.test", "AAAA", False),
                              ("down.test", "A", False), ("all.test", "A", False),
                              ("none.test", "A", False), ("nx.test", "A", True)):
        h.query(name, rdtype, tcp=tcp)
    send_udp(h, b"\x00\x01")
    time.sleep(0.7)
    assert h.stop() == 0    # the last state is written; the file holds still
    families = parse(prometheus(db))
    counters = read_counters(db)

    types = {name: f.type for name, f in families.items()}
    for name in COUNTER_FAMILIES:
        assert types.get(name) == "counter", (name, types.get(name))
    for name in ("har_info", "har_start_time_seconds", "har_tcp_connections_open",
                 "har_config_last_load_timestamp_seconds", "har_nameserver_up",
                 "har_nameserver_rtt_seconds", "har_address_up",
                 "har_address_rtt_seconds"):
        assert types.get(name) == "gauge", (name, types.get(name))
    for name in ("har_name_queries", "har_name_failure_mode", "har_nameserver_queries",
                 "har_nameserver_replies", "har_nameserver_timeouts",
                 "har_nameserver_errors", "har_address_checks",
                 "har_address_check_failures"):
        assert types.get(name) == "counter", (name, types.get(name))
    assert types.get("har_address_admin_state") == "gauge"
    for sample in families["har_address_admin_state"].samples:
        assert sample.value == (1 if sample.labels["state"] == "auto" else 0), sample

    # Totals, label values and values as in the file.
    for family, (kind, counter, label) in COUNTER_FAMILIES.items():
        want = {((label, k),) if label else (): v for (t, c, k), v in counters.items()
                if t == kind and c == counter}
        assert samples(families, family) == want, family
    assert set(dict(k)["transport"] for k in samples(families, "har_queries")) == {"udp", "tcp"}
    assert set(dict(k)["reason"] for k in samples(families, "har_queries_dropped")) == \
        {"short", "response", "oversize", "tcp_length"}
    assert samples(families, "har_queries_dropped")[(("reason", "short"),)] == 1
    assert samples(families, "har_tcp_connections_open") == {
        (): counters[("total", "tcp_connections_open", "")]}

    # Per name.
    results = {"answered": "answered", "nodata": "nodata", "servfail": "servfail",
               "forwarded": "failure_none"}
    got = samples(families, "har_name_queries")
    assert got == {(("name", n), ("result", r)): counters[("name", n, column)]
                   for n in ("web.test", "down.test", "all.test", "none.test")
                   for r, column in results.items()}
    assert got[(("name", "web.test"), ("result", "answered"))] >= 2
    assert got[(("name", "web.test"), ("result", "nodata"))] == 1
    modes = samples(families, "har_name_failure_mode")
    assert modes[(("mode", "all"), ("name", "all.test"))] == 1
    assert modes[(("mode", "servfail"), ("name", "down.test"))] >= 1
    assert modes[(("mode", "none"), ("name", "none.test"))] == 1

    # Per nameserver.
    ns = up.endpoint
    row = sql(db, "SELECT * FROM nameservers")[0]
    assert samples(families, "har_nameserver_up") == {(("nameserver", ns),): 1}
    assert samples(families, "har_nameserver_queries") == {(("nameserver", ns),): row["queries"]}
    assert samples(families, "har_nameserver_timeouts") == {(("nameserver", ns),): 0}
    assert samples(families, "har_nameserver_rtt_seconds") == {
        (("nameserver", ns),): pytest.approx(row["rtt"])}
    assert samples(families, "har_nameserver_replies") == {
        (("nameserver", ns), ("rcode", k)): v
        for (t, n, k), v in counters.items() if t == "replies"}
    assert samples(families, "har_nameserver_replies")[
        (("nameserver", ns), ("rcode", "NXDOMAIN"))] >= 2

    # Every address's health and RTT.
    rows = sql(db, "SELECT * FROM candidates")
    assert samples(families, "har_address_up") == {
        (("address", r["ip_address"]), ("candidate", r["candidate_name"]),
         ("name", r["name"])): r["healthy"] for r in rows}
    assert samples(families, "har_address_rtt_seconds") == {
        (("address", r["ip_address"]), ("candidate", r["candidate_name"]),
         ("name", r["name"])): pytest.approx(r["rtt"]) for r in rows if r["rtt"] is not None}
    assert samples(families, "har_address_check_failures")[
        (("address", B), ("candidate", "d"), ("name", "down.test"))] > 0

    # The daemon.
    d = sql(db, "SELECT * FROM daemon")[0]
    assert samples(families, "har_info") == {
        (("config_file", h.conf), ("version", d["version"])): 1}
    assert samples(families, "har_start_time_seconds")[()] == pytest.approx(d["start_time"])
    assert samples(families, "har_config_last_load_timestamp_seconds")[()] == \
        pytest.approx(d["config_load_time"])


def test_prometheus_admin_state(workdir, start_hard, start_http, up):
    """One series per admin state, 1 for the address's own; label values
    are escaped."""
    s = start_http(A)
    db = os.path.join(workdir, "har.db")
    h = start_hard(name_block("web.test", [('a \\"b\\"', s.url(), "admin_state = drain")]),
                   upstream=up, data_file=db)
    wait_answer(h, "web.test", [A])
    assert h.stop() == 0
    title = sql_value(db, "SELECT candidate_name FROM candidates")
    assert '"' in title, title
    text = prometheus(db)
    escaped = title.replace("\\", "\\\\").replace('"', '\\"')
    assert 'candidate="%s"' % escaped in text, text
    families = parse(text)
    assert families["har_address_admin_state"].type == "gauge"
    assert samples(families, "har_address_admin_state") == {
        (("address", A), ("candidate", title), ("name", "web.test"), ("state", st)):
        (1 if st == "drain" else 0) for st in ("auto", "drain", "down", "up")}


def test_prometheus_of_a_file_without_counters(workdir):
    """A file of an older hard (no counter tables) still gives the
    addresses' metrics, and says why the rest is missing."""
    db = os.path.join(workdir, "old.db")
    subprocess.run([SQLITE3, db,
                    "CREATE TABLE candidates(name TEXT, candidate_name TEXT,"
                    " ip_address TEXT, healthy INTEGER, rtt REAL, checks INTEGER,"
                    " successes INTEGER);"
                    "INSERT INTO candidates VALUES('w.test', 'a', '%s', 1, 0.002, 4, 3)" % A],
                   check=True)
    r = subprocess.run([HAR_STATUS, "--prometheus", db], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode == 0 and "no counters" in r.stderr, r
    families = parse(r.stdout)
    assert set(families) == {"har_address_up", "har_address_rtt_seconds",
                             "har_address_checks", "har_address_check_failures"}
    assert samples(families, "har_address_check_failures") == {
        (("address", A), ("candidate", "a"), ("name", "w.test")): 1}


def test_cron_line_writes_the_textfile_atomically(workdir, start_hard, start_http, up):
    """contrib/har-prometheus.cron's command, run by sh with this checkout's
    har-status and a directory of the test's, leaves a complete har.prom
    and no temporary file the collector would read."""
    h, db = start_mix(workdir, start_hard, start_http, up)
    wait_sql(db, "SELECT healthy FROM candidates WHERE name = 'web.test'",
             lambda r: r == [{"healthy": 1}])
    with open(CRON) as f:
        lines = [l for l in f.read().splitlines() if l and not l.startswith("#")]
    assert len(lines) == 1, lines
    fields = lines[0].split(None, 6)
    assert fields[:5] == ["*"] * 5 and fields[5] == "root", fields
    command = fields[6]
    assert "/var/lib/prometheus/node-exporter/har.prom" in command
    textdir = os.path.join(workdir, "node-exporter")
    os.mkdir(textdir)
    command = (command.replace("/var/lib/prometheus/node-exporter", textdir)
               .replace("/usr/local/sbin/har-status", HAR_STATUS)
               .replace("/var/lib/har/har.db", db))
    for _ in range(2):
        r = subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r
    assert os.listdir(textdir) == ["har.prom"]
    with open(os.path.join(textdir, "har.prom")) as f:
        families = parse(f.read())
    assert samples(families, "har_address_up")[
        (("address", A), ("candidate", "a"), ("name", "web.test"))] == 1
    h.assert_alive()
