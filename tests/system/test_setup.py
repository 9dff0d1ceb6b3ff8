"""A fresh Debian machine and `make install` (issue 9 items 19-21):
contrib/install-deps installs every program the tests run, and no package
that brings a service; no test is skipped for a missing program; `make
install` installs the daemon, har-status, the manual pages, the systemd unit
naming the installed hard, and the example configuration, with PREFIX and
DESTDIR honoured, and `make uninstall` removes all of it."""

import ast
import glob
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

import harness

TESTS = os.path.join(harness.REPO, "tests", "system")
INSTALL_DEPS = os.path.join(harness.REPO, "contrib", "install-deps")
SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output"}
# Names that hold programs of the repository itself, not of a package
# (musl_client: failsafe.py's getaddrinfo client, built with musl-gcc).
OWN_PROGRAMS = {"HARD", "INSTALL_DEPS", "HAR_STATUS", "installed", "musl_client"}


def packages(kind):
    r = subprocess.run([INSTALL_DEPS, "list", kind], capture_output=True,
                       text=True, check=True)
    return r.stdout.split()


def dpkg_field(package, field):
    r = subprocess.run(["dpkg-query", "-W", "-f=${%s}" % field, package],
                       capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else ""


# ------------------------------------------------ the programs tests run


def assignments(tree):
    """NAME -> the expressions assigned to it anywhere in the module."""
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            found.setdefault(node.targets[0].id, []).append(node.value)
    return found


def parse(path):
    with open(path) as f:
        return ast.parse(f.read(), path)


def module_names(module):
    """The names a test module assigns, and those it imports from another
    test module (from statehelpers import SQLITE3)."""
    tree = parse(os.path.join(TESTS, module + ".py"))
    names = assignments(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module \
                and os.path.exists(os.path.join(TESTS, node.module + ".py")):
            imported = assignments(parse(os.path.join(TESTS, node.module + ".py")))
            for alias in node.names:
                if alias.name in imported:
                    names.setdefault(alias.asname or alias.name, []).extend(
                        imported[alias.name])
    return names


def program_of(node, names, seen=()):
    """The program an expression names (a basename), "" for the repository's
    own, or None when it cannot be told."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return os.path.basename(node.value.split()[0])
    if isinstance(node, ast.List) and node.elts:
        return program_of(node.elts[0], names, seen)
    if isinstance(node, ast.Starred):	# [*PREFIX, ...]: the prefix's program
        return program_of(node.value, names, seen)
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            program = program_of(value, names, seen)
            if program is not None:
                return program
        return None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and node.func.attr == "which" and node.args:
        return program_of(node.args[0], names, seen)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
            and os.path.exists(os.path.join(TESTS, node.value.id + ".py")):
        return program_of(ast.Name(id=node.attr), module_names(node.value.id), seen)
    if isinstance(node, ast.Name):
        if node.id in OWN_PROGRAMS:
            return ""
        if node.id in seen:
            return None
        for value in names.get(node.id, []):
            program = program_of(value, names, seen + (node.id,))
            if program is not None:
                return program
    return None


def programs_run(path):
    """(programs, calls that could not be told) of one test module: the
    first word of every subprocess call, and every shutil.which(NAME)."""
    tree = parse(path)
    module = module_names(os.path.basename(path)[:-3])
    scope = {}	# call -> the names of the function it is in, then the module's
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local = assignments(function)
            for node in ast.walk(function):
                if isinstance(node, ast.Call) and id(node) not in scope:
                    scope[id(node)] = {**module, **local}
    programs, unknown = set(), []
    for node in ast.walk(tree):
        names = scope.get(id(node), module)
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        if isinstance(owner, ast.Name) and owner.id == "subprocess" \
                and node.func.attr in SUBPROCESS_CALLS:
            argument = node.args[0] if node.args else next(
                (k.value for k in node.keywords if k.arg == "args"), None)
        elif isinstance(owner, ast.Name) and owner.id == "shutil" \
                and node.func.attr == "which":
            argument = node
        else:
            continue
        program = program_of(argument, names) if argument is not None else None
        if program is None:
            unknown.append("%s:%d: %s" % (os.path.basename(path), node.lineno,
                                          ast.unparse(node)[:80]))
        elif program:
            programs.add(program)
    return programs, unknown


def all_programs_run():
    programs, unknown = set(), []
    for path in sorted(glob.glob(os.path.join(TESTS, "*.py"))):
        found, cannot_tell = programs_run(path)
        programs |= found
        unknown += cannot_tell
    return programs, unknown


def test_every_program_the_tests_run_is_listed():
    programs, unknown = all_programs_run()
    assert not unknown, "cannot tell which program these run:\n" + "\n".join(unknown)
    # the scan sees what the tests are known to run
    assert {"dnsmasq", "dnsperf", "openssl", "valgrind", "sqlite3", "python3",
            "mandoc", "setpriv", "make", "systemd-analyze"} <= programs, programs
    missing = sorted(programs - set(harness.PROGRAMS))
    assert not missing, "programs the tests run that harness.PROGRAMS lacks: %s" % missing


def test_every_module_the_tests_import_is_installed():
    """Beyond the standard library and the tests' own modules, every module
    imported is in harness.PYTHON_MODULES, whose packages install-deps
    installs."""
    own = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(TESTS, "*.py"))}
    imported = set()
    for path in glob.glob(os.path.join(TESTS, "*.py")):
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    foreign = imported - own - set(sys.stdlib_module_names)
    assert {"dns", "pytest"} <= foreign, foreign
    missing = sorted(foreign - set(harness.PYTHON_MODULES))
    assert not missing, "modules harness.PYTHON_MODULES lacks: %s" % missing
    wanted = packages("test")
    for module, package in harness.PYTHON_MODULES.items():
        assert package in wanted, "%s (for %s) is not in install-deps' test list" % (
            package, module)


def find_program(program):
    for directory in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        path = os.path.join(directory, program)
        if os.access(path, os.X_OK):
            return path
    return None


def owner_of(program):
    """The packages dpkg says own the program's file (merged /usr aware)."""
    path = find_program(program)
    assert path, "%s is not installed" % program
    candidates = {path, os.path.realpath(path)}
    for p in list(candidates):
        for a, b in (("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/")):
            if p.startswith(a):
                candidates.add(b + p[len(a):])
            elif p.startswith(b):
                candidates.add(a + p[len(b):])
    owners = set()
    for p in candidates:
        r = subprocess.run(["dpkg-query", "-S", p], capture_output=True, text=True)
        owners |= {line.split(":")[0] for line in r.stdout.splitlines()
                   if line.endswith(": " + p)}
    return owners


def test_install_deps_installs_every_program():
    """Each program's package is in `install-deps test` (or Essential, on
    every Debian system), is installed, and dpkg agrees that it (or a
    package it depends on) owns the program."""
    wanted = packages("test")
    for program, package in sorted(harness.PROGRAMS.items()):
        assert package in wanted or dpkg_field(package, "Essential") == "yes", \
            "%s (for %s) is not in contrib/install-deps' test list" % (package, program)
        assert "install ok installed" in dpkg_field(package, "Status"), \
            "%s is not installed" % package
        owners = owner_of(program)
        depends = dpkg_field(package, "Depends") + "," + dpkg_field(package, "Pre-Depends")
        direct = {d.strip().split()[0].split(":")[0]
                  for d in depends.replace("|", ",").split(",") if d.strip()}
        assert owners & ({package} | direct), \
            "%s belongs to %s, not to %s" % (program, owners, package)


def test_no_package_brings_a_service():
    """Installing what `make run` and `make test` need starts no daemon: no
    package may ship an init script or a service or socket unit that is
    enabled at boot (periodic timers such as man-db's are not daemons).
    dnsmasq-base, not dnsmasq (which binds port 53 and rewrites
    /etc/resolv.conf through resolvconf).  systemd is the service manager
    itself."""
    assert "dnsmasq" not in packages("run") + packages("test")
    for kind in ("build", "run", "test"):
        for package in packages(kind):
            if package == "systemd":
                continue
            r = subprocess.run(["dpkg-query", "-L", package], capture_output=True,
                               text=True)
            assert r.returncode == 0, "%s is not installed: %s" % (package, r.stderr)
            for path in r.stdout.split("\n"):
                assert not path.startswith("/etc/init.d/"), \
                    "%s (%s) brings a service: %s" % (package, kind, path)
                if "/systemd/system/" in path and path.endswith((".service", ".socket")) \
                        and os.path.isfile(path):
                    with open(path) as f:
                        assert "[Install]" not in f.read(), \
                            "%s (%s) brings a service: %s" % (package, kind, path)


def test_no_test_skips_for_a_missing_program():
    """A test needing a program fails without it (install-deps installs
    them all); it is never silently skipped."""
    offenders = []
    for path in sorted(glob.glob(os.path.join(TESTS, "*.py"))):
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("skip", "skipif", "importorskip"):
                text = ast.unparse(node)
                if "which" in text or "installed" in text or node.func.attr == "importorskip":
                    offenders.append("%s:%d: %s" % (os.path.basename(path),
                                                     node.lineno, text[:80]))
    assert not offenders, "\n".join(offenders)


# ------------------------------------------------------------ make install


def make(*args):
    r = subprocess.run(["make", "-s", "-C", harness.REPO, *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, "make %s: %s%s" % (" ".join(args), r.stdout, r.stderr)
    return r


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, names in os.walk(root) for f in names)


@pytest.fixture
def staging():
    d = tempfile.mkdtemp(prefix="har-install-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_make_install_destdir_prefix(staging):
    """A package build: DESTDIR stages, PREFIX=/usr is what the files name."""
    make("install", "DESTDIR=" + staging, "PREFIX=/usr")
    expected = {
        "usr/sbin/hard": 0o755,
        "usr/sbin/har-status": 0o755,
        "usr/share/man/man8/hard.8": 0o644,
        "usr/share/man/man5/har.conf.5": 0o644,
        "usr/share/man/man8/har-status.8": 0o644,
        "usr/lib/systemd/system/har.service": 0o644,
        "usr/lib/systemd/system/har-prometheus.service": 0o644,
        "usr/lib/systemd/system/har-prometheus.timer": 0o644,
        "usr/lib/systemd/system/har.socket": 0o644,
        "usr/share/doc/har/har.conf.example": 0o644,
        "usr/share/doc/har/resolv.conf.md": 0o644,
        "usr/share/doc/har/har-prometheus.cron": 0o644,
    }
    assert files_under(staging) == sorted(expected)
    for path, mode in expected.items():
        assert os.stat(os.path.join(staging, path)).st_mode & 0o777 == mode, path
    # (the manual pages name the installed paths: test_package.py)
    for path, source in (("usr/sbin/hard", "hard"),
                         ("usr/share/doc/har/har.conf.example", "har.conf.example")):
        with open(os.path.join(staging, path), "rb") as a, \
                open(os.path.join(harness.REPO, source), "rb") as b:
            assert a.read() == b.read(), path
    with open(os.path.join(staging, "usr/lib/systemd/system/har.service")) as f:
        unit = f.read()
    lines = [l for l in unit.splitlines() if l and not l.startswith("#")]
    assert "ExecStart=/usr/sbin/hard -f -c /etc/har.conf -p /run/har/hard.pid" in lines
    assert "ExecReload=/usr/sbin/hard -t -c /etc/har.conf" in lines
    assert "RuntimeDirectory=har" in lines
    assert not [l for l in lines if "/usr/local" in l or staging in l], unit
    installed = os.path.join(staging, "usr/sbin/hard")
    res = subprocess.run([installed, "-V"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("hard "), res
    make("uninstall", "DESTDIR=" + staging, "PREFIX=/usr")
    assert files_under(staging) == []
    assert not os.path.exists(os.path.join(staging, "usr/share/doc/har"))


def test_installed_unit_verifies(staging):
    """Installed under a PREFIX of its own, the unit names that hard, and
    systemd-analyze verify accepts it and har.socket (it checks the
    ExecStart program)."""
    prefix = os.path.join(staging, "usr")
    make("install", "PREFIX=" + prefix)
    unit = os.path.join(prefix, "lib/systemd/system/har.service")
    with open(unit) as f:
        assert "ExecStart=%s/sbin/hard " % prefix in f.read()
    res = subprocess.run(["systemd-analyze", "--man=no", "verify", unit,
                          os.path.join(prefix, "lib/systemd/system/har.socket")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    installed = os.path.join(prefix, "sbin/har-status")
    res = subprocess.run([installed, "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "har-status" in res.stdout, res
    make("uninstall", "PREFIX=" + prefix)
    assert files_under(staging) == []
