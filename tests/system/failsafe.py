#!/usr/bin/python3
"""The fail-safe set-ups of contrib/resolv.conf.md, measured (issue 17
item 6): what a program resolving through the C library sees when hard is
healthy, answers SERVFAIL, hangs or is stopped, for three ways of writing
/etc/resolv.conf.

usage (as root, from a source tree after `make hard`; HARD=/path/to/hard
measures another binary):

    tests/system/failsafe.py [--repeat N] [--no-musl] [--json] [PLAN...]

PLAN: the set-ups to measure, each optionally with the states, e.g.
`a:hung,stopped c` (default: every set-up in every state).

It re-runs itself in private mount, network and PID namespaces (`unshare
--mount --net --pid`): loopback only, its own /etc/resolv.conf and
/etc/nsswitch.conf bind-mounted over the real ones inside the namespace
(the host's files are never touched), and every process it started dies
with the namespace whatever happens.  In there:

- the upstream, the resolver the host used before hard: dnsmasq on
  127.0.0.2:53, serving www.elsewhere.test (127.0.0.88, the forwarded
  name) and its own record of the configured names (127.0.0.77, never
  checked: a client that sees it has bypassed hard's health checks);
- HTTP servers on 127.0.0.10 and ::1, the candidates of the names hard
  answers itself (failure_mode = servfail): www.example.test has the first
  only (hard answers its AAAA queries NODATA), dual.example.test both;
- the real hard, forwarding to the upstream, on 127.0.0.1:53, or for set-up
  (c) on 127.0.0.1:5354 behind a per-domain forwarder (dnsmasq on
  127.0.0.1:53 sending example.test to hard and the rest to the upstream).

The set-ups (the resolv.conf lines):
  a: nameserver 127.0.0.1
  b: nameserver 127.0.0.1, nameserver 127.0.0.2, options timeout:1 attempts:2
  c: nameserver 127.0.0.1 (the forwarder)
hard's states, in this order for each set-up (a fresh hard each time):
  healthy   its checks pass, it answers 127.0.0.10 (and ::1)
  servfail  the HTTP servers stopped: hard answers SERVFAIL for the names
  hung      SIGSTOP (SIGCONT after the lookups)
  stopped   SIGTERM: nothing listens on hard's port
In each, three clients look up the three names at once, each lookup timed:
glibc's `getent ahosts NAME` (getaddrinfo, AF_UNSPEC: A and AAAA queries
here, as on a host with an IPv6 address), glibc's getaddrinfo with AF_INET
(A only: what getent and every AI_ADDRCONFIG lookup ask on a host without
IPv6; a loopback-only namespace cannot show that through getent, whose
AI_ADDRCONFIG refuses AF_INET there), and, when musl-gcc is installed, a
getaddrinfo program linked with musl (AF_UNSPEC).  In the healthy state each
lookup is repeated (--repeat): musl asks every nameserver at once and takes
the first reply.

Prints Markdown tables (those in contrib/resolv.conf.md), or with
--json the results for tests/system/test_failsafe.py."""

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

UNSHARE = "/usr/bin/unshare"
IP = "/usr/sbin/ip"
MOUNT = "/usr/bin/mount"
GETENT = "/usr/bin/getent"
MUSL_GCC = "musl-gcc"

CONFIGURED = "www.example.test"    # in har.conf, an IPv4 candidate
DUAL = "dual.example.test"         # in har.conf, an IPv4 and an IPv6 candidate
FORWARDED = "www.elsewhere.test"
NAMES = {
    CONFIGURED: "configured in hard, IPv4 candidate",
    DUAL: "configured in hard, IPv4 and IPv6 candidates",
    FORWARDED: "forwarded",
}
# The HTTP-checked servers hard answers: both names' IPv4 candidate, and
# DUAL's IPv6 one.
CANDIDATE = "127.0.0.10"
CANDIDATE6 = "::1"
UNCHECKED = "127.0.0.77"           # the upstream's own record of both names
ELSEWHERE = "127.0.0.88"           # FORWARDED, from the upstream
# What hard answers while its checks pass: (name, type) -> answer.
HEALTHY = {(CONFIGURED, "A"): [CANDIDATE], (DUAL, "A"): [CANDIDATE],
           (DUAL, "AAAA"): [CANDIDATE6]}
UPSTREAM = "127.0.0.2"
HARD_SIDE_PORT = 5354              # hard behind the forwarder, set-up (c)

SETUPS = {
    "a": {"title": "(a)",
          "resolv": "nameserver 127.0.0.1\n", "forwarder": False},
    "b": {"title": "(b)",
          "resolv": "nameserver 127.0.0.1\nnameserver %s\n"
                    "options timeout:1 attempts:2\n" % UPSTREAM,
          "forwarder": False},
    "c": {"title": "(c)",
          "resolv": "nameserver 127.0.0.1\n", "forwarder": True},
}
STATES = ("healthy", "servfail", "hung", "stopped")
CLIENTS = {
    "glibc": "glibc, A and AAAA (getent ahosts)",
    "glibc-v4": "glibc, A only (getaddrinfo AF_INET)",
    "musl": "musl, A and AAAA (getaddrinfo)",
}
# glibc's getaddrinfo asked for A only, with no flags (getent's
# AI_ADDRCONFIG would refuse AF_INET on a host with no IPv4 address but
# loopback's); it prints what the musl client prints, and the time of the
# lookup alone (Python's start-up is not the resolver's).
GLIBC_A_ONLY = """
import socket, sys, time
t0 = time.monotonic()
try:
    found = socket.getaddrinfo(sys.argv[1], None, socket.AF_INET,
                               socket.SOCK_STREAM)
except socket.gaierror as e:
    print("error %d %s" % (e.errno, e.strerror))
    found = None
print("seconds %.6f" % (time.monotonic() - t0))
for f in found or ():
    print(f[4][0])
sys.exit(0 if found else 2)
"""
# One lookup never takes longer than glibc's 2 x 5 s or musl's 5 s; this
# deadline only stops a run that has gone wrong.
LOOKUP_DEADLINE = 60.0
# Waits for hard and the servers, generous for a loaded machine (and
# hard under ASan).
WAIT = 20.0

# A getaddrinfo client, linked with musl: one line per address, or
# "error CODE TEXT" and exit status 2.
MUSL_CLIENT_SOURCE = r"""
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv)
{
	struct addrinfo hints, *found, *ai;
	char text[INET6_ADDRSTRLEN];
	int err;

	if (argc != 2)
		return 64;
	memset(&hints, 0, sizeof hints);
	hints.ai_socktype = SOCK_STREAM;
	err = getaddrinfo(argv[1], NULL, &hints, &found);
	if (err != 0) {
		printf("error %d %s\n", err, gai_strerror(err));
		return 2;
	}
	for (ai = found; ai != NULL; ai = ai->ai_next) {
		const void *a = ai->ai_family == AF_INET
			? (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
			: (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
		printf("%s\n", inet_ntop(ai->ai_family, a, text, sizeof text));
	}
	freeaddrinfo(found);
	return 0;
}
"""


# ------------------------------------------------------------ the clients


EAI_NAMES = {getattr(socket, n): n for n in dir(socket) if n.startswith("EAI_")}
# Every client is run with these, and timed from its start to its exit.
RUN = {"capture_output": True, "text": True, "stdin": subprocess.DEVNULL,
       "timeout": LOOKUP_DEADLINE}


def unique(items):
    seen = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def lookup_glibc(name):
    """getent ahosts: glibc's getaddrinfo, AF_UNSPEC and AI_ADDRCONFIG."""
    t0 = time.monotonic()
    r = subprocess.run([GETENT, "ahosts", name], **RUN)
    seconds = time.monotonic() - t0
    found = unique(line.split()[0] for line in r.stdout.splitlines() if line.strip())
    return {"addresses": found, "status": r.returncode,
            "error": "" if r.returncode == 0 else "exit %d" % r.returncode,
            "seconds": seconds}


def lookup_glibc_a_only(name):
    t0 = time.monotonic()
    r = subprocess.run([harness.PYTHON, "-c", GLIBC_A_ONLY, name], **RUN)
    return client_result(r, time.monotonic() - t0)


def lookup_musl(musl_client, name):
    t0 = time.monotonic()
    r = subprocess.run([musl_client, name], **RUN)
    return client_result(r, time.monotonic() - t0)


def client_result(r, seconds):
    """What a client printed: an address a line, or "error CODE TEXT"; a
    line "seconds S" is the time of the lookup itself (without the
    client's start-up)."""
    lines = []
    for line in r.stdout.splitlines():
        if line.startswith("seconds "):
            seconds = float(line.split()[1])
        else:
            lines.append(line)
    if r.returncode == 0:
        return {"addresses": unique(lines), "status": 0, "error": "",
                "seconds": seconds}
    error = "exit %d %s" % (r.returncode, r.stderr.strip())
    if lines and lines[0].startswith("error "):
        code = int(lines[0].split()[1])    # the same in glibc and musl
        error = EAI_NAMES.get(code, lines[0].split(" ", 2)[2])
    return {"addresses": [], "status": r.returncode, "error": error,
            "seconds": seconds}


def build_musl_client(workdir):
    """The musl client's path, or None when musl-gcc is not installed."""
    if not shutil.which(MUSL_GCC):
        return None
    source = os.path.join(workdir, "gai.c")
    binary = os.path.join(workdir, "gai-musl")
    with open(source, "w") as f:
        f.write(MUSL_CLIENT_SOURCE)
    subprocess.run([MUSL_GCC, "-static", "-O2", "-o", binary, source],
                   check=True, capture_output=True, timeout=120)
    return binary


def lookups(musl, repeat):
    """Every name by every client at once; each (client, name) repeat
    times in a row.  Returns {client: {name: [result, ...]}}."""
    one = {"glibc": lookup_glibc, "glibc-v4": lookup_glibc_a_only,
           "musl": lambda name: lookup_musl(musl, name)}
    clients = [c for c in CLIENTS if c != "musl" or musl]
    jobs = {}
    with concurrent.futures.ThreadPoolExecutor(
            max_workers=len(NAMES) * len(clients)) as pool:
        for client in clients:
            for name in NAMES:
                jobs[(client, name)] = pool.submit(
                    lambda c=client, n=name: [one[c](n) for _ in range(repeat)])
    results = {}
    for (client, name), job in jobs.items():
        results.setdefault(client, {})[name] = job.result()
    return results


# ------------------------------------------------------------ the servers


class Forwarder:
    """dnsmasq on 127.0.0.1:53: example.test to hard on the side port,
    every other name to the upstream.  No cache, so that every lookup
    reaches the server it is sent to (hard's answers, with its default
    ttl = 0, would not be cached anyway)."""

    def __init__(self, workdir):
        self.logfile = os.path.join(workdir, "forwarder.log")
        args = [harness.DNSMASQ, "-k", "--conf-file=/dev/null", "--user=root",
                "--pid-file=", "--port=53", "--listen-address=127.0.0.1",
                "--bind-interfaces", "--no-resolv", "--no-hosts",
                "--cache-size=0",
                "--server=/example.test/127.0.0.1#%d" % HARD_SIDE_PORT,
                "--server=%s" % UPSTREAM,
                "--log-queries", "--log-facility=-"]
        with open(self.logfile, "a") as err:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)
        harness.wait_until(self._answers, WAIT, what="the forwarder to answer")

    def _answers(self):
        if self.proc.poll() is not None:
            with open(self.logfile) as f:
                raise AssertionError("the forwarder exited: %s" % f.read())
        r = harness.query_at("127.0.0.1", 53, FORWARDED, timeout=0.5)
        return harness.addresses(r) == [ELSEWHERE]

    def stop(self):
        harness._kill(self.proc)


class WebServers:
    """The candidates' HTTP servers: 127.0.0.10 (both names) and ::1
    (DUAL's IPv6 candidate)."""

    def __init__(self, workdir):
        self.servers = []
        for addr in (CANDIDATE, CANDIDATE6):
            self.servers.append(harness.HTTPServer(workdir, addr))

    def url(self, addr):
        return next(w.url() for w in self.servers if w.addr == addr)

    def start(self):
        for w in self.servers:
            if w.proc.poll() is not None:
                w.start()

    def stop(self):
        for w in self.servers:
            w.stop()


def hard_answers(h):
    """hard's own answers, {(name, type): answer}."""
    got = {}
    for name, rdtype in HEALTHY:
        try:
            got[(name, rdtype)] = harness.answer(h, name, rdtype, timeout=0.5)
        except Exception:  # noqa: BLE001 - no reply yet: polled again
            got[(name, rdtype)] = None
    return got


def wait_hard(h, wanted, what):
    """wanted: {(name, type): answer}."""
    def seen():
        h.assert_alive()
        return hard_answers(h) == wanted
    harness.wait_until(seen, WAIT, 0.05, what="hard to answer %s: %s" % (
        what, wanted))


def name_section(name, candidates):
    lines = ["name %s {" % name, "    check_frequency = 1",
             "    check_timeout = 1", "    failure_mode = servfail"]
    for title, url in candidates:
        lines += ['    candidate "%s" {' % title,
                  '        check_address = "%s"' % url, "    }"]
    return "\n".join(lines + ["}", ""])


def start_hard(workdir, port, web):
    body = name_section(CONFIGURED, [("web", web.url(CANDIDATE))]) + \
        name_section(DUAL, [("web", web.url(CANDIDATE)),
                            ("web6", web.url(CANDIDATE6))])
    config = harness.hard_config(body, "%s:53" % UPSTREAM, port)
    h = harness.Hard(workdir, config, ["127.0.0.1"], port)
    h.wait_ready(WAIT)
    wait_hard(h, HEALTHY, "its checked servers")
    return h


SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:")


def hard_problems(h):
    """What went wrong with hard beyond the states it was put in."""
    problems = []
    if h.proc.returncode not in (0, None):
        problems.append("hard exited with status %s" % h.proc.returncode)
    log = h.log()
    for mark in SANITIZER_MARKS:
        if mark in log:
            at = log.index(mark)
            problems.append(log[max(0, at - 200):at + 4000])
    return problems


# ------------------------------------------------------------ one set-up


def measure_setup(workdir, key, states, web, musl, repeat, write_resolv):
    setup = SETUPS[key]
    write_resolv(setup["resolv"])
    forwarder = Forwarder(workdir) if setup["forwarder"] else None
    port = HARD_SIDE_PORT if forwarder else 53
    h = start_hard(workdir, port, web)
    rows = []
    try:
        for state in states:
            rows.append(measure_state(key, state, h, web, musl, repeat))
        h.stop(WAIT)
    finally:
        if h.alive():
            h.signal(signal.SIGCONT)
            h.stop(WAIT)
        if forwarder:
            forwarder.stop()
        web.start()
    return rows, hard_problems(h)


def measure_state(key, state, h, web, musl, repeat):
    if state == "servfail":
        web.stop()
        wait_hard(h, {k: "SERVFAIL" for k in HEALTHY}, "with every candidate down")
    elif state == "hung":
        h.signal(signal.SIGSTOP)
    elif state == "stopped":
        h.stop(WAIT)
    results = lookups(musl, repeat if state == "healthy" else 1)
    if state == "servfail":
        web.start()
        wait_hard(h, HEALTHY, "its checked servers again")
    elif state == "hung":
        h.signal(signal.SIGCONT)
        wait_hard(h, HEALTHY, "after SIGCONT")
    return {"setup": key, "state": state, "results": results}


# ------------------------------------------------------------ the namespace


def enter_namespace_files(workdir):
    """Loopback up; this run's resolv.conf and nsswitch.conf over the real
    ones (a private mount namespace: the host's files are not touched).
    Returns write_resolv(text), which rewrites resolv.conf in place."""
    subprocess.run([IP, "link", "set", "lo", "up"], check=True)
    resolv = os.path.join(workdir, "resolv.conf")
    nsswitch = os.path.join(workdir, "nsswitch.conf")
    with open(resolv, "w") as f:
        f.write("nameserver 127.0.0.1\n")
    with open(nsswitch, "w") as f:
        # glibc's own DNS client: no nscd, no systemd-resolved in between
        f.write("hosts: files dns\n")
    for private, real in ((resolv, "/etc/resolv.conf"),
                          (nsswitch, "/etc/nsswitch.conf")):
        subprocess.run([MOUNT, "--bind", private, real], check=True)

    def write_resolv(text):
        with open(resolv, "r+") as f:     # the same inode: the bind stays
            f.truncate(0)
            f.write(text)
    return write_resolv


def versions():
    out = {"date": datetime.date.today().isoformat(),
           "kernel": platform.release(),
           "glibc": os.confstr("CS_GNU_LIBC_VERSION")}
    r = subprocess.run([harness.HARD, "-V"], capture_output=True, text=True)
    out["hard"] = (r.stdout or r.stderr).strip().splitlines()[0] if r.stdout or r.stderr else "?"
    r = subprocess.run([harness.DNSMASQ, "--version"], capture_output=True, text=True)
    words = r.stdout.split()
    out["dnsmasq"] = "dnsmasq " + words[2] if len(words) > 2 else "dnsmasq ?"
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "musl"],
                       capture_output=True, text=True)
    out["musl"] = r.stdout.strip() if r.returncode == 0 else "?"
    return out


def run_inside(args):
    workdir = tempfile.mkdtemp(prefix="har-failsafe-")
    started = []
    try:
        write_resolv = enter_namespace_files(workdir)
        musl = None if args.no_musl else build_musl_client(workdir)
        upstream = harness.Upstream(workdir, (
            "--host-record=%s,%s" % (CONFIGURED, UNCHECKED),
            "--host-record=%s,%s" % (DUAL, UNCHECKED),
            "--host-record=%s,%s" % (FORWARDED, ELSEWHERE)),
            addr=UPSTREAM, port=53)
        started.append(upstream)
        web = WebServers(workdir)
        started.append(web)
        report = {"versions": versions(), "musl": bool(musl),
                  "rows": [], "problems": []}
        for key, states in args.plan.items():
            rows, problems = measure_setup(workdir, key, states, web,
                                           musl, args.repeat, write_resolv)
            report["rows"] += rows
            report["problems"] += problems
    finally:
        for process in reversed(started):
            process.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return report


# ------------------------------------------------------------ the report


def outcome(result):
    if result["status"] == 0:
        return ", ".join(result["addresses"]) or "no address"
    return "fails, %s" % result["error"]


def cell(samples):
    """The outcome and its time (the median of the samples); when they
    differ (a race), each outcome with its count."""
    groups = {}
    for s in samples:
        groups.setdefault(outcome(s), []).append(s["seconds"])
    parts = []
    for text, seconds in groups.items():
        seconds = sorted(seconds)
        median = seconds[len(seconds) // 2]
        count = "" if len(groups) == 1 else "%d of %d: " % (len(seconds), len(samples))
        parts.append("%s%s, %.2f s" % (count, text, median))
    return "; ".join(parts)


def table(report):
    """A Markdown table per name: a row per set-up and state, a column per
    client."""
    clients = [c for c in CLIENTS if c != "musl" or report["musl"]]
    out = []
    for name, kind in NAMES.items():
        head = ["set-up", "hard"] + [CLIENTS[c] for c in clients]
        out += ["%s (%s):" % (name, kind), "",
                "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in report["rows"]:
            cells = [SETUPS[row["setup"]]["title"], row["state"]]
            cells += [cell(row["results"][c][name]) for c in clients]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    v = report["versions"]
    out.append("Measured %s by tests/system/failsafe.py: %s, %s, musl %s, "
               "%s, kernel %s." % (v["date"], v["hard"], v["glibc"], v["musl"],
                                   v["dnsmasq"], v["kernel"]))
    out += ["PROBLEM: " + p for p in report["problems"]]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------ entry points


def plan_words(plan):
    """{"a": [states], ...} as command-line words: a:healthy,hung b ..."""
    return ["%s:%s" % (key, ",".join(states)) for key, states in plan.items()]


def parse_plan(words):
    """Words KEY or KEY:STATE,STATE... -> {key: [states]} in the order of
    STATES; no words: every set-up, every state."""
    plan = {}
    for word in words or sorted(SETUPS):
        key, _, states = word.partition(":")
        states = states.split(",") if states else list(STATES)
        if key not in SETUPS or not set(states) <= set(STATES):
            raise ValueError("not a set-up (a, b, c) with states of %s: %s"
                             % (",".join(STATES), word))
        plan[key] = [s for s in STATES if s in states]
    return plan


def measure(plan, repeat=20, musl=True, timeout=600):
    """Runs the measurement in fresh namespaces; returns the report (what
    --json prints)."""
    args = [UNSHARE, "--mount", "--net", "--pid", "--fork", "--kill-child",
            "--mount-proc", "--", harness.PYTHON, os.path.abspath(__file__),
            "--inside", "--json", "--repeat", str(repeat)]
    if not musl:
        args.append("--no-musl")
    args += plan_words(plan)
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise AssertionError("failsafe.py exited %d:\n%s" % (r.returncode,
                                                           r.stderr[-6000:]))
    return json.loads(r.stdout)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="PLAN: set-ups a, b, c, each optionally with the states to "
               "measure, e.g. `a:hung,stopped c`; default: all of them.")
    p.add_argument("plan", nargs="*", metavar="PLAN",
                   help="a set-up, a, b or c, optionally with states: b:hung,stopped")
    p.add_argument("--repeat", type=int, default=20,
                   help="lookups of each name while hard is healthy (default 20)")
    p.add_argument("--no-musl", action="store_true",
                   help="glibc only, even when musl-gcc is installed")
    p.add_argument("--json", action="store_true", help="JSON, not tables")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.plan = parse_plan(args.plan)
    except ValueError as e:
        p.error(str(e))
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    return args


def main(argv):
    args = parse_args(argv)
    if args.inside:
        report = run_inside(args)
        print(json.dumps(report) if args.json else table(report), end="")
        return 0
    if os.geteuid() != 0:
        sys.exit("failsafe.py: run as root (it makes network and mount namespaces)")
    report = measure(args.plan, args.repeat, not args.no_musl)
    print(json.dumps(report, indent=1) if args.json else table(report), end="")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
