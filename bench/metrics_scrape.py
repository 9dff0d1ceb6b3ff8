"""Run 8 of `make bench` (issue 18 item 1): what a Prometheus scrape of
hard's metrics_listen every second costs its answers.

Two hards, configured alike, run on the server core: each answers
www.bench.test (run 1's tcp-checked candidate) and holds
BENCH_METRICS_ADDRS (1,000) more addresses, checked once an hour (their
port refuses, so they are down), so that a scrape carries the text of a
host with that many addresses; both listen for metrics.  This script (on
the load core) scrapes one of them every BENCH_METRICS_INTERVAL (1 s) for
the whole run, the other never.  dnsperf then measures both as run 1 does,
in alternating repeats, side by side: the server's CPU per answered query
(its scrapes included) at max rate and at 20000 qps.  Before that, both
idle for BENCH_METRICS_IDLE seconds: the difference of their CPU time is
what the scrapes cost, per scrape."""

import http.client
import os
import threading
import time

import benchlib as B
from benchlib import BenchError, Proc, say

ADDRS = B.env_num("BENCH_METRICS_ADDRS", 1000, kind=int)
INTERVAL = B.env_num("BENCH_METRICS_INTERVAL", 1.0)
IDLE = B.env_num("BENCH_METRICS_IDLE", 20, 5)
PER_NAME = 50
HTTPD = os.path.join(B.HERE, "httpd.py")


def names_text(www, www_addr, tcp_port, refused_port):
    parts = ["name %s {\n  check_method = tcp\n  check_frequency = 1\n"
             "  candidate a { check_address = \"%s:%d\" }\n}\n" % (www, www_addr, tcp_port)]
    for n in range(-(-ADDRS // PER_NAME)):
        parts.append("name m%02d.metrics.bench.test {\n  check_method = tcp\n"
                     "  check_frequency = 3600\n" % n)
        for c in range(min(PER_NAME, ADDRS - n * PER_NAME)):
            parts.append("  candidate c%02d { check_address = \"127.0.%d.%d:%d\" }\n"
                         % (c, 100 + n, c + 1, refused_port))
        parts.append("}\n")
    return "".join(parts)


def fetch(port):
    """(status, body, seconds) of one GET /metrics."""
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/metrics")
        r = c.getresponse()
        body = r.read()
    finally:
        c.close()
    return r.status, body, time.monotonic() - t0


def get_metrics(port):
    """(status, bytes, seconds) of one GET /metrics."""
    status, body, seconds = fetch(port)
    return status, len(body), seconds


def all_checked(body):
    """Whether every address has had its first check: one har_address_up
    line each (www.bench.test's and the others)."""
    return sum(1 for line in body.decode().splitlines()
               if line.startswith("har_address_up{")) == ADDRS + 1


class Scraper:
    """Scrapes port every INTERVAL seconds, on a fixed schedule, from a
    thread of this script (on the load core)."""

    def __init__(self, port):
        self.port = port
        self.results = []	# (status, bytes, seconds)
        self.errors = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        next_at = time.monotonic()
        while not self.stopping.is_set():
            try:
                self.results.append(get_metrics(self.port))
            except OSError as exc:
                self.errors.append(repr(exc))
            next_at += INTERVAL
            self.stopping.wait(max(0.0, next_at - time.monotonic()))

    def count(self):
        return len(self.results)

    def stop(self):
        self.stopping.set()
        self.thread.join(10)


def run(tmp, upstream_port, bench):
    """bench: bench/run's namespace (its hard, configuration and dnsperf)."""
    say("== metrics: hard answering %s with %d more addresses, scraped every %g s "
        "vs not scraped" % (bench.WWW, ADDRS, INTERVAL))
    tcp_port = B.free_port((bench.WWW_ADDR,))
    Proc("tcp listener %s:%d" % (bench.WWW_ADDR, tcp_port),
         [B.PYTHON, HTTPD, bench.WWW_ADDR, str(tcp_port)], cpu=B.LOAD_CPU,
         wait_ready_line=True)
    refused = B.free_port()
    names = names_text(bench.WWW, bench.WWW_ADDR, tcp_port, refused)
    hards = {}
    for key in ("no_scrape", "scrape"):
        dns_port, metrics_port = B.free_port(), B.free_port()
        config = bench.hard_config(dns_port, upstream_port,
                                   os.path.join(tmp, "metrics-%s.db" % key),
                                   'metrics_listen = "127.0.0.1:%d"\n' % metrics_port + names)
        hard = bench.start_hard(tmp, "metrics-" + key, config)
        B.wait_answer(dns_port, bench.WWW,
                      lambda rc, a: rc == "NOERROR" and a == [bench.WWW_ADDR], 10, hard,
                      "hard (metrics, %s) to answer %s" % (key, bench.WWW))
        hards[key] = (dns_port, metrics_port, hard)
    # every address checked once: the text at its full size
    deadline = time.monotonic() + 30
    for key, (_, metrics_port, _) in hards.items():
        while True:
            status, body, _ = fetch(metrics_port)
            if status == 200 and all_checked(body):
                break
            if time.monotonic() > deadline:
                raise BenchError("hard (metrics, %s) did not check every address "
                                 "within 30 s" % key)
            time.sleep(0.5)
    scraper = Scraper(hards["scrape"][1])
    try:
        # idle: the scrapes' own cost, the other hard as the reference
        time.sleep(INTERVAL)
        cpu0 = {k: B.cpu_seconds(h.pid) for k, (_, _, h) in hards.items()}
        scrapes0, t0 = scraper.count(), time.monotonic()
        time.sleep(IDLE)
        idle_cpu = {k: B.cpu_seconds(h.pid) - cpu0[k] for k, (_, _, h) in hards.items()}
        idle_scrapes = scraper.count() - scrapes0
        idle_seconds = time.monotonic() - t0
        qfile = bench.write_queries("metrics", [bench.WWW])
        res = bench.maxrate_compare(
            "metrics", [(k, dns_port, h) for k, (dns_port, _, h) in hards.items()],
            qfile, tmp, bench.LAT_QPS)
    finally:
        scraper.stop()
    for key, (dns_port, _, hard) in hards.items():
        B.wait_answer(dns_port, bench.WWW,
                      lambda rc, a: rc == "NOERROR" and a == [bench.WWW_ADDR], 5, hard,
                      "hard (metrics, %s) to still answer" % key)
        hard.stop()
    if scraper.errors or any(s != 200 for s, _, _ in scraper.results):
        raise BenchError("scrapes failed: %s" % (scraper.errors[:3] or [
            s for s, _, _ in scraper.results if s != 200][:3]))
    sizes = [b for _, b, _ in scraper.results]
    seconds = sorted(t for _, _, t in scraper.results)
    res["scrapes"] = {
        "count": len(scraper.results),
        "bytes": B.median(sizes),
        "seconds_median": B.median(seconds),
        "seconds_max": seconds[-1] if seconds else None,
        "idle_seconds": idle_seconds,
        "idle_scrapes": idle_scrapes,
        "idle_cpu_s": idle_cpu,
        "cpu_ms_per_scrape": 1000 * (idle_cpu["scrape"] - idle_cpu["no_scrape"])
        / max(1, idle_scrapes),
    }
    s = res["scrapes"]
    say("   %d scrapes of %.0f KB, %.1f ms each (median, at the client); idle: %.1f ms "
        "of hard's CPU per scrape" % (s["count"], s["bytes"] / 1000,
                                        1000 * s["seconds_median"], s["cpu_ms_per_scrape"]))
    return res


def table(res):
    fmt, ratio = B.fmt, B.ratio
    no, yes, s = res["no_scrape"], res["scrape"], res["scrapes"]
    rows = [
        ("queries/s at max rate (median)", no["qps"], yes["qps"], "%.0f"),
        ("server CPU per answered query at max rate, µs", no["cpu_us"], yes["cpu_us"],
         "%.2f"),
        ("server CPU per answered query at %d qps, µs" % no["lat_rate"], no["lat_cpu_us"],
         yes["lat_cpu_us"], "%.2f"),
        ("latency at %d qps, mean / p99, µs" % no["lat_rate"], None, None, None),
        ("peak RSS, MB", no["peak_rss_mb"], yes["peak_rss_mb"], "%.1f"),
    ]
    lines = ["### Metrics: a scrape every %g s vs none (issue 18 item 1)" % INTERVAL, "",
             "Two hards alike on core %s, each answering `%s` and holding %d more "
             "addresses; one scraped (`GET /metrics`, %.0f KB of text) every %g s "
             "for the whole run, the other never. Alternating max-rate runs, as "
             "in run 1." % (B.SERVER_CPU, "www.bench.test", ADDRS, s["bytes"] / 1000,
                            INTERVAL), "",
             "| | no scrape | scrape every %g s | scrape / none |" % INTERVAL,
             "|---|---:|---:|---:|"]
    for label, a, b, spec in rows:
        if spec is None:
            lines.append("| %s | %s / %s | %s / %s | %s |" % (
                label, fmt(no["lat_mean_us"], "%.0f"), fmt(no["lat_p99_us"], "%.0f"),
                fmt(yes["lat_mean_us"], "%.0f"), fmt(yes["lat_p99_us"], "%.0f"),
                fmt(ratio(yes["lat_mean_us"], no["lat_mean_us"]))))
            continue
        lines.append("| %s | %s | %s | %s |" % (label, fmt(a, spec), fmt(b, spec),
                                                 fmt(ratio(b, a), "%.3f")))
    lines += ["",
              "Per-run CPU per query at max rate, µs: no scrape %s; scrape %s." % (
                  ", ".join(fmt(x) for x in no["cpu_us_runs"]),
                  ", ".join(fmt(x) for x in yes["cpu_us_runs"])),
              "%d scrapes in all, %.1f ms each at the client (median; max %.1f ms). "
              "Idle for %.0f s: the scraped hard used %.3f s of CPU, the other %.3f s: "
              "%.1f ms per scrape." % (
                  s["count"], 1000 * s["seconds_median"], 1000 * (s["seconds_max"] or 0),
                  s["idle_seconds"], s["idle_cpu_s"]["scrape"], s["idle_cpu_s"]["no_scrape"],
                  s["cpu_ms_per_scrape"]),
              "Others on core %s at most %.0f%% of the time (no scrape) / %.0f%% "
              "(scrape)." % (B.SERVER_CPU, 100 * no["other_share_max"],
                             100 * yes["other_share_max"]),
              ""]
    return lines
