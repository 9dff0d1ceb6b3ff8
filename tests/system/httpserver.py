#!/usr/bin/python3
"""A controllable HTTP(S) server for har's system tests.

usage: httpserver.py ADDR PORT CONTROL_FILE REQUEST_LOG [CERT KEY]

Each request reads CONTROL_FILE (lines key=value: status, delay), sleeps
`delay` seconds, answers `status`, and appends "HOST|SNI|USER-AGENT|PATH" to
REQUEST_LOG.  Prints "ready" on stdout once listening.
"""

import http.server
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

log_lock = threading.Lock()


def state():
    values = {"status": "200", "delay": "0"}
    try:
        with open(control) as f:
            for line in f:
                if "=" in line:
                    k, v = line.strip().split("=", 1)
                    values[k] = v
    except OSError:
        pass
    return int(values["status"]), float(values["delay"])


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        status, delay = state()
        if delay > 0:
            time.sleep(delay)
        sni = getattr(self.connection, "har_sni", "") or ""
        with log_lock, open(request_log, "a") as f:
            f.write("%s|%s|%s|%s\n" % (self.headers.get("Host", ""), sni,
                                       self.headers.get("User-Agent", ""), self.path))
        body = b"har test server\n"
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", "http://redirect.invalid/")
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    request_queue_size = 128

    def finish_request(self, request, client_address):
        if context is not None:
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
if cert:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def sni_callback(sslobj, server_name, ctx):
        sslobj.har_sni = server_name  # SSLObject; copied to the socket below
        with log_lock, open(request_log + ".sni", "a") as f:
            f.write("%s\n" % server_name)
    context.sni_callback = sni_callback

server = Server((addr, port), Handler)
sys.stdout.write("ready\n")
sys.stdout.flush()
server.serve_forever()
