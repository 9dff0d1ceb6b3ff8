#!/usr/bin/python3
"""A controllable HTTP(S) server for har's system tests.

usage: httpserver.py ADDR PORT CONTROL_FILE REQUEST_LOG [CERT KEY [HOST CERT KEY]...]

Each request reads CONTROL_FILE (lines key=value: status, delay, body, pad,
tail, split, pause), sleeps `delay` seconds, answers `status`, and appends
"HOST|SNI|USER-AGENT|PATH" to REQUEST_LOG and the method, path and every
header as one JSON line to REQUEST_LOG.json, and once the whole response
is sent, its path as one line to REQUEST_LOG.sent.  The body is `pad` bytes of
filler, then `body` (default "har test server\n"), then `tail` bytes of
filler; with `split`, the first `split` bytes are sent, then the server
waits `pause` seconds before the rest (a body in two reads, or one that
stalls).  HEAD gets the same headers and no body.  Prints "ready" on stdout
once listening.

With CERT and KEY it serves HTTPS; each HOST CERT KEY after them is served
to clients whose SNI names HOST (one address, several certificates).  The
control key `cert` ("CERT,KEY") replaces the first certificate in place:
the TLS context and its session ticket keys stay, so sessions made before
still resume (only a full handshake sees the new certificate).  With
`keepalive=1` the server speaks HTTP/1.1 and keeps the connection open
for more requests.  Each JSON line also says whether the TLS session was
resumed and the client's port (one port per connection).
"""

import http.server
import json
import socket
import socketserver
import ssl
import sys
import threading
import time

addr, port, control, request_log = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
cert = key = None
if len(sys.argv) > 6:
    cert, key = sys.argv[5], sys.argv[6]
sni_certs = {}  # HOST: (CERT, KEY)
for i in range(7, len(sys.argv) - 2, 3):
    sni_certs[sys.argv[i]] = (sys.argv[i + 1], sys.argv[i + 2])

log_lock = threading.Lock()


def state():
    values = {"status": "200", "delay": "0", "body": "har test server\n",
              "pad": "0", "tail": "0", "split": "", "pause": "0", "cert": "",
              "keepalive": "0"}
    try:
        with open(control) as f:
            for line in f.read().splitlines():
                if "=" in line:
                    k, v = line.split("=", 1)
                    values[k] = v
    except OSError:
        pass
    return values


def make_body(values):
    return (b"x" * int(values["pad"]) + values["body"].encode()
            + b"y" * int(values["tail"]))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def setup(self):
        super().setup()
        self.keepalive = state()["keepalive"] == "1"
        if self.keepalive:
            self.protocol_version = "HTTP/1.1"

    def record(self):
        sni = getattr(self.connection, "har_sni", "") or ""
        with log_lock, open(request_log, "a") as f:
            f.write("%s|%s|%s|%s\n" % (self.headers.get("Host", ""), sni,
                                       self.headers.get("User-Agent", ""), self.path))
        with log_lock, open(request_log + ".json", "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path,
                                "headers": list(self.headers.items()),
                                "resumed": getattr(self.connection, "session_reused", None),
                                "peer": self.client_address[1]}) + "\n")

    def sent(self):
        """The response is in the kernel's hands: a test that kills the
        server after this line knows the client can read all of it."""
        with log_lock, open(request_log + ".sent", "a") as f:
            f.write("%s\n" % self.path)

    def answer(self, send_body):
        values = state()
        status, delay = int(values["status"]), float(values["delay"])
        if delay > 0:
            time.sleep(delay)
        self.record()
        body = make_body(values)
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", "http://redirect.invalid/")
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if not self.keepalive:
            self.send_header("Connection", "close")
        self.end_headers()
        if not send_body:
            self.sent()
            return
        split = int(values["split"]) if values["split"] else len(body)
        self.wfile.write(body[:split])
        self.wfile.flush()
        if split < len(body):
            time.sleep(float(values["pause"]))
            self.wfile.write(body[split:])
        self.sent()

    def do_GET(self):
        self.answer(True)

    def do_HEAD(self):
        self.answer(False)

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    request_queue_size = 128

    def finish_request(self, request, client_address):
        if context is not None:
            use_cert(state()["cert"])
            try:
                request.settimeout(5)
                request = context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as e:
                sys.stderr.write("TLS handshake failed: %s\n" % e)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        sys.stderr.write("error serving %s: %s\n" % (client_address, sys.exc_info()[1]))


context = None
loaded_cert = ""
cert_lock = threading.Lock()


def use_cert(wanted):
    """Loads the control file's certificate into the running context."""
    global loaded_cert
    with cert_lock:
        if wanted and wanted != loaded_cert:
            context.load_cert_chain(*wanted.split(","))
            loaded_cert = wanted


if cert:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    sni_contexts = {}
    for host, (c, k) in sni_certs.items():
        sni_contexts[host] = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sni_contexts[host].load_cert_chain(c, k)

    def sni_callback(sslobj, server_name, ctx):
        sslobj.har_sni = server_name  # SSLObject; copied to the socket below
        if server_name in sni_contexts:
            sslobj.context = sni_contexts[server_name]
        with log_lock, open(request_log + ".sni", "a") as f:
            f.write("%s\n" % server_name)
    context.sni_callback = sni_callback

server = Server((addr, port), Handler)
sys.stdout.write("ready\n")
sys.stdout.flush()
server.serve_forever()
