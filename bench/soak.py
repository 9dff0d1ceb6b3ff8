"""The soak run of `make bench` (issue 16): hard checking HTTP, HTTPS and
TCP names mixed, 1,000 checks a second, for BENCH_SOAK_SECONDS (600); its
resident memory (VmRSS) is read every BENCH_SOAK_SAMPLE seconds, and the
table gives it at a tenth of the run (minute 1) and at its end (minute 10).
Memory that a kind of check loses, or that grows with the checks made,
shows as growth between the two; a hard that keeps nothing per check stays
flat.  The checks go to the nginx of run 3 (bench/run starts it), on
loopback addresses of its own."""

import os
import sqlite3
import time

import benchlib as B
from benchlib import say

SECONDS = B.env_num("BENCH_SOAK_SECONDS", 600, 60)
SAMPLE = B.env_num("BENCH_SOAK_SAMPLE", 10, 5)
FREQUENCY = 0.1	# check_frequency of every name
PER_KIND = 25	# addresses per name: 4 names x 25 / 0.1 s = 1,000 checks a second
# growth per minute fitted from minute 1 on: VmRSS swings by a megabyte or
# two as malloc gives memory back, so two readings alone say little
SLOPE_AIM_KIB = 128

# name: (URL template, extra lines of the name)
KINDS = {
    "http": ("http://%s:%d/health", ""),
    "https": ("https://%s:%d/health", ""),	# resumed sessions (a share per target)
    "https-full": ("https://%s:%d/health",	# a full handshake every check
                   "  tls_full_handshake_interval = 0\n"),
    "tcp": ("%s:%d", "  check_method = tcp\n"),
}
PORT_OF = {"http": "http", "https": "https", "https-full": "https", "tcp": "tcp"}


def soak_addresses():
    """Addresses of the soak's own, apart from run 3's 127.0.x.y."""
    return ["127.0.200.%d" % (i + 1) for i in range(PER_KIND)]


def names_text(addrs, ports, cert, host):
    parts = []
    for kind, (template, extra) in KINDS.items():
        # check_timeout: the default (check_frequency, 0.1 s) fails checks
        # that a busy machine delays, which is not what this run measures
        parts.append("name %s.soak.bench.test {\n  check_frequency = %g\n"
                     "  check_timeout = 1\n%s" % (kind, FREQUENCY, extra))
        if kind.startswith("https"):
            parts.append("  ca_file = \"%s\"\n" % cert)
        url = template % (host, ports[PORT_OF[kind]])
        parts += ["  candidate c%02d { check_address = \"%s\" address = { %s } }\n"
                  % (j, url, a) for j, a in enumerate(addrs)]
        parts.append("}\n")
    return "".join(parts)


def check_counts(data_file):
    con = sqlite3.connect("file:%s?mode=ro" % data_file, uri=True, timeout=5)
    try:
        checks, successes = con.execute(
            "SELECT sum(checks), sum(successes) FROM candidates").fetchone()
    finally:
        con.close()
    return checks or 0, successes or 0


def slope_kib_per_min(samples):
    """Least-squares slope of [(seconds, KiB)], in KiB a minute."""
    n = len(samples)
    if n < 2:
        return None
    mt = sum(t for t, _ in samples) / n
    mr = sum(r for _, r in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    return 60 * sum((t - mt) * (r - mr) for t, r in samples) / var if var else None


def run(tmp, upstream_port, bench):
    """bench: bench/run's namespace (its nginx, hard and configuration)."""
    addrs = soak_addresses()
    scheduled = len(KINDS) * len(addrs) / FREQUENCY
    say("== soak: %s names of %d addresses each, check_frequency = %g (%.0f checks/s), "
        "%g s" % ("/".join(KINDS), len(addrs), FREQUENCY, scheduled, SECONDS))
    nginx, ports, cert = bench.start_scale_nginx(tmp, addrs)
    data_file = os.path.join(tmp, "soak.db")
    dns_port = B.free_port()
    hard = bench.start_hard(tmp, "soak", bench.hard_config(
        dns_port, upstream_port, data_file, names_text(addrs, ports, cert, bench.CHECK_HOST)))
    for kind in KINDS:
        B.wait_answer(dns_port, "%s.soak.bench.test" % kind,
                      lambda rc, a: rc == "NOERROR" and len(a) >= 1, 30, hard,
                      "hard (soak) to answer %s.soak.bench.test" % kind)
    t0 = time.monotonic()
    cpu0 = B.cpu_seconds(hard.pid)
    accepts0 = bench.nginx_status(ports["status"])["accepts"]
    samples = []
    while True:
        hard.check_alive()
        nginx.check_alive()
        elapsed = time.monotonic() - t0
        samples.append((elapsed, B.status_kb(hard.pid, "VmRSS")))
        if elapsed >= SECONDS:
            break
        time.sleep(max(0.0, min(SAMPLE * len(samples), SECONDS) - elapsed))
    wall = time.monotonic() - t0
    cpu_share = (B.cpu_seconds(hard.pid) - cpu0) / wall
    # each reading of the counter is a connection too
    checks_per_s = (bench.nginx_status(ports["status"])["accepts"] - accepts0 - 1) / wall
    checks, successes = check_counts(data_file)
    hard.stop()
    nginx.stop()
    first = next(r for t, r in samples if t >= SECONDS / 10)
    last = samples[-1][1]
    res = {"seconds": wall, "scheduled_per_s": scheduled, "checks_per_s": checks_per_s,
           "rss_first_kib": first, "rss_last_kib": last, "growth_kib": last - first,
           "slope_kib_per_min": slope_kib_per_min(
               [(t, r) for t, r in samples if t >= SECONDS / 10]),
           "checks": checks, "failed": checks - successes, "hard_cpu_share": cpu_share,
           "rss_samples": samples}
    say("   RSS %d KiB at %.0f s, %d KiB at %.0f s (%+d KiB, %s KiB/min); %.0f checks/s "
        "at nginx, %d of %d checks failed; hard %.0f%% of a core" % (
            first, SECONDS / 10, last, wall, last - first,
            B.fmt(res["slope_kib_per_min"], "%+.0f"), checks_per_s, res["failed"], checks,
            100 * cpu_share))
    return res


def table(s):
    minute = s["seconds"] / 60
    slope = s["slope_kib_per_min"]
    met = slope is not None and slope <= SLOPE_AIM_KIB
    rss = [r for _, r in s["rss_samples"]]
    lines = ["### Soak: HTTP, HTTPS and TCP checks mixed (issue 16)", "",
             "%d names (%s) of %d addresses, `check_frequency = %g`: %.0f checks/s "
             "scheduled, %.0f/s served by nginx; %d of %d checks failed; hard used "
             "%.2f of a core." % (
                 len(KINDS), ", ".join(KINDS), PER_KIND, FREQUENCY, s["scheduled_per_s"],
                 s["checks_per_s"], s["failed"], s["checks"], s.get("hard_cpu_share", 0)), "",
             "| | minute %g | minute %g | growth | growth per minute (fit) | aim |" % (
                 round(minute / 10, 1), round(minute, 1)),
             "|---|---:|---:|---:|---:|---|",
             "| hard's RSS (VmRSS), KiB | %d | %d | %+d | %s | fit ≤ %d KiB/min: %s |" % (
                 s["rss_first_kib"], s["rss_last_kib"], s["growth_kib"],
                 B.fmt(slope, "%+.0f"), SLOPE_AIM_KIB, "met" if met else "**missed**"),
             "",
             "VmRSS read every %g s: %d to %d KiB over the run." % (SAMPLE, min(rss), max(rss)),
             ""]
    return lines
