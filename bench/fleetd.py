#!/usr/bin/python3
"""The one HTTP server that a whole fleet of hards checks (`make fleet`).

usage: fleetd.py PORT ADDR [ADDR...]

Listens on PORT of every ADDR (loopback addresses, the candidates) and of
127.0.0.1 (the control address, which is not recorded).  Every connection to
a candidate address is a check: its arrival time (time.time(), at accept) is
recorded with the address, and a request is answered 200 "ok" (HTTP/1.0, the
connection then closed), after the address's delay if it has one.  An
address that is "killed" records the arrival and resets the connection at
once (SO_LINGER 0), so its checks fail and can still be counted.

Control requests to 127.0.0.1:PORT (GET, answered with text/plain):
  /kill?a=ADDR             the address resets every connection from now on
  /revive?a=ADDR           it answers again
  /delay?a=ADDR&s=SECONDS  its answers wait SECONDS (0: none)
  /arrivals?since=T        "TIME ADDR" lines, one per check that arrived at
                           or after T (seconds since the epoch), in order
  /forget?before=T         drops the records of checks before T

Debian's python3 standard library only; one thread, asyncio.  Prints
"ready" on stdout once every address listens.
"""

import asyncio
import bisect
import resource
import socket
import struct
import sys
import time
import urllib.parse

CONTROL = "127.0.0.1"
ANSWER = (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
          b"Connection: close\r\n\r\nok\n")
MAX_REQUEST = 16384


class Fleet:
    """What the server knows: delays, killed addresses and the arrivals."""

    def __init__(self):
        self.delay = {}
        self.killed = set()
        self.times = []  # arrival times, ascending
        self.addrs = []  # the address of each arrival

    def arrived(self, addr):
        self.times.append(time.time())
        self.addrs.append(addr)

    def arrivals_since(self, since):
        start = bisect.bisect_left(self.times, since)
        return "".join("%.6f %s\n" % (self.times[i], self.addrs[i])
                       for i in range(start, len(self.times)))

    def forget_before(self, before):
        cut = bisect.bisect_left(self.times, before)
        del self.times[:cut]
        del self.addrs[:cut]
        return cut


class Connection(asyncio.Protocol):
    """One HTTP connection: a check (candidate address) or a control request."""

    def __init__(self, fleet, addr):
        self.fleet = fleet
        self.addr = addr
        self.transport = None
        self.buffer = b""

    def connection_made(self, transport):
        self.transport = transport
        if self.addr == CONTROL:
            return
        self.fleet.arrived(self.addr)
        if self.addr in self.fleet.killed:
            # a reset, not a polite close: the check fails as against a
            # server that died with the connection open
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()

    def data_received(self, data):
        if self.transport.is_closing():
            return
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > MAX_REQUEST:
                self.transport.abort()
            return
        if self.addr == CONTROL:
            self.reply(self.control(self.buffer.split(b"\r\n", 1)[0].decode("latin-1")))
            return
        delay = self.fleet.delay.get(self.addr, 0.0)
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self.reply, ANSWER)
        else:
            self.reply(ANSWER)

    def reply(self, data):
        if not self.transport.is_closing():
            self.transport.write(data)
            self.transport.close()

    def control(self, request_line):
        parts = request_line.split()
        url = urllib.parse.urlsplit(parts[1] if len(parts) > 1 else "/")
        query = dict(urllib.parse.parse_qsl(url.query))
        fleet = self.fleet
        status, body = "200 OK", "ok\n"
        try:
            if url.path == "/kill":
                fleet.killed.add(query["a"])
            elif url.path == "/revive":
                fleet.killed.discard(query["a"])
            elif url.path == "/delay":
                fleet.delay[query["a"]] = float(query["s"])
            elif url.path == "/arrivals":
                body = fleet.arrivals_since(float(query.get("since", 0)))
            elif url.path == "/forget":
                body = "%d\n" % fleet.forget_before(float(query["before"]))
            else:
                status, body = "404 Not Found", "unknown request %s\n" % url.path
        except (KeyError, ValueError) as exc:
            status, body = "400 Bad Request", "bad request: %r\n" % exc
        data = body.encode()
        return (("HTTP/1.0 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                 "Connection: close\r\n\r\n" % (status, len(data))).encode() + data)


def raise_open_file_limit():
    """A fleet's checks arrive in bursts of hundreds of connections at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(port, addrs):
    fleet = Fleet()
    loop = asyncio.get_running_loop()
    servers = []
    for addr in [CONTROL] + addrs:
        servers.append(await loop.create_server(
            lambda addr=addr: Connection(fleet, addr), addr, port,
            backlog=4096, reuse_address=True))
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main():
    if len(sys.argv) < 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    raise_open_file_limit()
    try:
        asyncio.run(serve(int(sys.argv[1]), sys.argv[2:]))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
