"""Log priorities for the journal (issue 18, item 3): when stderr is the
systemd journal (JOURNAL_STREAM names stderr's device and inode), every
line hard writes starts with its syslog priority; anywhere else, none."""

import os
import re
import signal

import harness
from harness import run_hard
from statehelpers import name_block, wait_answer

A = "127.0.0.2"
PREFIXED = re.compile(r"^<[0-7]>")


def journal_stream(path):
    """JOURNAL_STREAM's value for a stderr that is the file at path."""
    status = os.stat(path)
    return "%d:%d" % (status.st_dev, status.st_ino)


def start_logging_to(start_hard, workdir, up, body, stream_of):
    """hard with -f -d whose stderr is workdir/hard-PORT.log (the file
    harness.Hard writes; created first so that its inode is known) and
    JOURNAL_STREAM naming the file stream_of(log path) says."""
    port = harness.free_port("127.0.0.1")
    log = os.path.join(workdir, "hard-%d.log" % port)
    open(log, "w").close()
    return start_hard(body, upstream=up, port=port,
                      env={"JOURNAL_STREAM": stream_of(log)})


def lines(h):
    return [line for line in h.log().splitlines() if line]


def test_every_line_has_its_priority_when_stderr_is_the_journal(
        workdir, start_hard, start_http, start_upstream):
    up = start_upstream("--host-record=fwd.test,192.0.2.1")
    server = start_http(A)
    h = start_logging_to(start_hard, workdir, up,
                         name_block("t.test", [("a", server.url())],
                                    check_frequency=0.5),
                         journal_stream)
    wait_answer(h, "t.test", [A])
    h.query("fwd.test")
    harness.wait_until(lambda: any("fwd.test" in line for line in lines(h)),
                       10, what="the query log line of fwd.test")
    # A reload of a configuration that no longer parses: an error.
    with open(h.conf, "a") as f:
        f.write("no_such_option = 1\n")
    h.signal(signal.SIGHUP)
    harness.wait_until(lambda: any(line.startswith("<3>") for line in lines(h)),
                       10, what="the failed reload's error line")
    h.assert_alive()
    log = lines(h)
    unprefixed = [line for line in log if not PREFIXED.match(line)]
    assert not unprefixed, "lines without a priority: %r" % unprefixed[:5]
    assert any(re.match(r"<6>hard: hard \S+ answering", line) for line in log), log
    assert any(line.startswith("<7>hard: ") for line in log), \
        "no debug line at priority 7 under -d: %r" % log[:10]
    assert any(line.startswith("<7>hard: query ") and "fwd.test" in line
               for line in log), "the query log is not at priority 7"
    assert any(line.startswith("<3>") and "no_such_option" in line
               for line in log), log


def test_no_priority_when_journal_stream_names_another_file(
        workdir, start_hard, start_http, start_upstream):
    """A JOURNAL_STREAM inherited from a parent whose stderr was the
    journal, while hard's own stderr is a file: plain lines."""
    up = start_upstream("--host-record=fwd.test,192.0.2.1")
    server = start_http(A)
    other = os.path.join(workdir, "elsewhere")
    open(other, "w").close()
    h = start_logging_to(start_hard, workdir, up,
                         name_block("t.test", [("a", server.url())]),
                         lambda log: journal_stream(other))
    wait_answer(h, "t.test", [A])
    log = lines(h)
    assert log and not any(PREFIXED.match(line) for line in log), log


def test_check_mode_errors_have_priority_3_for_the_journal(workdir):
    """`hard -t`, as ExecReload= runs it with the unit's journal stderr:
    the configuration's errors are found by `journalctl -p err`."""
    conf = os.path.join(workdir, "bad.conf")
    with open(conf, "w") as f:
        f.write('nameservers = { "127.0.0.1:9" }\nno_such_option = 1\n')
    err = os.path.join(workdir, "t.err")
    with open(err, "w") as stderr:
        result = harness.subprocess.run(
            [harness.HARD, "-t", "-c", conf], stdin=harness.subprocess.DEVNULL,
            stdout=harness.subprocess.DEVNULL, stderr=stderr, timeout=10,
            env=harness.hard_environment({"JOURNAL_STREAM": journal_stream(err)}))
    assert result.returncode == 1
    with open(err) as f:
        text = f.read()
    assert text.startswith("<3>") and "no_such_option" in text, text
    # Without the journal, the same run prints the bare line.
    plain = run_hard("-t", "-c", conf)
    assert plain.returncode == 1 and not PREFIXED.match(plain.stderr), plain.stderr
