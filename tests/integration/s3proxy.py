#!/usr/bin/python3
"""s3proxy.py: a fault-injecting HTTP proxy for the S3 tests (loopback only).

    s3proxy.py PORT UPSTREAM-PORT [--error-rate PCT] [--status 503] [--code SlowDown]
               [--retry-after SECONDS] [--reset-put] [--stall-get SECONDS]
               [--flip-get] [--flip-get-all] [--seed N] [--log FILE] [--tls CERT KEY]

Forwards every request to 127.0.0.1:UPSTREAM-PORT unchanged (its Host
header too, so that SigV4 signatures still hold), except that:
  --error-rate PCT   PCT% of requests are answered with --status (and an S3
                     error body with --code, and Retry-After when given)
  --reset-put        the first PUT of a pack is cut off mid-body (the
                     connection reset)
  --stall-get S      the first GET of a pack range sends half its body, then
                     nothing for S seconds
  --flip-get         the first GET of a pack's range from its start has one byte
                     flipped (its 200th: in the first chunk, which a reader of
                     the pack reads)
  --flip-get-all     every such GET has it flipped (a damaged pack)
  --tls CERT KEY     clients speak https to the proxy (the upstream stays http)
Each request is logged to --log as "METHOD PATH -> STATUS [fault]".
"""
import argparse
import http.client
import ssl
import http.server
import random
import socket
import sys
import threading
import time

lock = threading.Lock()
state = {"reset": False, "stall": False, "flip": False}


def once(name):
    with lock:
        if state[name]:
            return False
        state[name] = True
        return True


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def note(self, status, fault=""):
        if self.server.logf:
            with lock:
                self.server.logf.write("%s %s -> %s %s\n" % (self.command, self.path, status, fault))
                self.server.logf.flush()

    def body(self):
        n = int(self.headers.get("Content-Length", "0") or 0)
        data = b""
        while len(data) < n:
            chunk = self.rfile.read(n - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def error_reply(self):
        a = self.server.args
        body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>%s</Code>"
                "<Message>injected</Message></Error>" % a.code).encode()
        self.send_response(a.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        if a.retry_after is not None:
            self.send_header("Retry-After", str(a.retry_after))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.note(a.status, "injected")

    def forward(self):
        a = self.server.args
        is_pack = "/packs/" in self.path
        if a.reset_put and self.command == "PUT" and is_pack and once("reset"):
            half = int(self.headers.get("Content-Length", "0") or 0) // 2
            self.rfile.read(half)
            self.note("-", "reset mid-body")
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            self.connection.close()
            self.close_connection = True
            return
        data = self.body()
        with lock:
            fail = self.server.rng.random() * 100 < a.error_rate
        if fail:
            self.error_reply()
            return
        up = http.client.HTTPConnection("127.0.0.1", a.upstream, timeout=120)
        up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for k, v in self.headers.items():
            if k.lower() not in ("connection", "expect"):
                up.putheader(k, v)
        up.endheaders(data if data else None)
        r = up.getresponse()
        payload = r.read()
        ranged = self.command == "GET" and is_pack and "Range" in self.headers
        fault = ""
        from_start = ranged and self.headers.get("Range", "").startswith("bytes=0-")
        if from_start and payload and (a.flip_get_all or (a.flip_get and once("flip"))):
            b = bytearray(payload)
            # Past the first entry's header: inside the data of the chunk
            # the reader asked for.
            b[min(200, len(b) - 1)] ^= 0x40
            payload = bytes(b)
            fault = "flipped a byte"
        stall = ranged and a.stall_get and len(payload) > 1 and once("stall")
        self.send_response(r.status, r.reason)
        for k, v in r.getheaders():
            if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(k, v)
        if self.command == "HEAD":
            self.send_header("Content-Length", r.getheader("Content-Length", "0"))
        else:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if stall:
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.note(r.status, "stalled")
            time.sleep(a.stall_get)
            self.close_connection = True
            return
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.note(r.status, fault)
        up.close()

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = forward


def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("upstream", type=int)
    p.add_argument("--error-rate", type=float, default=0)
    p.add_argument("--status", type=int, default=503)
    p.add_argument("--code", default="ServiceUnavailable")
    p.add_argument("--retry-after", type=int)
    p.add_argument("--reset-put", action="store_true")
    p.add_argument("--stall-get", type=float, default=0)
    p.add_argument("--flip-get", action="store_true")
    p.add_argument("--flip-get-all", action="store_true")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--log")
    p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    a = p.parse_args()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.daemon_threads = True
    srv.args = a
    srv.rng = random.Random(a.seed)
    srv.logf = open(a.log, "a") if a.log else None
    if a.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls[0], a.tls[1])
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("s3proxy: listening on 127.0.0.1:%d" % a.port, flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
