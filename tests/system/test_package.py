"""The Debian package (issue 18 item 5) and what `make install` writes for
it: the installed manual pages, units and cron line name the installed
paths (they said /usr/local whatever PREFIX was); har-prometheus.timer
runs the installed har-status every 15 s (item 2); /etc/har.conf, as
shipped, is valid and answers no name; debian/ agrees with har.h and
contrib/install-deps.  Building the package itself (`make deb`, lintian)
is CI's and ../shared/fresh/deb-check.sh's: it needs the `deb` packages
of install-deps, which `make test` does not install."""

import os
import re
import shlex
import shutil
import subprocess
import tempfile

import pytest
from prometheus_client.parser import text_string_to_metric_families

import harness
import namespace
from namespace import run_in_namespace, set_resolv_conf
from statehelpers import name_block, wait_sql

DEBIAN = os.path.join(harness.REPO, "debian")
CONFFILE = os.path.join(DEBIAN, "har.conf")
INSTALL_DEPS = os.path.join(harness.REPO, "contrib", "install-deps")
# `make install` as debian/rules runs it, and with a PREFIX of no package
LAYOUTS = {"package": ("/usr", "/lib/systemd/system"),
           "opt": ("/opt/har", "/opt/har/lib/systemd/system")}
UNITS = ["har.service", "har-prometheus.service", "har-prometheus.timer"]
MANPAGES = ["man8/hard.8", "man5/har.conf.5", "man8/har-status.8"]


def make(*args):
    r = subprocess.run(["make", "-s", "-C", harness.REPO, *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, "make %s: %s%s" % (" ".join(args), r.stdout, r.stderr)


def read(path):
    with open(path) as f:
        return f.read()


def settings(text):
    """KEY -> [values] of a unit file's non-comment lines."""
    found = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture
def staging():
    d = tempfile.mkdtemp(prefix="har-package-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def install(staging, layout):
    """make install DESTDIR=staging in a layout; returns (prefix, unitdir)."""
    prefix, unitdir = LAYOUTS[layout]
    make("install", "DESTDIR=" + staging, "PREFIX=" + prefix, "UNITDIR=" + unitdir)
    return prefix, unitdir


# ------------------------------------------------ the installed paths


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_installed_files_name_the_installed_paths(staging, layout):
    """Every path the installed manual pages name under PREFIX or the unit
    directory is a file or directory that was installed, and none of them
    says /usr/local; the units' and the cron line's commands name the
    installed hard and har-status.  (Before, the manual pages were copied
    as they are, and said /usr/local/sbin/har-status with PREFIX=/usr.)"""
    prefix, unitdir = install(staging, layout)
    named = set()
    for page in MANPAGES:
        text = read(os.path.join(staging + prefix, "share/man", page))
        assert "/usr/local" not in text, page
        named |= {p.rstrip(".,;:)") for p in re.findall(r"/[\w./-]+", text)
                  if p.startswith((prefix + "/", unitdir + "/"))}
    # what hard.8's FILES and EXAMPLES and har-status.8's FILES list
    assert {prefix + "/sbin/har-status", unitdir + "/har.service",
            unitdir + "/har-prometheus.timer", unitdir + "/har-prometheus.service",
            prefix + "/share/doc/har/har.conf.example",
            prefix + "/share/doc/har/har-prometheus.cron"} <= named, named
    missing = sorted(p for p in named if not os.path.exists(staging + p))
    assert not missing, "named by the manual pages, not installed: %s" % missing

    units = {u: read(os.path.join(staging + unitdir, u)) for u in UNITS}
    cron = read(os.path.join(staging + prefix, "share/doc/har/har-prometheus.cron"))
    for name, text in list(units.items()) + [("cron", cron)]:
        lines = [l for l in text.splitlines() if not l.startswith("#")]
        assert not [l for l in lines if "/usr/local" in l], (name, text)
    hard = settings(units["har.service"])
    assert hard["ExecStart"] == [prefix + "/sbin/hard -f -c /etc/har.conf -p /run/har/hard.pid"]
    assert hard["ExecReload"][0] == prefix + "/sbin/hard -t -c /etc/har.conf"
    status = prefix + "/sbin/har-status --prometheus /var/lib/har/har.db >"
    assert status in settings(units["har-prometheus.service"])["ExecStart"][0]
    assert status in cron


def test_packaged_unit_runs_as_the_packages_user(staging):
    """The package makes the system user har; the unit runs hard as that
    static user (not DynamicUser=, whose state would live in
    /var/lib/private/har, out of the package's reach at purge)."""
    _, unitdir = install(staging, "package")
    unit = settings(read(os.path.join(staging + unitdir, "har.service")))
    assert unit["User"] == ["har"] and unit["Group"] == ["har"], unit
    assert "DynamicUser" not in unit
    assert unit["StateDirectory"] == ["har"] and unit["RuntimeDirectory"] == ["har"]
    assert re.search(r"^\s*adduser --system --group --home /var/lib/har\b",
                     read(os.path.join(DEBIAN, "postinst")), re.M)


# ------------------------------------------------ har-prometheus.timer


def test_prometheus_timer_fires_every_15_s(staging):
    """The timer elapses every 15 s of the wall clock (AccuracySec=1s, not
    systemd's default minute, which would merge them), and systemd-analyze
    verify accepts it and its service as installed."""
    prefix = os.path.join(staging, "usr")
    make("install", "PREFIX=" + prefix)
    unitdir = os.path.join(prefix, "lib/systemd/system")
    timer = settings(read(os.path.join(unitdir, "har-prometheus.timer")))
    assert timer["AccuracySec"] == ["1s"], timer
    assert timer["WantedBy"] == ["timers.target"], timer
    (calendar,) = timer["OnCalendar"]
    r = subprocess.run(["systemd-analyze", "calendar", "--iterations=5", calendar],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    seconds = [int(h) * 3600 + int(m) * 60 + int(s) for h, m, s in re.findall(
        r"(?:Next elapse|Iter\. #\d+): \w+ [\d-]+ (\d+):(\d+):(\d+)", r.stdout)]
    assert len(seconds) == 5, r.stdout
    assert {(b - a) % 86400 for a, b in zip(seconds, seconds[1:])} == {15}, r.stdout
    r = subprocess.run(["systemd-analyze", "--man=no", "verify",
                        os.path.join(unitdir, "har-prometheus.timer"),
                        os.path.join(unitdir, "har-prometheus.service")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_prometheus_service_writes_the_textfile(workdir, staging, start_hard,
                                                start_http, upstream):
    """The timer's service, as installed, run by sh with the data file of a
    running hard and a directory of the test's: a complete har.prom from
    the installed har-status, and no temporary file left."""
    prefix = os.path.join(staging, "usr")
    make("install", "PREFIX=" + prefix)
    unit = read(os.path.join(prefix, "lib/systemd/system/har-prometheus.service"))
    (command,) = settings(unit)["ExecStart"]
    argv = shlex.split(command)
    assert argv[:2] == ["/bin/sh", "-c"] and len(argv) == 3, argv
    assert prefix + "/sbin/har-status --prometheus" in argv[2]

    server = start_http("127.0.0.2")
    db = os.path.join(workdir, "har.db")
    h = start_hard(name_block("web.test", [("a", server.url())]), upstream=upstream,
                   data_file=db)
    wait_sql(db, "SELECT healthy FROM candidates", lambda r: r == [{"healthy": 1}])
    textdir = os.path.join(workdir, "node-exporter")
    os.mkdir(textdir)
    script = (argv[2].replace("/var/lib/prometheus/node-exporter", textdir)
              .replace("/var/lib/har/har.db", db))
    for _ in range(2):
        r = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r
    assert os.listdir(textdir) == ["har.prom"]
    families = {f.name: f for f in text_string_to_metric_families(
        read(os.path.join(textdir, "har.prom")))}
    (sample,) = families["har_address_up"].samples
    assert sample.labels["name"] == "web.test" and sample.value == 1, sample
    h.assert_alive()


# ------------------------------------------------ /etc/har.conf


def test_conffile_is_all_comments_and_its_example_is_valid():
    """The shipped /etc/har.conf sets nothing (every default applies, no
    name section); its commented nameservers line and name section, once
    uncommented, are a valid configuration."""
    text = read(CONFFILE)
    active = [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    assert active == []
    lines = text.splitlines()
    start = lines.index("#name www.example.com {")
    end = lines.index("#}", start)
    example = [l[1:] for l in lines[start:end + 1]]
    nameservers = [l[1:] for l in lines if l.startswith("#nameservers = ")]
    assert len(nameservers) == 1
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
        f.write("\n".join(nameservers + example) + "\n")
        f.flush()
        r = harness.run_hard("-t", "-c", f.name)
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="a private namespace needs root")
@pytest.mark.skipif(namespace.unavailable() is not None,
                    reason=str(namespace.unavailable()))
def test_conffile_answers_no_name_until_edited(workdir):
    """In a private namespace whose /etc/resolv.conf names a loopback
    resolver (as a host's does at install), hard started with the shipped
    /etc/har.conf as it is: `hard -t` says ok, hard answers on 127.0.0.1
    port 53, forwards even the name the file's example shows (it answers
    none itself) and keeps its data file in /var/lib/har (a tmpfs here).
    With resolv.conf pointing at hard, -t refuses the file with the message
    the file's comment quotes."""
    comment = read(CONFFILE)
    quoted = re.search(r'\("(no upstream nameserver left) \.\.\.; (set nameservers)"\)',
                       comment)
    assert quoted, "the comment no longer quotes hard's refusal"

    def body(resolv_conf):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "har-test",
                        "/var/lib"], check=True)
        os.mkdir("/var/lib/har")
        started = []
        try:
            up = harness.Upstream(workdir, ["--host-record=www.example.com,192.0.2.80",
                                            "--host-record=fwd.test,192.0.2.1"],
                                  addr="127.0.0.2", port=53)
            started.append(up)
            set_resolv_conf(resolv_conf, "nameserver 127.0.0.2\n")
            checked = harness.run_hard("-t", "-c", CONFFILE)
            h = harness.Hard(workdir, comment, ["127.0.0.1", "::1"], 53)
            started.append(h)
            h.wait_ready()
            answers = {n: harness.answer(h, n) for n in ("www.example.com", "fwd.test")}
            harness.wait_until(lambda: os.path.exists("/var/lib/har/har.db"), 10,
                               what="the data file in /var/lib/har")
            assert h.stop() == 0, h.log()[-3000:]
            set_resolv_conf(resolv_conf, "nameserver 127.0.0.1\n")
            refused = harness.run_hard("-t", "-c", CONFFILE)
            return {"checked": [checked.returncode, checked.stdout],
                    "answers": answers,
                    "refused": [refused.returncode, refused.stderr]}
        finally:
            for process in reversed(started):
                process.stop()

    seen = run_in_namespace(workdir, body)
    assert seen["checked"] == [0, "ok\n"], seen
    assert seen["answers"] == {"www.example.com": ["192.0.2.80"],
                               "fwd.test": ["192.0.2.1"]}, seen
    code, stderr = seen["refused"]
    assert code == 1 and quoted.group(1) in stderr and quoted.group(2) in stderr, seen


# ------------------------------------------------ debian/ and the tree


def control():
    """debian/control's fields, continuation lines joined."""
    fields, key = {}, None
    for line in read(os.path.join(DEBIAN, "control")).splitlines():
        if line[:1].isspace() and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            fields[key] = value.strip()
    return fields


def package_names(field):
    return {re.split(r"[\s(]", d.strip())[0] for d in field.split(",") if d.strip()}


def test_version_is_har_h_with_a_debian_revision():
    """debian/changelog's first entry is HAR_VERSION plus a revision, and
    the README's install command names that package file."""
    version = re.search(r'#define HAR_VERSION "([^"]+)"',
                        read(os.path.join(harness.REPO, "har.h"))).group(1)
    top = read(os.path.join(DEBIAN, "changelog")).splitlines()[0]
    m = re.match(r"har \(([^)-]+)-(\w+)\) unstable; urgency=\w+$", top)
    assert m and m.group(1) == version, top
    deb = "har_%s-%s_amd64.deb" % (version, m.group(2))
    assert "apt-get install ./%s" % deb in read(os.path.join(harness.REPO, "README.md"))


def test_build_depends_are_install_deps_build_list():
    """Build-Depends are what `install-deps build` installs (less the
    compiler and make, which build-essential brings), so `make` and
    `make deb` need the same libraries; `install-deps deb` adds Debian's
    tools.  The binary's Depends come from its shared libraries."""
    def listed(kind):
        r = subprocess.run([INSTALL_DEPS, "list", kind], capture_output=True,
                           text=True, check=True)
        return set(r.stdout.split())
    fields = control()
    build = listed("build")
    assert package_names(fields["Build-Depends"]) - {"debhelper-compat"} \
        == build - {"gcc", "make"}
    assert "debhelper-compat (= 13)" in fields["Build-Depends"]
    assert {"build-essential", "debhelper", "dpkg-dev", "fakeroot", "lintian"} \
        | build <= listed("deb")
    assert package_names(fields["Depends"]) == {
        "${shlibs:Depends}", "${misc:Depends}", "adduser"}
    assert package_names(fields["Recommends"]) == {"sqlite3"}    # for har-status


def test_rules_install_disabled_units_and_the_conffile():
    """debian/rules installs with `make install PREFIX=/usr` into
    bookworm's unit directory, har.socket when the tree has one, and
    leaves every unit disabled and stopped at install (restarted on an
    upgrade only if it runs); /etc/har.conf comes from debian/har.conf."""
    rules = read(os.path.join(DEBIAN, "rules"))
    assert re.search(r"^\t\$\(MAKE\) install DESTDIR=\$\(STAGE\) PREFIX=/usr "
                     r"UNITDIR=\$\(UNITDIR\)$", rules, re.M)
    assert re.search(r"^UNITDIR = %s$" % LAYOUTS["package"][1], rules, re.M)
    assert "contrib/har.socket" in rules
    assert re.search(r"^\tdh_installsystemd --no-enable --no-start "
                     r"--restart-after-upgrade$", rules, re.M)
    assert read(os.path.join(DEBIAN, "har.install")).split() == ["debian/har.conf", "etc/"]
    for script in ("postinst", "postrm"):
        path = os.path.join(DEBIAN, script)
        assert "#DEBHELPER#" in read(path)
        r = subprocess.run(["sh", "-n", path], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
