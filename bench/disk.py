"""bench/disk.py - what the data file costs the disk (issue 18, item 4), run by
bench/run (BENCH_RUNS=disk) and shown in results.md; bench/README.md
explains the rows.

For each case (addresses checked over HTTP at a check_frequency: 4 every
10 s, 4 every second, 1,000 every 2 s; the scale run's nginx serves them),
two hards run side by side on core 0, each with a data file of its own in
the bench's temporary directory: BENCH_DISK_BEFORE (a binary built from
the commit before the change; the column is left out without it) and
bench/run's hard, with the configuration's defaults (data_file_interval
60 s, data_file_bytes_per_check 150).  After BENCH_DISK_WARMUP (10) s,
each hard's write_bytes in /proc/PID/io (every page of the page cache it
dirtied: the data file, its WAL and -shm index; hard logs only at events)
is read at the start and the end of a window that runs from a write of
the after's to its first write at least BENCH_DISK_SECONDS (120) later,
so that it holds whole write cycles: a minute each with many checks, up
to ten (the budget's longest wait) with few, as at four addresses every
10 s (about 8 minutes: that case takes about 10).  Checks are nginx's
requests over the window (stub_status), half each when both run (they
check the same addresses as often).
"""

import os
import subprocess
import time

import benchlib as B
from benchlib import BenchError, Proc, say

SECONDS = B.env_num("BENCH_DISK_SECONDS", 120, 60)
WARMUP = B.env_num("BENCH_DISK_WARMUP", 10, 5)
BEFORE = os.environ.get("BENCH_DISK_BEFORE") or ""
CASES = [(4, 10), (4, 1), (1000, 2)]  # (addresses, check_frequency)
AIM = 150  # bytes per check


def write_bytes(pid):
    with open("/proc/%d/io" % pid) as f:
        for line in f:
            key, value = line.split(":")
            if key == "write_bytes":
                return int(value)
    raise BenchError("no write_bytes in /proc/%d/io" % pid)


def next_write(pid, not_before, timeout):
    """Waits for the process's write_bytes to move at or after the
    monotonic time not_before, then for the write to end: its time."""
    deadline = time.monotonic() + timeout
    seen = write_bytes(pid)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = write_bytes(pid)
        if now != seen and time.monotonic() >= not_before:
            moment = time.monotonic()
            time.sleep(0.5)  # a commit and its checkpoint take milliseconds
            return moment
        seen = now
    raise BenchError("no write by pid %d within %.0f s" % (pid, timeout))


# A write waits at most ten data_file_intervals of 60 s for the budget.
CYCLE_LIMIT = 11 * 60


def names_text(addrs, frequency, http_port):
    """The addresses in names of 50 candidates at most."""
    parts = []
    for i in range(0, len(addrs), 50):
        parts.append("name d%02d.bench.test {\n  check_frequency = %g\n" % (i // 50, frequency))
        parts += ["  candidate c%03d { check_address = \"http://health.bench.test:%d/health\""
                  " address = { %s } }\n" % (j, http_port, a)
                  for j, a in enumerate(addrs[i:i + 50])]
        parts.append("}\n")
    return "".join(parts)


def start(runner, tmp, label, binary, config_text):
    conf = os.path.join(tmp, "har-disk-%s.conf" % label)
    with open(conf, "w") as f:
        f.write(config_text)
    check = subprocess.run([binary, "-t", "-c", conf], capture_output=True, text=True)
    if check.returncode != 0:
        raise BenchError("%s -t rejects the disk configuration:\n%s%s" % (
            binary, check.stdout, check.stderr))
    return Proc("hard (disk, %s)" % label, [binary, "-f", "-c", conf], cpu=B.SERVER_CPU,
                log=os.path.join(B.OUT, "hard-disk-%s.log" % label))


def measure_case(runner, tmp, upstream_port, addrs, frequency, ports):
    """Both hards on the same addresses at once: {label: figures}."""
    text = names_text(addrs, frequency, ports["http"])
    binaries = [("after", B.HARD)] + ([("before", BEFORE)] if BEFORE else [])
    hards = {}
    try:
        for label, binary in binaries:
            port = B.free_port()
            db = os.path.join(tmp, "disk-%d-%g-%s.db" % (len(addrs), frequency, label))
            hards[label] = (start(runner, tmp, "%d-%g-%s" % (len(addrs), frequency, label),
                                  binary, runner.hard_config(port, upstream_port, db, text)),
                            port, db)
        for label, (proc, port, db) in hards.items():
            B.wait_answer(port, "d00.bench.test", lambda rc, a: rc == "NOERROR" and a, 30,
                          proc, "hard (disk, %s) to answer" % label)
        time.sleep(WARMUP)
        after_pid = hards["after"][0].pid
        t0 = next_write(after_pid, 0, CYCLE_LIMIT)
        first = {label: write_bytes(p.pid) for label, (p, _, _) in hards.items()}
        requests0 = runner.nginx_requests(ports["status"])
        next_write(after_pid, t0 + SECONDS, SECONDS + CYCLE_LIMIT)
        last = {label: write_bytes(p.pid) for label, (p, _, _) in hards.items()}
        requests = runner.nginx_requests(ports["status"]) - requests0
        wall = time.monotonic() - t0
        for label, (proc, _, db) in hards.items():
            proc.check_alive()
        scheduled = len(addrs) * wall / frequency
        out = {}
        for label, (proc, _, db) in hards.items():
            # both check the same addresses as often: half of nginx's each
            checks = requests / len(hards)
            written = last[label] - first[label]
            size = sum(os.path.getsize(db + s) for s in ("", "-wal")
                       if os.path.exists(db + s))
            out[label] = {"bytes": written, "checks": checks, "seconds": wall,
                          "scheduled": scheduled,
                          "per_check": written / checks if checks else None,
                          "per_second": written / wall, "file_bytes": size}
            say("   %s: %d bytes written for %.0f checks in %.0f s: %s bytes a check, "
                "%.0f bytes a second" % (label, written, checks, wall,
                                         B.fmt(out[label]["per_check"], "%.0f"),
                                         written / wall))
        return out
    finally:
        for proc, _, _ in hards.values():
            proc.stop()


def run(tmp, upstream_port, runner):
    """runner: bench/run's module (its nginx and configuration helpers)."""
    say("== data file: bytes written per check, %s side by side, windows of whole "
        "write cycles, at least %g s" % (
        "before and after" if BEFORE else "after only (BENCH_DISK_BEFORE unset)", SECONDS))
    where = subprocess.run(["stat", "-f", "-c", "%T", tmp], capture_output=True, text=True)
    if where.stdout.strip() == "tmpfs":
        raise BenchError("%s is on tmpfs, whose pages the kernel does not count as "
                         "written: set TMPDIR to a directory on a disk" % tmp)
    addrs = runner.scale_addresses(max(n for n, _ in CASES))
    nginx, ports, _cert = runner.start_scale_nginx(tmp, addrs)
    res = {"cases": [], "before": "%s (commit %s)" % (
        B.first_line([BEFORE, "-V"]), B.git_describe(os.path.dirname(os.path.abspath(BEFORE))))
        if BEFORE else None,
           "file_system": "%s (%s)" % (tmp, where.stdout.strip() or "?")}
    try:
        for count, frequency in CASES:
            say("disk: %d addresses every %g s" % (count, frequency))
            res["cases"].append({"addresses": count, "frequency": frequency,
                                 "figures": measure_case(runner, tmp, upstream_port,
                                                         addrs[:count], frequency, ports)})
    finally:
        nginx.stop()
    return res


def table(res, verdict, aim):
    """The rows of results.md; verdict and aim are bench/run's."""
    before = res["before"] is not None
    lines = ["### Data file: bytes written per check (`write_bytes` of /proc/PID/io: the "
             "file, its WAL and index), windows of whole write cycles of at least %g s, "
             "data file on %s"
             % (SECONDS, res["file_system"]), ""]
    head = "| | " + ("before | " if before else "") + "after | " + \
        ("after/before | " if before else "") + "aim |"
    lines += [head, "|---|" + "---:|" * (3 if before else 1) + "---|"]
    for case in res["cases"]:
        f = case["figures"]
        a, b = f["after"], f.get("before")
        label = "%d addresses every %g s" % (case["addresses"], case["frequency"])
        cells = [label + ": **bytes per check**"]
        if before:
            cells.append(B.fmt(b["per_check"], "%.0f"))
        cells.append("**%s**" % B.fmt(a["per_check"], "%.0f"))
        if before:
            cells.append(B.fmt(B.ratio(a["per_check"], b["per_check"]), "%.4f"))
        cells.append("≤ %d: %s" % (AIM, verdict(aim(a["per_check"], AIM))))
        lines.append("| " + " | ".join(cells) + " |")
        cells = [label + ": bytes a second; checks (of %.0f scheduled)" % a["scheduled"]]
        if before:
            cells.append("%.0f; %.0f" % (b["per_second"], b["checks"]))
        cells.append("%.0f; %.0f" % (a["per_second"], a["checks"]))
        if before:
            cells.append(B.fmt(B.ratio(a["per_second"], b["per_second"]), "%.4f"))
        cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "before: %s, a write every half second; after: the hard above, "
              "`data_file_interval` 60 s and `data_file_bytes_per_check` 150 (their "
              "defaults). A fresh data file each (the history ring still growing, as "
              "in a hard's first 1000 checks of an address). The window runs from one "
              "write of the after's to its first write at least %g s later." % (
                  res["before"] or "not run", SECONDS), ""]
    return lines
