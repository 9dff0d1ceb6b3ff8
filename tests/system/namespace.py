"""A private network and mount namespace, for the tests where what a
program sees through the C library matters: loopback only (so hard can
listen on 127.0.0.1:53) and an /etc/resolv.conf of the test's own, neither
visible outside.  The test's body runs in a forked child inside the
namespace and uses the harness as usual; what it returns comes back to the
test, and so does any failure, with its traceback."""

import ctypes
import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import time
import traceback

import harness

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

# A program that resolves through glibc and says what it got: the sorted
# addresses, or the name of getaddrinfo's error (EAI_AGAIN, EAI_NODATA...).
GETADDRINFO = r"""
import json, socket, sys
try:
    found = socket.getaddrinfo(sys.argv[1], None, socket.AF_UNSPEC,
                               socket.SOCK_STREAM)
    print(json.dumps(sorted({a[4][0] for a in found})))
except socket.gaierror as e:
    names = [n for n in dir(socket) if n.startswith("EAI_")
             and getattr(socket, n) == e.errno]
    print(json.dumps(names[0] if names else str(e.errno)))
"""


def _check(result, what):
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, "%s: %s" % (what, os.strerror(error)))


def _enter(resolv_conf):
    """Moves this process into new network and mount namespaces, with
    loopback up and resolv_conf (a path) over /etc/resolv.conf."""
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET), "unshare")
    # First of all: nothing mounted from here on may reach the host.
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None),
           "mount --make-rprivate /")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", b"lo", IFF_UP))
    _check(libc.mount(resolv_conf.encode(), b"/etc/resolv.conf", None, MS_BIND,
                      None), "mount --bind %s /etc/resolv.conf" % resolv_conf)


def unavailable():
    """Why a private namespace cannot be made here, or None.  Mounts made
    in it stay in it only once every mount is made private, which needs
    "/" to be a mount point: in a chroot (a bare root a newcomer's set-up
    is tried in, say) it is not, and a bind mount over /etc/resolv.conf
    would reach the host's copy of the tree."""
    if os.geteuid() != 0:
        return "a private namespace needs root"
    try:
        with open("/proc/self/mountinfo") as f:
            points = {line.split()[4] for line in f if len(line.split()) > 4}
    except OSError as e:
        return "cannot read /proc/self/mountinfo: %s" % e
    if "/" not in points:
        return ("/ is not a mount point (a chroot): mounts made in a private "
                "namespace could not be kept from the host")
    return None


def set_resolv_conf(resolv_conf, text):
    """Rewrites the test's resolv.conf (seen as /etc/resolv.conf inside the
    namespace); each new process reads it afresh."""
    with open(resolv_conf, "w") as f:
        f.write(text)


def getaddrinfo(name, timeout=30):
    """getaddrinfo(name) in a new process: sorted addresses, or the name of
    the error (e.g. "EAI_AGAIN")."""
    r = subprocess.run([harness.PYTHON, "-c", GETADDRINFO, name],
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def run_in_namespace(workdir, body, timeout=180):
    """body(resolv_conf) in a child process in a private namespace, where
    resolv_conf is the path of the file seen as /etc/resolv.conf (empty at
    first; set_resolv_conf writes it).  Returns what body returned (JSON
    data).  body must stop, by PID, every process it starts (harness
    objects' stop()), so that the namespace ends with it."""
    resolv_conf = os.path.join(workdir, "resolv.conf")
    set_resolv_conf(resolv_conf, "")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            _enter(resolv_conf)
            outcome = {"result": body(resolv_conf)}
        except BaseException:  # noqa: BLE001 - reported to the parent
            outcome = {"error": traceback.format_exc()}
        with os.fdopen(write_end, "w") as f:
            json.dump(outcome, f)
        os._exit(0)
    os.close(write_end)
    data = b""
    deadline = time.monotonic() + timeout
    with os.fdopen(read_end, "rb") as f:
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([f], [], [], max(left, 0))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError("the namespace's test did not end within "
                                     "%.0f s" % timeout)
            chunk = os.read(f.fileno(), 65536)
            if not chunk:
                break
            data += chunk
    os.waitpid(pid, 0)
    outcome = json.loads(data) if data else {"error": "the child said nothing"}
    if "error" in outcome:
        raise AssertionError("in the namespace:\n" + outcome["error"])
    return outcome["result"]
