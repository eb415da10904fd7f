#!/usr/bin/env python3
"""A scripted hostile NBD server for the reliability matrix.

    hostile-server.py SOCKET DATA SCENARIO

Serves the file DATA on the Unix socket SOCKET (one forked child per
connection) as a well-behaved fixed-newstyle server with structured replies,
base:allocation and, when the scenario's name ends in "@ext", extended
headers, until SCENARIO makes it misbehave: each scenario plays one bad input
of the NBD CVE list or of the spec's MUSTs (oversize names and option
lengths, block status that runs past the request or wraps 2^64, extent
length 0, chunks outside the request, unknown cookies, error replies,
oldstyle and non-fixed greetings where TLS was asked for, export sizes of
2^63 and 2^64-1, unknown flag bits, disconnects inside every reply).
`hostile-server.py --list` prints the scenarios, one a line:
NAME EXPECT, where EXPECT is "fail" (a client must end in a clear error)
or "either" (a clean error, or every byte read right).
"""
import os
import signal
import socket
import struct
import sys

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
OLDMAGIC = 0x0000420281861253
OPT_REPLY_MAGIC = 0x0003E889045565A9
REQ_MAGIC, EXT_REQ_MAGIC = 0x25609513, 0x21E41C71
SIMPLE_MAGIC, STRUCT_MAGIC, EXT_MAGIC = 0x67446698, 0x668E33EF, 0x6E8A278C

OPT_EXPORT_NAME, OPT_ABORT, OPT_STARTTLS, OPT_GO = 1, 2, 5, 7
OPT_STRUCTURED, OPT_SET_META, OPT_EXTENDED = 8, 10, 11
REP_ACK, REP_INFO, REP_META = 1, 3, 4
ERR_UNSUP, ERR_UNKNOWN = (1 << 31) | 1, (1 << 31) | 6
FLAG_HAS_FLAGS, FLAG_READ_ONLY = 1, 2
CMD_READ, CMD_DISC, CMD_BLOCK_STATUS = 0, 2, 7
FLAG_DONE = 1
T_NONE, T_DATA, T_HOLE, T_BS, T_BS_EXT, T_ERROR = 0, 1, 2, 5, 6, 0x8001
EIO, EINVAL = 5, 22
CTX_ID = 7

# name -> (expect, description).  Names ending in "@ext" are added below
# for every transmission scenario: the same fault with extended headers.
HANDSHAKE = {
    "ok": ("ok", "a well-behaved server (the control: every byte right)"),
    "greeting-bad-magic": ("fail", "a greeting whose second magic is neither IHAVEOPT nor oldstyle"),
    "greeting-short": ("fail", "the connection closed 12 bytes into the greeting"),
    "oldstyle-tls": ("fail", "an oldstyle greeting to a client that asked for TLS"),
    "not-fixed-tls": ("fail", "newstyle without FIXED_NEWSTYLE to a client that asked for TLS"),
    "starttls-unsup-tls": ("fail", "NBD_REP_ERR_UNSUP to STARTTLS when TLS was asked for"),
    "opt-len-huge": ("fail", "an option reply claiming 0xffffffff bytes"),
    "opt-reply-bad-magic": ("fail", "an option reply with a wrong magic"),
    "opt-reply-other-option": ("fail", "the reply to GO naming another option"),
    "ack-with-payload": ("fail", "an ACK carrying 4 bytes"),
    "info-name-oversize": ("either", "NBD_INFO_NAME of 5000 bytes (over NBD_MAX_STRING)"),
    "info-export-short": ("fail", "NBD_INFO_EXPORT of 8 bytes instead of 12"),
    "meta-name-oversize": ("either", "a META_CONTEXT reply whose name is 5000 bytes"),
    "meta-unrequested": ("either", "a META_CONTEXT the client did not ask for"),
    "size-2p63": ("fail", "an export size of 2^63"),
    "size-2p64-1": ("fail", "an export size of 2^64-1"),
    "eflags-unknown": ("either", "transmission flags with unknown bits 13-15 set"),
    "gflags-unknown": ("either", "handshake flags with unknown bits 2-15 set"),
    "go-error": ("fail", "NBD_REP_ERR_UNKNOWN to GO"),
}
for _k in range(0, 60, 3):
    HANDSHAKE["cut-handshake-%d" % _k] = ("fail", "the connection closed after %d bytes of the handshake's replies" % _k)

TRANSMISSION = {
    "read-error": ("fail", "an NBD_EIO error chunk to every read"),
    "read-simple-reply": ("fail", "a simple reply to a read after structured replies were agreed"),
    "read-outside": ("fail", "a data chunk just past the end of the request"),
    "read-wrap": ("fail", "a data chunk at offset 2^64-8 (wraps when its length is added)"),
    "read-short": ("fail", "data for half the request, then DONE"),
    "read-overlap": ("fail", "two data chunks over the same bytes, the request not covered"),
    "read-unknown-cookie": ("fail", "a reply to a cookie that was never sent"),
    "read-empty-data": ("fail", "a data chunk of 0 bytes, then DONE"),
    "read-hole-bad-len": ("fail", "an OFFSET_HOLE chunk of 8 bytes instead of 12"),
    "read-unknown-type": ("fail", "a chunk of unknown type 77"),
    "read-huge-chunk": ("fail", "a chunk claiming 0xffffffff bytes of payload"),
    "reply-flags-unknown": ("either", "reply chunks with unknown flag bits set"),
    "bs-past-request": ("either", "a last extent that runs 1 GiB past the request and the export"),
    "bs-wrap": ("either", "an extent of 0xffffffff (compact) or 2^64-1 bytes (extended)"),
    "bs-zero-length": ("fail", "an extent of length 0"),
    "bs-no-extents": ("fail", "a block status chunk with no extent"),
    "bs-wrong-context": ("fail", "a block status chunk for context id 99"),
    "bs-error": ("fail", "an NBD_EIO error chunk to block status"),
    "bs-unaligned": ("either", "extents of 3 bytes"),
    "bs-huge-count": ("fail", "a block status chunk claiming 2^24 extents"),
    "stall-read": ("fail", "no reply to reads, the connection kept open (the client's --io-timeout 3)"),
    "stall-bs": ("fail", "no reply to block status, the connection kept open"),
    "stall-mid-reply": ("fail", "half of a read's reply, then nothing, the connection kept open"),
}
for _k in (0, 1, 8, 19, 20, 24, 27, 28, 29, 100, 4096):
    TRANSMISSION["cut-read-%d" % _k] = ("fail", "the connection closed %d bytes into a read's reply" % _k)
for _k in (0, 4, 12, 20, 24, 27, 31, 32):
    TRANSMISSION["cut-bs-%d" % _k] = ("fail", "the connection closed %d bytes into a block status reply" % _k)

SCENARIOS = dict(HANDSHAKE)
for _n, _v in TRANSMISSION.items():
    SCENARIOS[_n] = _v
    SCENARIOS[_n + "@ext"] = (_v[0], _v[1] + ", with extended headers")


class Cut(Exception):
    pass


class Conn:
    def __init__(self, sock, data, scenario):
        self.s = sock
        self.data = data
        self.name = scenario.split("@")[0]
        self.ext_ok = scenario.endswith("@ext")
        self.ext = self.structured = False
        self.budget = None  # bytes left before a cut
        self.stalled = False  # send nothing more
        self.reads = self.statuses = 0
        if self.name.startswith("cut-handshake-"):
            self.budget = int(self.name.rsplit("-", 1)[1])

    def send(self, b):
        if self.stalled:
            return
        if self.budget is not None:
            if len(b) >= self.budget:
                self.s.sendall(b[: self.budget])
                raise Cut()
            self.budget -= len(b)
        self.s.sendall(b)

    def recv(self, n):
        b = b""
        while len(b) < n:
            x = self.s.recv(n - len(b))
            if not x:
                raise Cut()
            b += x
        return b

    def size(self):
        return {"size-2p63": 1 << 63, "size-2p64-1": (1 << 64) - 1}.get(self.name, len(self.data))

    # ---- negotiation ------------------------------------------------------------

    def opt_reply(self, opt, rep, payload=b""):
        magic = 0x1234567812345678 if self.name == "opt-reply-bad-magic" else OPT_REPLY_MAGIC
        length = len(payload)
        if self.name == "opt-len-huge":
            length = 0xFFFFFFFF
        self.send(struct.pack(">QIII", magic, opt, rep, length) + payload)
        if self.name == "opt-len-huge":
            raise Cut()

    def greet(self):
        n = self.name
        if n == "oldstyle-tls":
            self.send(NBDMAGIC + struct.pack(">QQI", OLDMAGIC, len(self.data), FLAG_HAS_FLAGS | FLAG_READ_ONLY) + bytes(124))
            return False
        if n == "greeting-bad-magic":
            self.send(NBDMAGIC + b"XXXXXXXX" + struct.pack(">H", 3))
            raise Cut()
        if n == "greeting-short":
            self.send(NBDMAGIC + b"IHAV")
            raise Cut()
        gflags = 0 if n == "not-fixed-tls" else 3
        if n == "gflags-unknown":
            gflags = 0xFFFF
        self.send(NBDMAGIC + struct.pack(">QH", IHAVEOPT, gflags))
        self.recv(4)
        return True

    def negotiate(self):
        while True:
            magic, opt, length = struct.unpack(">QII", self.recv(16))
            if magic != IHAVEOPT:
                raise Cut()
            body = self.recv(length)
            if opt == OPT_ABORT:
                self.opt_reply(opt, REP_ACK)
                raise Cut()
            if opt == OPT_EXPORT_NAME:
                self.send(struct.pack(">QH", self.size(), self.eflags()))
                return
            if opt == OPT_STARTTLS:
                if self.name == "starttls-unsup-tls":
                    self.opt_reply(opt, ERR_UNSUP)
                    continue
                self.opt_reply(opt, ERR_UNSUP)
            elif opt == OPT_EXTENDED and self.ext_ok:
                self.ext = self.structured = True
                self.opt_reply(opt, REP_ACK, b"\0\0\0\0" if self.name == "ack-with-payload" else b"")
            elif opt == OPT_STRUCTURED and not self.ext:
                self.structured = True
                self.opt_reply(opt, REP_ACK, b"\0\0\0\0" if self.name == "ack-with-payload" else b"")
            elif opt == OPT_SET_META:
                self.set_meta(opt, body)
            elif opt == OPT_GO:
                if self.go(opt):
                    return
            else:
                self.opt_reply(opt, ERR_UNSUP)

    def set_meta(self, opt, body):
        nlen = struct.unpack(">I", body[:4])[0]
        p = 4 + nlen
        count = struct.unpack(">I", body[p:p + 4])[0]
        p += 4
        for _ in range(count):
            qlen = struct.unpack(">I", body[p:p + 4])[0]
            q = body[p + 4:p + 4 + qlen]
            p += 4 + qlen
            if q == b"base:allocation":
                name = q
                if self.name == "meta-name-oversize":
                    name = b"base:allocation" + b"x" * 5000
                self.opt_reply(opt, REP_META, struct.pack(">I", CTX_ID) + name)
        if self.name == "meta-unrequested":
            self.opt_reply(opt, REP_META, struct.pack(">I", 9) + b"qemu:dirty-bitmap:nobody-asked")
        self.opt_reply(opt, REP_ACK)

    def eflags(self):
        f = FLAG_HAS_FLAGS | FLAG_READ_ONLY
        if self.name == "eflags-unknown":
            f |= 0xE000
        return f

    def go(self, opt):
        n = self.name
        if n == "go-error":
            self.opt_reply(opt, ERR_UNKNOWN, b"no such export here")
            return False
        reply_opt = OPT_SET_META if n == "opt-reply-other-option" else opt
        export = struct.pack(">HQH", 0, self.size(), self.eflags())
        if n == "info-export-short":
            export = export[:8]
        self.opt_reply(reply_opt, REP_INFO, export)
        if n == "info-name-oversize":
            self.opt_reply(opt, REP_INFO, struct.pack(">H", 1) + b"n" * 5000)
        self.opt_reply(opt, REP_ACK)
        return True

    # ---- transmission -----------------------------------------------------------

    def chunk(self, flags, typ, cookie, payload, offset=0, length=None):
        if self.name == "reply-flags-unknown":
            flags |= 0xFE
        if length is None:
            length = len(payload)
        if self.ext:
            hdr = struct.pack(">IHHQQQ", EXT_MAGIC, flags, typ, cookie, offset, length)
        else:
            hdr = struct.pack(">IHHQI", STRUCT_MAGIC, flags, typ, cookie, length)
        self.send(hdr + payload)

    def error(self, cookie, err, msg):
        self.chunk(FLAG_DONE, T_ERROR, cookie, struct.pack(">IH", err, len(msg)) + msg)

    def serve(self):
        while True:
            if self.ext:
                magic, flags, typ, cookie, off, length = struct.unpack(">IHHQQQ", self.recv(32))
            else:
                magic, flags, typ, cookie, off, length = struct.unpack(">IHHQQI", self.recv(28))
            if magic not in (REQ_MAGIC, EXT_REQ_MAGIC):
                raise Cut()
            if typ == CMD_DISC:
                raise Cut()
            if typ == CMD_READ:
                self.read(cookie, off, length)
            elif typ == CMD_BLOCK_STATUS:
                self.status(cookie, off, length)
            else:
                self.error(cookie, EINVAL, b"not here")

    def read(self, cookie, off, length):
        n = self.name
        self.reads += 1
        data = self.data[off:off + length]
        data += bytes(length - len(data))
        if n.startswith("cut-read-"):
            self.budget = int(n.rsplit("-", 1)[1])
        if n == "read-error":
            return self.error(cookie, EIO, b"injected read error")
        if n == "stall-read":
            return
        if n == "stall-mid-reply":
            self.chunk(FLAG_DONE, T_DATA, cookie, struct.pack(">Q", off) + data[:length // 2], length=8 + length)
            self.stalled = True
            return
        if n == "read-simple-reply" or not self.structured:
            if n == "read-simple-reply" and not self.structured:
                return self.error(cookie, EIO, b"no structured replies")
            return self.send(struct.pack(">IIQ", SIMPLE_MAGIC, 0, cookie) + data)
        if n == "read-unknown-cookie":
            cookie += 0x5A5A5A
        if n == "read-unknown-type":
            return self.chunk(FLAG_DONE, 77, cookie, b"\0" * 8)
        if n == "read-huge-chunk":
            self.chunk(FLAG_DONE, T_DATA, cookie, struct.pack(">Q", off), length=0xFFFFFFFF)
            raise Cut()
        if n == "read-hole-bad-len":
            return self.chunk(FLAG_DONE, T_HOLE, cookie, struct.pack(">Q", off))
        if n == "read-empty-data":
            return self.chunk(FLAG_DONE, T_DATA, cookie, struct.pack(">Q", off))
        if n == "read-outside":
            return self.chunk(FLAG_DONE, T_DATA, cookie, struct.pack(">Q", off + length) + data[:512])
        if n == "read-wrap":
            return self.chunk(FLAG_DONE, T_DATA, cookie, struct.pack(">Q", (1 << 64) - 8) + data[:512])
        if n == "read-short":
            return self.chunk(FLAG_DONE, T_DATA, cookie, struct.pack(">Q", off) + data[:length // 2])
        if n == "read-overlap":
            half = length // 2
            self.chunk(0, T_DATA, cookie, struct.pack(">Q", off) + data[:half])
            return self.chunk(FLAG_DONE, T_DATA, cookie, struct.pack(">Q", off) + data[:half])
        self.chunk(FLAG_DONE, T_DATA, cookie, struct.pack(">Q", off) + data)

    def extents(self, off, length):
        """[(len, flags)] for the request; the last may be altered."""
        n = self.name
        end = min(off + length, len(self.data))
        if n == "bs-unaligned":
            out = [(3, 0)] * min(64, max(1, (end - off) // 3))
            return out
        ext = [(end - off, 0)]
        if n == "bs-past-request":
            ext = [(end - off + (1 << 30), 0)]
        elif n == "bs-wrap":
            ext = [((1 << 64) - 1 if self.ext else 0xFFFFFFFF, 0)]
        elif n == "bs-zero-length":
            ext = [(0, 0), (end - off, 0)]
        elif n == "bs-no-extents":
            ext = []
        return ext

    def status(self, cookie, off, length):
        n = self.name
        self.statuses += 1
        if n.startswith("cut-bs-"):
            self.budget = int(n.rsplit("-", 1)[1])
        if n == "bs-error":
            return self.error(cookie, EIO, b"injected block status error")
        if n == "stall-bs":
            return
        ctx = 99 if n == "bs-wrong-context" else CTX_ID
        ext = self.extents(off, length)
        if self.ext:
            count = (1 << 24) if n == "bs-huge-count" else len(ext)
            body = struct.pack(">II", ctx, count)
            body += b"".join(struct.pack(">QQ", min(l, (1 << 64) - 1), f) for l, f in ext)
            return self.chunk(FLAG_DONE, T_BS_EXT, cookie, body)
        body = struct.pack(">I", ctx)
        body += b"".join(struct.pack(">II", min(l, 0xFFFFFFFF), f) for l, f in ext)
        if n == "bs-huge-count":
            self.chunk(FLAG_DONE, T_BS, cookie, body, length=4 + 8 * (1 << 24))
            raise Cut()
        self.chunk(FLAG_DONE, T_BS, cookie, body)


def handle(sock, data, scenario):
    c = Conn(sock, data, scenario)
    try:
        if c.greet():
            c.negotiate()
        c.serve()
    except (Cut, OSError, struct.error):
        pass
    finally:
        sock.close()


def main():
    if sys.argv[1:] == ["--list"]:
        for name, (expect, what) in SCENARIOS.items():
            print(name, expect, what)
        return 0
    if len(sys.argv) != 4 or sys.argv[3] not in SCENARIOS:
        sys.exit("usage: hostile-server.py SOCKET DATA SCENARIO (--list for the scenarios)")
    path, data_path, scenario = sys.argv[1:]
    with open(data_path, "rb") as f:
        data = f.read()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(16)
    while True:
        sock, _ = srv.accept()
        if os.fork() == 0:
            srv.close()
            handle(sock, data, scenario)
            os._exit(0)
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
