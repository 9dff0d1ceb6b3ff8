"""HTTPS checks with cached CAs and resumed TLS sessions (issue 12): what
the optimisation could break.  A resumed session skips the certificate, so
a full, verified handshake must still come at least every
tls_full_handshake_interval, after any failed check and after any change
of the check's configuration or CA file; sessions of one host must never
be offered for another on the same address.  The server is the real HTTPS
server of httpserver.py; its request log says for each request whether the
TLS session was resumed."""

import os
import shutil
import subprocess
import time

import pytest

import harness
from harness import answer, wait_answer
from statehelpers import name_block
from test_checks import assert_stays
from test_config import assert_error_at, check_t
from test_reload import reload

A, B = "127.0.0.2", "127.0.0.3"


@pytest.fixture
def up(start_upstream):
    return start_upstream()


def openssl(workdir, *args):
    subprocess.run(["openssl", *args], cwd=workdir, check=True, capture_output=True)


@pytest.fixture
def certs(workdir):
    """The test CA's certificates for secure.test and other.test, and three
    that a full handshake for secure.test must refuse: an expired one, one
    with a new key from a CA hard does not trust, and other.test's."""
    out = harness.make_certs(workdir)
    ext = os.path.join(workdir, "secure.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:secure.test\nbasicConstraints=CA:FALSE\n")
    openssl(workdir, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=secure.test",
            "-keyout", "expired.key", "-out", "expired.csr")
    openssl(workdir, "x509", "-req", "-in", "expired.csr", "-CA", "ca.pem", "-CAkey",
            "ca.key", "-CAcreateserial", "-days", "-1", "-extfile", ext,
            "-out", "expired.pem")
    openssl(workdir, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=secure.test", "-addext", "subjectAltName=DNS:secure.test",
            "-keyout", "untrusted.key", "-out", "untrusted.pem")
    out["expired"] = (os.path.join(workdir, "expired.pem"),
                      os.path.join(workdir, "expired.key"))
    out["untrusted"] = (os.path.join(workdir, "untrusted.pem"),
                        os.path.join(workdir, "untrusted.key"))
    out["other name"] = out["other.test"]
    return out


def https_block(title, server, host, ca, **opts):
    opts.setdefault("check_frequency", 0.2)
    opts.setdefault("check_timeout", 1)
    opts.setdefault("failure_mode", "servfail")
    return name_block(title, [("c", server.url(host), "address = { %s }" % server.addr)],
                      ca_file='"%s"' % ca, **opts)


def requests_since(server, count):
    return server.requests_seen()[count:]


def wait_resumed(server, count=0, timeout=5.0):
    """Waits for a request after the first `count` whose session was
    resumed: proof that the case under test rides on resumption."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(r["resumed"] for r in requests_since(server, count)):
            return
        time.sleep(0.05)
    raise AssertionError("no TLS session was resumed: %s" % [
        r["resumed"] for r in requests_since(server, count)])


@pytest.mark.parametrize("change", ["expired", "untrusted", "other name"])
def test_certificate_change_found_within_full_handshake_interval(
        start_hard, start_http, up, certs, change):
    """The server's certificate is replaced in its running TLS context, which
    keeps resuming the sessions it made before: only the forced full
    handshake sees the new certificate."""
    cert, key = certs["secure.test"]
    s = start_http(A, cert=cert, key=key)
    h = start_hard(https_block("secure.test", s, "secure.test", certs["ca"],
                               tls_full_handshake_interval=1.5), upstream=up)
    wait_answer(h, "secure.test", [A])
    wait_resumed(s)
    s.set(cert="%s,%s" % certs[change])
    t0 = time.monotonic()
    wait_answer(h, "secure.test", "SERVFAIL", timeout=8)
    # at most one interval, one check period and a check's time, with a
    # margin for a loaded machine (without the forced full handshake the
    # sessions would resume for good)
    assert time.monotonic() - t0 < 1.5 + 0.2 + 1 + 2.5


def wait_requests(server, count, timeout=5.0):
    end = time.monotonic() + timeout
    while len(server.requests_seen()) <= count:
        assert time.monotonic() < end, "no request after the first %d" % count
        time.sleep(0.05)
    return requests_since(server, count)


def test_failed_check_is_followed_by_full_handshake(start_hard, start_http, up, certs):
    cert, key = certs["secure.test"]
    s = start_http(A, cert=cert, key=key)
    h = start_hard(https_block("secure.test", s, "secure.test", certs["ca"]),
                   upstream=up)
    wait_answer(h, "secure.test", [A])
    wait_resumed(s)
    s.set(status=503)
    wait_answer(h, "secure.test", "SERVFAIL")
    failed = len(s.requests_seen())  # the last of these was a failed check
    after = wait_requests(s, failed)
    assert after[0]["resumed"] is False, [r["resumed"] for r in after]
    s.set(status=200)
    wait_answer(h, "secure.test", [A])
    wait_resumed(s, len(s.requests_seen()))


def test_several_hosts_with_their_own_certificates_on_one_address(
        start_hard, start_http, up, certs):
    """One address serves secure.test and other.test with their own
    certificates by SNI.  Each name's sessions are its own: the name whose
    URL host has no certificate there stays down however often the others
    resume theirs."""
    cert, key = certs["secure.test"]
    s = start_http(A, cert=cert, key=key, sni_certs={"other.test": certs["other.test"]})
    body = (https_block("secure.test", s, "secure.test", certs["ca"]) +
            https_block("other.test", s, "other.test", certs["ca"]) +
            # the server has no certificate for third.test: the default one
            # (secure.test's) is presented, and must be refused every time
            https_block("third.test", s, "third.test", certs["ca"]))
    h = start_hard(body, upstream=up)
    wait_answer(h, "secure.test", [A])
    wait_answer(h, "other.test", [A])
    wait_resumed(s)
    assert_stays(h, "third.test", "SERVFAIL", 2.0)
    assert answer(h, "secure.test") == [A]
    assert answer(h, "other.test") == [A]
    hosts = {tuple(r[:2]) for r in s.request_log()}
    assert hosts == {("secure.test:%d" % s.port, "secure.test"),
                     ("other.test:%d" % s.port, "other.test")}, hosts


def reload_after_a_check(h, server, body, up):
    """Reloads right after a check's request, so that no check of the old
    configuration (a resumed one) is under way and logged after it: the
    next scheduled check is a check_frequency away, the reload's own one
    at once.  Returns the count of requests before the reload."""
    count = len(server.requests_seen())
    wait_requests(server, count)
    before = len(server.requests_seen())
    reload(h, body, up)
    return before


def test_reload_changing_ca_file_or_host_does_full_handshake(
        start_hard, start_http, up, certs, workdir):
    cert, key = certs["secure.test"]
    s = start_http(A, cert=cert, key=key, sni_certs={"other.test": certs["other.test"]})
    block = lambda host, ca: https_block(  # noqa: E731
        "secure.test", s, host, ca, check_frequency=1.5)
    h = start_hard(block("secure.test", certs["ca"]), upstream=up)
    wait_answer(h, "secure.test", [A])
    wait_resumed(s, timeout=8)
    # the same CAs under another file name
    other_ca = os.path.join(workdir, "ca-copy.pem")
    shutil.copy(certs["ca"], other_ca)
    before = reload_after_a_check(h, s, block("secure.test", other_ca), up)
    after = wait_requests(s, before)
    assert after[0]["resumed"] is False, [r["resumed"] for r in after]
    wait_resumed(s, before, timeout=8)
    # another host name on the same address
    before = reload_after_a_check(h, s, block("other.test", other_ca), up)
    after = wait_requests(s, before)
    assert after[0]["resumed"] is False, [r["resumed"] for r in after]
    assert after[0]["headers"][0] == ["Host", "other.test:%d" % s.port], after[0]
    wait_resumed(s, before, timeout=8)
    # and back to the first configuration: its old sessions, verified
    # before two reloads, must not be offered again
    before = reload_after_a_check(h, s, block("secure.test", other_ca), up)
    after = wait_requests(s, before)
    assert after[0]["resumed"] is False, [r["resumed"] for r in after]
    assert after[0]["headers"][0] == ["Host", "secure.test:%d" % s.port], after[0]
    wait_resumed(s, before, timeout=8)
    before = reload_after_a_check(h, s, block("secure.test", certs["ca"]), up)
    after = wait_requests(s, before)
    assert after[0]["resumed"] is False, [r["resumed"] for r in after]
    wait_resumed(s, before, timeout=8)


def test_reload_to_plain_tcp_and_back_does_full_handshake(
        start_hard, start_http, up, certs):
    """A check method that goes away and comes back by reloads starts
    again with a full handshake."""
    cert, key = certs["secure.test"]
    s = start_http(A, cert=cert, key=key)
    h = start_hard(https_block("secure.test", s, "secure.test", certs["ca"]), upstream=up)
    wait_answer(h, "secure.test", [A])
    wait_resumed(s)
    reload(h, name_block("secure.test", [("c", "tcp://%s:%d" % (s.addr, s.port))],
                         check_method="tcp", check_frequency=0.2,
                         failure_mode="servfail"), up)
    time.sleep(1.0)
    before = len(s.requests_seen())
    time.sleep(0.6)
    assert len(s.requests_seen()) == before, "still checked by HTTPS"
    reload(h, https_block("secure.test", s, "secure.test", certs["ca"]), up)
    after = wait_requests(s, before)
    assert after[0]["resumed"] is False, [r["resumed"] for r in after]
    wait_resumed(s, before)


def tagged_https_block(title, server, ca, tag, **opts):
    """A name checking https://secure.test/ on the server, its requests
    told apart by an X-Har-Name header."""
    return https_block(title, server, "secure.test", ca,
                       http_headers='{ "X-Har-Name: %s" }' % tag, **opts)


def requests_of(server, tag):
    return [r for r in server.requests_seen()
            if ["X-Har-Name", tag] in r["headers"]]


def test_names_with_one_url_and_address_keep_their_own_sessions(
        start_hard, start_http, up, certs):
    """Two names checking the same URL on the same address with the same
    ca_file: each makes its own first full handshake rather than resuming
    the other's session."""
    cert, key = certs["secure.test"]
    s = start_http(A, cert=cert, key=key)
    h = start_hard(tagged_https_block("one.test", s, certs["ca"], "one",
                                      check_frequency=0.2) +
                   tagged_https_block("two.test", s, certs["ca"], "two",
                                      check_frequency=2.5), upstream=up)
    wait_answer(h, "one.test", [A])
    wait_answer(h, "two.test", [A], timeout=8)
    end = time.monotonic() + 8
    while len(requests_of(s, "two")) < 2:
        assert time.monotonic() < end, requests_of(s, "two")
        time.sleep(0.1)
    two = [r["resumed"] for r in requests_of(s, "two")]
    assert two[0] is False and two[1] is True, two
    assert requests_of(s, "one")[0]["resumed"] is False


def test_names_with_one_url_trusting_different_cas(start_hard, start_http, up, certs):
    """Two names check the same URL on the same address; only one trusts
    the server's CA.  The other stays down however often the first
    resumes its sessions."""
    cert, key = certs["secure.test"]
    s = start_http(A, cert=cert, key=key)
    h = start_hard(https_block("trusting.test", s, "secure.test", certs["ca"]) +
                   https_block("distrusting.test", s, "secure.test",
                               certs["untrusted"][0]), upstream=up)
    wait_answer(h, "trusting.test", [A])
    wait_resumed(s)
    assert_stays(h, "distrusting.test", "SERVFAIL", 2.0)
    assert answer(h, "trusting.test") == [A]
    wait_resumed(s, len(s.requests_seen()))


def test_ca_file_of_the_server_certificate_alone(start_hard, start_http, up, certs):
    """A ca_file holding only the server's own certificate (or an
    intermediate) is a trust anchor, as with curl's own store."""
    cert, key = certs["secure.test"]
    s = start_http(A, cert=cert, key=key)
    h = start_hard(https_block("secure.test", s, "secure.test", cert), upstream=up)
    wait_answer(h, "secure.test", [A])
    wait_resumed(s)


def ca_warnings(h):
    return [line for line in h.log().splitlines()
            if "ca_file" in line and "HTTPS checks fail" in line]


def start_with_live_ca(start_hard, start_http, up, certs, workdir):
    """hard checking secure.test with a ca_file the test rewrites, once a
    check has resumed its session; returns the server, hard and the file."""
    cert, key = certs["secure.test"]
    s = start_http(A, cert=cert, key=key)
    ca = os.path.join(workdir, "ca-live.pem")
    shutil.copy(certs["ca"], ca)
    h = start_hard(https_block("secure.test", s, "secure.test", ca), upstream=up)
    wait_answer(h, "secure.test", [A])
    wait_resumed(s)
    return s, h, ca


def test_bad_ca_file_warned_once_and_read_again(start_hard, start_http, up,
                                                certs, workdir):
    """A ca_file that goes missing, then holds no certificate, fails its
    checks with one warning each time it changes, not one per check;
    written good again, it is read again and the name comes back."""
    s, h, ca = start_with_live_ca(start_hard, start_http, up, certs, workdir)
    os.remove(ca)
    wait_answer(h, "secure.test", "SERVFAIL", timeout=3)
    time.sleep(1.0)  # five checks
    warnings = ca_warnings(h)
    assert len(warnings) == 1 and "No such file" in warnings[0], warnings
    with open(ca + ".new", "w") as f:
        f.write("not a certificate\n")
    os.replace(ca + ".new", ca)
    harness.wait_until(lambda: len(ca_warnings(h)) >= 2, 5,
                       what="the new ca_file to be read")
    time.sleep(1.0)  # five checks more
    assert answer(h, "secure.test") == "SERVFAIL"
    warnings = ca_warnings(h)
    assert len(warnings) == 2 and "no certificate" in warnings[1], warnings
    before = len(s.requests_seen())
    shutil.copy(certs["ca"], ca + ".new")
    os.replace(ca + ".new", ca)
    wait_answer(h, "secure.test", [A], timeout=4)
    after = requests_since(s, before)
    assert after and after[0]["resumed"] is False, after
    assert len(ca_warnings(h)) == 2, ca_warnings(h)


def test_full_handshake_interval_zero_never_resumes(start_hard, start_http, up, certs):
    cert, key = certs["secure.test"]
    s = start_http(A, cert=cert, key=key)
    h = start_hard(https_block("secure.test", s, "secure.test", certs["ca"],
                               tls_full_handshake_interval=0), upstream=up)
    wait_answer(h, "secure.test", [A])
    harness.wait_until(lambda: len(s.requests_seen()) >= 4, 8,
                       what="four checks")
    seen = [r["resumed"] for r in s.requests_seen()]
    assert len(seen) >= 4 and not any(seen), seen


def test_ca_file_rewritten_is_read_again(start_hard, start_http, up, certs, workdir):
    """The CAs are parsed once, not per check, but a ca_file written anew
    (without a reload) is read again and ends the sessions verified with
    the old one: here it no longer holds the server's CA."""
    s, h, ca = start_with_live_ca(start_hard, start_http, up, certs, workdir)
    shutil.copy(certs["untrusted"][0], ca + ".new")
    os.replace(ca + ".new", ca)
    wait_answer(h, "secure.test", "SERVFAIL", timeout=3)


INTERVAL_CONFIG = """\
nameservers = { 192.0.2.53 }
data_file = ""
name www.example.com {
    tls_full_handshake_interval = %s
    candidate a { check_address = "https://www.example.com/" address = { 192.0.2.1 } }
}
"""


@pytest.mark.parametrize("value", ["0", "300", "86400"])
def test_full_handshake_interval_accepted(workdir, value):
    path, res = check_t(workdir, INTERVAL_CONFIG % value)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("value", ["-1", "86401"])
def test_full_handshake_interval_out_of_range(workdir, value):
    path, res = check_t(workdir, INTERVAL_CONFIG % value)
    assert_error_at(path, res, {4}, r"tls_full_handshake_interval must be between 0 and 86400")
