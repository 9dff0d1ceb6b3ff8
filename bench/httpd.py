#!/usr/bin/python3
"""A tiny HTTP server for har's benchmarks (Debian python3 only).

usage: httpd.py ADDR PORT [DELAY]

Answers every GET with 200 "ok" after DELAY seconds (default 0), one thread
per connection, HTTP/1.0 (the connection closes after each answer).  A TCP
connection that sends nothing and closes (a tcp check) is simply dropped.
Prints "ready" on stdout once listening.
"""

import http.server
import socketserver
import sys
import time

ADDR, PORT = sys.argv[1], int(sys.argv[2])
DELAY = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):  # noqa: N802 - the stdlib's name
        if DELAY > 0:
            time.sleep(DELAY)
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


server = Server((ADDR, PORT), Handler)
print("ready", flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    pass
