"""Run 5 of bench/run: forwarding when the nameservers fail, hard beside
dnsmasq given the same nameservers (issue 16 items 5 and 6).

  a. refusing: the only nameserver's port is closed (a local resolver
     restarting).  A and AAAA for one name are sent back to back from one
     socket, as glibc's getaddrinfo(AF_UNSPEC) does; the figure is the time
     until both are answered.
  b. silent: two nameservers that never answer, once both are known down
     (a first query has waited them out).  The figure is the time to the
     SERVFAIL.

A client that has no answer after FAULT_WAIT s (glibc's default timeout:5)
counts at that figure and as unanswered: dnsmasq 2.90 answers neither case,
its clients time out.  bench/README.md, section 5, says how to read it.
"""

import os
import select
import socket
import time

import benchlib as B
from benchlib import say

PAIRS = B.env_num("BENCH_FAULT_PAIRS", 40, 10, kind=int)
QUERIES = B.env_num("BENCH_FAULT_QUERIES", 20, 8, kind=int)
FAULT_WAIT = B.env_num("BENCH_FAULT_WAIT", 5.0)
SPACING = 0.05  # between two clients' sends
READY = "ready.fault.bench.test"


def hard_names():
    return ("name %s {\n  check_method = tcp\n  failure_mode = all\n"
            "  candidate a { check_address = \"127.0.0.2:9\" }\n}\n" % READY)


def start_pair(tmp, label, nameserver_ports, helpers):
    """hard and dnsmasq (cache off) with the same nameservers; each answers
    READY itself, so that it can be seen running."""
    start_hard, start_dnsmasq, hard_config = helpers
    hard_port = B.free_port()
    hard = start_hard(tmp, label, hard_config(
        hard_port, nameserver_ports, os.path.join(tmp, "%s.db" % label), hard_names()))
    B.wait_answer(hard_port, READY, lambda rc, a: rc is not None, 10, hard,
                  "hard (%s) to answer" % label)
    dm_port = B.free_port()
    dm = start_dnsmasq(label, dm_port, ["--cache-size=0", "--host-record=%s,127.0.0.2" % READY]
                       + ["--server=127.0.0.1#%d" % p for p in nameserver_ports],
                       B.SERVER_CPU, ready_name=READY)
    return {"hard": (hard_port, hard), "dnsmasq": (dm_port, dm)}


def clients(port, names, qtypes):
    """One socket per name, SPACING apart, each sending qtypes back to back;
    replies are read as they come, sends or not.  Returns, per name, the
    seconds until every reply was in (None: not within FAULT_WAIT), and
    the rcodes seen."""
    results, rcodes, waiting = [None] * len(names), {}, {}

    def collect(until):
        while waiting and time.monotonic() < until:
            ready, _, _ = select.select(list(waiting), [], [],
                                        max(0.0, until - time.monotonic()))
            now = time.monotonic()
            for s in ready:
                data = s.recv(4096)
                rcode = B.RCODES.get(data[3] & 0xF, str(data[3] & 0xF)) \
                    if len(data) >= 12 else "?"
                rcodes[rcode] = rcodes.get(rcode, 0) + 1
                i, t0, left = waiting[s]
                if left > 1:
                    waiting[s] = (i, t0, left - 1)
                    continue
                results[i] = now - t0
                del waiting[s]
                s.close()
            for s, (i, t0, _) in list(waiting.items()):
                if now - t0 > FAULT_WAIT:
                    del waiting[s]
                    s.close()

    try:
        for i, name in enumerate(names):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            waiting[s] = (i, time.monotonic(), len(qtypes))
            for qtype in qtypes:
                s.sendto(B.build_query(name, qtype)[1], ("127.0.0.1", port))
            collect(time.monotonic() + SPACING)
        collect(time.monotonic() + FAULT_WAIT + SPACING)
        return results, rcodes
    finally:
        for s in waiting:
            s.close()


def summary(results, rcodes):
    waits = sorted(FAULT_WAIT if r is None else r for r in results)
    return {"median_s": B.median(waits), "p90_s": B.percentile(waits, 90),
            "max_s": waits[-1], "answered": sum(r is not None for r in results),
            "clients": len(results), "rcodes": rcodes}


def run_refusing(tmp, helpers):
    say("== forwarding, the only nameserver refusing: glibc-style A+AAAA pairs, "
        "hard vs dnsmasq")
    dead = B.free_port()
    servers = start_pair(tmp, "fault-refusing", [dead], helpers)
    out = {}
    for key, (port, proc) in servers.items():
        results, rcodes = clients(port, ["p%d.fault.bench.test" % i for i in range(PAIRS)],
                                  (1, 28))
        proc.check_alive()
        out[key] = summary(results, rcodes)
        say("   %s: pairs answered %d of %d, median %.3f s, max %.3f s, %r" % (
            key, out[key]["answered"], PAIRS, out[key]["median_s"], out[key]["max_s"], rcodes))
        proc.stop()
    return out


def run_silent(tmp, helpers):
    say("== forwarding, both nameservers silent and known down: time to SERVFAIL, "
        "hard vs dnsmasq")
    silent = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for s in silent:
            s.bind(("127.0.0.1", 0))
        servers = start_pair(tmp, "fault-silent", [s.getsockname()[1] for s in silent],
                             helpers)
        out = {}
        for key, (port, proc) in servers.items():
            # The first query waits both nameservers out: known down after it.
            clients(port, ["first.fault.bench.test"], (1,))
            results, rcodes = clients(
                port, ["s%d.fault.bench.test" % i for i in range(QUERIES)], (1,))
            proc.check_alive()
            out[key] = summary(results, rcodes)
            say("   %s: answered %d of %d, median %.3f s, max %.3f s, %r" % (
                key, out[key]["answered"], QUERIES, out[key]["median_s"],
                out[key]["max_s"], rcodes))
            proc.stop()
        return out
    finally:
        for s in silent:
            s.close()


def run(tmp, helpers):
    """helpers: bench/run's (start_hard, start_dnsmasq, hard_config)."""
    return {"refusing": run_refusing(tmp, helpers), "silent": run_silent(tmp, helpers)}


def table(res):
    def cell(v):
        return B.fmt(None if v is None else 1000 * v, "%.1f")

    lines = ["### Forwarding when the nameservers fail (hard vs dnsmasq `--cache-size=0`, "
             "same nameservers)", "",
             "| | hard | dnsmasq | hard/dnsmasq |", "|---|---:|---:|---:|"]
    for key, what, unit in (("refusing", "only nameserver refusing (port closed): A+AAAA "
                             "pair from one socket, both answered", "pairs"),
                            ("silent", "two silent nameservers, known down: time to "
                             "SERVFAIL", "queries")):
        if key not in res:
            continue
        h, d = res[key]["hard"], res[key]["dnsmasq"]
        lines.append("| %s: median, ms | %s | %s | %s |" % (
            what, cell(h["median_s"]), cell(d["median_s"]),
            B.fmt(B.ratio(h["median_s"], d["median_s"]), "%.2g")))
        lines.append("| … 90th percentile / max, ms | %s / %s | %s / %s | |" % (
            cell(h["p90_s"]), cell(h["max_s"]), cell(d["p90_s"]), cell(d["max_s"])))
        lines.append("| … %s answered within %g s / rcodes | %d of %d / %s | %d of %d / %s | |" % (
            unit, FAULT_WAIT, h["answered"], h["clients"], rcode_text(h["rcodes"]),
            d["answered"], d["clients"], rcode_text(d["rcodes"])))
    lines += ["", "A client with no answer after %g s (glibc's default `timeout:5`) counts "
              "as %g s." % (FAULT_WAIT, FAULT_WAIT), ""]
    return lines


def rcode_text(rcodes):
    return ", ".join("%s %d" % kv for kv in sorted(rcodes.items())) or "none"
