#!/usr/bin/env python3
"""make-corpus.py: writes the seed inputs of the fuzz harnesses.

    tests/fuzz/make-corpus.py [CORPUS_DIR]     (default: tests/fuzz/corpus)

Seeds are well-formed exchanges, built from the wire layouts of NBD-NOTES
(sections 1.4, 3.2, 3.3, 4.3), so that the fuzzer starts from inputs that
reach deep into the decoders.  The input layouts are described at the top
of fuzz_reply.c and fuzz_opt_reply.c.  Files named seed-* are rewritten;
other files in the corpus directories (inputs the fuzzer found) are kept.
"""
import os
import struct
import sys

# ---- Wire constants (nbdcore/nbd-protocol.h) -------------------------------
OPT_REPLY_MAGIC = 0x0003E889045565A9
SIMPLE_MAGIC = 0x67446698
STRUCTURED_MAGIC = 0x668E33EF
EXTENDED_MAGIC = 0x6E8A278C

OPT_EXPORT_NAME, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 3, 5, 6, 7
OPT_STRUCTURED_REPLY, OPT_LIST_META, OPT_SET_META, OPT_EXTENDED = 8, 9, 10, 11
REP_ACK, REP_SERVER, REP_INFO, REP_META = 1, 2, 3, 4
REP_ERR = 0x80000000
ERR_UNSUP, ERR_POLICY, ERR_UNKNOWN, ERR_BLOCK_SIZE_REQD = (
    REP_ERR | 1, REP_ERR | 2, REP_ERR | 6, REP_ERR | 8)
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

DONE = 1
T_NONE, T_DATA, T_HOLE, T_BS, T_BS_EXT = 0, 1, 2, 5, 6
T_ERROR, T_ERROR_OFFSET = 0x8001, 0x8002
EIO, EPERM, EINVAL, ENOSPC = 5, 1, 22, 28

# ---- fuzz_reply's fixed requests (see fuzz_reply.c) ------------------------
READ1, BS, WRITE, FLUSH, READ5 = 1, 2, 3, 4, 5
READ1_OFF, READ1_LEN = 0x10000, 65536
BS_OFF, BS_LEN = 0, 131072
READ5_OFF, READ5_LEN = 1024 * 1024 - 512, 512

SIMPLE, STRUCTURED, EXTENDED = 0, 1, 2
REQ_ONE, NAMED_CTX, FILTER, THREE_CTX = 4, 8, 16, 32
WHOLE, BYTES, SEVENS, THIRDS = 0, 64, 128, 192


def be16(v): return struct.pack(">H", v)
def be32(v): return struct.pack(">I", v)
def be64(v): return struct.pack(">Q", v)


def pattern(n, seed):
    return bytes((seed + 7 * i + (i >> 8)) & 0xFF for i in range(n))


class Replies:
    """Builds transmission replies in one mode."""

    def __init__(self, mode):
        self.mode = mode
        self.out = bytearray()

    def simple(self, cookie, error=0, data=b""):
        self.out += be32(SIMPLE_MAGIC) + be32(error) + be64(cookie) + data
        return self

    def chunk(self, flags, ctype, cookie, payload, offset=0):
        if self.mode == EXTENDED:
            self.out += (be32(EXTENDED_MAGIC) + be16(flags) + be16(ctype) + be64(cookie)
                         + be64(offset) + be64(len(payload)))
        else:
            self.out += (be32(STRUCTURED_MAGIC) + be16(flags) + be16(ctype) + be64(cookie)
                         + be32(len(payload)))
        self.out += payload
        return self

    def data(self, cookie, offset, data, flags=0):
        return self.chunk(flags, T_DATA, cookie, be64(offset) + data)

    def hole(self, cookie, offset, size, flags=0):
        return self.chunk(flags, T_HOLE, cookie, be64(offset) + be32(size))

    def none(self, cookie):
        return self.chunk(DONE, T_NONE, cookie, b"")

    def error(self, cookie, err, msg=b"", flags=DONE):
        return self.chunk(flags, T_ERROR, cookie, be32(err) + be16(len(msg)) + msg)

    def error_offset(self, cookie, err, offset, msg=b"", flags=0):
        return self.chunk(flags, T_ERROR_OFFSET, cookie,
                          be32(err) + be16(len(msg)) + msg + be64(offset))

    def status(self, cookie, ctx, extents, flags=0):
        """extents: [(length, flags)]; the form follows the mode."""
        if self.mode == EXTENDED:
            body = be32(ctx) + be32(len(extents))
            body += b"".join(be64(l) + be64(f) for l, f in extents)
            return self.chunk(flags, T_BS_EXT, cookie, body)
        body = be32(ctx) + b"".join(be32(l) + be32(f) for l, f in extents)
        return self.chunk(flags, T_BS, cookie, body)

    def ok_small(self):
        """Successful replies to WRITE and FLUSH."""
        if self.mode == EXTENDED:
            return self.none(WRITE).none(FLUSH)
        return self.simple(WRITE).simple(FLUSH)


def reply_seeds():
    seeds = {}

    # Simple replies only (the READ reply carries all 64 KiB).
    r = Replies(SIMPLE)
    r.simple(WRITE).simple(FLUSH).simple(READ5, data=pattern(READ5_LEN, 5))
    r.simple(BS, error=EINVAL).simple(READ1, data=pattern(READ1_LEN, 1))
    seeds["simple-ok"] = bytes([SIMPLE | THIRDS]) + r.out
    r = Replies(SIMPLE)
    r.simple(READ1, error=EIO).simple(BS, error=EINVAL).simple(WRITE, error=EPERM)
    r.simple(FLUSH, error=ENOSPC).simple(READ5, error=EINVAL)
    seeds["simple-errors"] = bytes([SIMPLE]) + r.out
    seeds["simple-errors-bytewise"] = bytes([SIMPLE | BYTES]) + r.out

    def structured_ok(mode, ctl, ctxs=(0, 1)):
        r = Replies(mode)
        r.ok_small()
        # READ1 out of order: holes and data pieces.
        r.hole(READ1, READ1_OFF + 32768, 32768)
        r.data(READ1, READ1_OFF + 1024, pattern(1024, 2))
        r.hole(READ1, READ1_OFF + 2048, 30720)
        r.data(READ1, READ1_OFF, pattern(1024, 1), flags=DONE)
        # READ5 with DF: one data chunk.
        r.data(READ5, READ5_OFF, pattern(READ5_LEN, 5), flags=DONE)
        # BLOCK_STATUS: one chunk per context, the last one DONE.
        for i, ctx in enumerate(ctxs):
            ext = [(4096, 0), (61440, 3), (131072, 1)] if ctx == 0 else [(65536, ctx), (65536, 0)]
            r.status(BS, ctx, ext, flags=DONE if i == len(ctxs) - 1 else 0)
        return bytes([mode | ctl]) + r.out

    seeds["structured-ok"] = structured_ok(STRUCTURED, WHOLE)
    seeds["structured-ok-sevens"] = structured_ok(STRUCTURED, SEVENS)
    seeds["structured-three-contexts"] = structured_ok(STRUCTURED, THREE_CTX, (2, 0, 1))
    seeds["structured-named-context"] = structured_ok(STRUCTURED, NAMED_CTX)
    seeds["extended-ok"] = structured_ok(EXTENDED, WHOLE)
    seeds["extended-ok-thirds"] = structured_ok(EXTENDED, THIRDS | THREE_CTX, (0, 1, 2))

    # REQ_ONE: one extent per context.
    r = Replies(STRUCTURED)
    r.status(BS, 1, [(131072, 1)]).status(BS, 0, [(512, 3)], flags=DONE)
    r.none(READ1).none(READ5).ok_small()
    seeds["structured-req-one"] = bytes([STRUCTURED | REQ_ONE]) + r.out

    # Extended headers with the status payload filter: only context 1.
    r = Replies(EXTENDED)
    r.status(BS, 1, [(1 << 33, 1)], flags=DONE)
    r.data(READ1, READ1_OFF, pattern(READ1_LEN // 16, 3))
    r.error_offset(READ1, EIO, READ1_OFF + 8192, b"medium error")
    r.none(READ1).error(READ5, EINVAL, b"").ok_small()
    seeds["extended-filter"] = bytes([EXTENDED | FILTER | NAMED_CTX]) + r.out

    # Errors of every shape, then the rest succeeds.
    r = Replies(STRUCTURED)
    r.error(READ1, EIO, b"disk on fire")
    r.hole(READ5, READ5_OFF, 256).error_offset(READ5, ENOSPC, READ5_OFF + 256, b"x")
    r.none(READ5)
    r.chunk(DONE, 0x8123, BS, be32(9999) + be16(2) + b"??" + b"\0\0")
    r.error(WRITE, EPERM, b"read-only").simple(FLUSH, error=EIO)
    seeds["structured-errors"] = bytes([STRUCTURED]) + r.out

    # Reads that cover too little; a status reply without extents.
    r = Replies(STRUCTURED)
    r.data(READ1, READ1_OFF, pattern(100, 4), flags=DONE).none(READ5).none(BS).ok_small()
    seeds["structured-short"] = bytes([STRUCTURED | BYTES]) + r.out

    # Extents the caller refuses (more than 3, the last with flags 7).
    r = Replies(STRUCTURED)
    r.status(BS, 0, [(512, 0), (512, 1), (512, 2), (512, 7)], flags=DONE)
    seeds["structured-callback-refuses"] = bytes([STRUCTURED]) + r.out

    # Violations: each kills the connection.
    def violation(name, mode, build, ctl=0):
        r = Replies(mode)
        build(r)
        seeds["violation-" + name] = bytes([mode | ctl]) + r.out

    violation("unknown-cookie", STRUCTURED, lambda r: r.none(99))
    violation("outside", STRUCTURED, lambda r: r.data(READ1, READ1_OFF + READ1_LEN - 4, b"12345"))
    violation("overlap", EXTENDED,
              lambda r: r.hole(READ1, READ1_OFF, 4096).data(READ1, READ1_OFF + 4095, b"ab"))
    violation("zero-extent", STRUCTURED, lambda r: r.status(BS, 0, [(512, 0), (0, 0)]))
    violation("unknown-context", STRUCTURED, lambda r: r.status(BS, 9, [(512, 0)]))
    violation("data-to-status", STRUCTURED, lambda r: r.data(BS, 0, b"x"))
    violation("simple-in-extended", EXTENDED,
              lambda r: r.out.extend(be32(SIMPLE_MAGIC) + bytes(28)))
    violation("bad-magic", STRUCTURED, lambda r: r.out.extend(b"HTTP/1.1 400 Bad Request\r\n"))
    violation("simple-read-structured", STRUCTURED, lambda r: r.simple(READ1), SEVENS)
    return seeds


# ---- Option replies ------------------------------------------------------

def opt_reply(opt, rtype, payload=b""):
    return be64(OPT_REPLY_MAGIC) + be32(opt) + be32(rtype) + be32(len(payload)) + payload


def info_export(size, flags):
    return be16(INFO_EXPORT) + be64(size) + be16(flags)


def info_block_size(mn, pref, mx):
    return be16(INFO_BLOCK_SIZE) + be32(mn) + be32(pref) + be32(mx)


def server(name, desc=b""):
    return be32(len(name)) + name + desc


def meta(ctx_id, name):
    return be32(ctx_id) + name


def opt_seeds():
    SELF = 0x80
    seeds = {}
    seeds["list"] = bytes([SELF]) + (
        opt_reply(OPT_LIST, REP_SERVER, server(b"disk", b"the disk"))
        + opt_reply(OPT_LIST, REP_SERVER, server(b""))
        + opt_reply(OPT_LIST, REP_SERVER, server("vm1/sda-\u00e9".encode()))
        + opt_reply(OPT_LIST, REP_ACK))
    seeds["go-qemu"] = bytes([OPT_GO]) + (
        opt_reply(OPT_GO, REP_INFO, info_block_size(1, 4096, 32 << 20))
        + opt_reply(OPT_GO, REP_INFO, info_export(1 << 30, 0x0CED))
        + opt_reply(OPT_GO, REP_ACK))
    seeds["info-full"] = bytes([OPT_INFO]) + (
        opt_reply(OPT_INFO, REP_INFO, info_export(10 << 30, 0x048F))
        + opt_reply(OPT_INFO, REP_INFO, be16(INFO_NAME) + b"vm1/sda")
        + opt_reply(OPT_INFO, REP_INFO, be16(INFO_DESCRIPTION) + b"system disk")
        + opt_reply(OPT_INFO, REP_INFO, info_block_size(512, 4096, 0xFFFFFFFF))
        + opt_reply(OPT_INFO, REP_INFO, be16(9) + b"future")
        + opt_reply(OPT_INFO, REP_ACK))
    seeds["info-odd-block-size"] = bytes([OPT_INFO]) + (
        opt_reply(OPT_INFO, REP_INFO, info_block_size(3, 256, 100))
        + opt_reply(OPT_INFO, REP_INFO, info_block_size(4096, 4096, 4096 * 3 + 512))
        + opt_reply(OPT_INFO, ERR_BLOCK_SIZE_REQD, b"need block sizes"))
    seeds["set-meta"] = bytes([OPT_SET_META]) + (
        opt_reply(OPT_SET_META, REP_META, meta(0, b"base:allocation"))
        + opt_reply(OPT_SET_META, REP_META, meta(2, b"qemu:dirty-bitmap:bm0"))
        + opt_reply(OPT_SET_META, REP_META, meta(1, b"qemu:allocation-depth"))
        + opt_reply(OPT_SET_META, REP_ACK))
    seeds["list-meta"] = bytes([SELF]) + (
        opt_reply(OPT_LIST_META, REP_META, meta(0, b"base:allocation"))
        + opt_reply(OPT_LIST_META, ERR_POLICY, b"no"))
    seeds["errors"] = bytes([SELF]) + b"".join(
        opt_reply(opt, err, msg) for opt, err, msg in [
            (OPT_STARTTLS, ERR_POLICY, b"TLS not configured"),
            (OPT_STRUCTURED_REPLY, ERR_UNSUP, b""),
            (OPT_EXTENDED, ERR_UNSUP, b"unknown option"),
            (OPT_GO, ERR_UNKNOWN, b"export 'x' not present"),
            (OPT_GO, REP_ERR | 0x7F, b"?"),
        ])
    seeds["simple-acks"] = bytes([SELF]) + b"".join(
        opt_reply(o, REP_ACK) for o in (OPT_STARTTLS, OPT_STRUCTURED_REPLY, OPT_EXTENDED, 2))
    seeds["export-name"] = bytes([OPT_EXPORT_NAME]) + opt_reply(
        OPT_EXPORT_NAME, 99, be64(1 << 20) + be16(0x0003) + bytes(124))
    seeds["greeting"] = bytes([SELF]) + opt_reply(
        OPT_GO, 77, b"NBDMAGICIHAVEOPT" + be16(3)) + opt_reply(
        OPT_GO, 78, b"NBDMAGIC" + be64(0x0000420281861253) + bytes(136))
    # Malformed, then a good reply after it.
    seeds["malformed"] = bytes([OPT_GO]) + (
        opt_reply(OPT_GO, REP_ACK, b"x")
        + opt_reply(OPT_INFO, REP_ACK)
        + be64(OPT_REPLY_MAGIC ^ 1) + be32(OPT_GO) + be32(REP_ACK) + be32(0)
        + opt_reply(OPT_GO, REP_INFO, info_export(1 << 63, 1))
        + opt_reply(OPT_GO, REP_INFO, info_export(512, 0))
        + opt_reply(OPT_GO, REP_INFO, info_export(512, 1) + b"!")
        + opt_reply(OPT_GO, REP_INFO, be16(INFO_NAME) + b"a\0b")
        + opt_reply(OPT_GO, REP_ACK))
    seeds["malformed-server"] = bytes([OPT_LIST]) + (
        opt_reply(OPT_LIST, REP_SERVER, be32(100) + b"short")
        + opt_reply(OPT_LIST, REP_SERVER, server(b"n" * 4097))
        + opt_reply(OPT_LIST, REP_META, meta(0, b""))
        + opt_reply(OPT_LIST, REP_ACK))
    seeds["truncated"] = bytes([SELF]) + opt_reply(OPT_LIST, REP_SERVER, server(b"disk"))[:30]
    return seeds


def write(dirname, seeds):
    os.makedirs(dirname, exist_ok=True)
    for f in os.listdir(dirname):
        if f.startswith("seed-"):
            os.unlink(os.path.join(dirname, f))
    for name, data in sorted(seeds.items()):
        with open(os.path.join(dirname, "seed-" + name), "wb") as f:
            f.write(data)
    print("%s: %d seeds" % (dirname, len(seeds)))


def main():
    top = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "corpus")
    write(os.path.join(top, "fuzz_reply"), reply_seeds())
    write(os.path.join(top, "fuzz_opt_reply"), opt_seeds())


if __name__ == "__main__":
    main()
