#!/usr/bin/env python3
"""make-server-corpus.py: writes the seed inputs of fuzz_server.

    tests/fuzz/make-server-corpus.py [CORPUS_DIR]   (default: tests/fuzz/corpus)

Each seed is a whole client session, built from the wire layouts of
NBD-NOTES (sections 1.2-1.5, 3.1, 3.3, 4.1, 4.5), in the input layout of
fuzz_server.c: one configuration byte (bit 0: the server requires TLS),
then what the client sends after the server's greeting.  Files named
seed-* in CORPUS_DIR/fuzz_server are rewritten; other files (inputs the
fuzzer found) are kept.
"""
import os
import struct
import sys

IHAVEOPT = 0x49484156454F5054
REQUEST_MAGIC = 0x25609513
EXT_REQUEST_MAGIC = 0x21E41C71

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED_REPLY, OPT_LIST_META, OPT_SET_META, OPT_EXTENDED = 8, 9, 10, 11
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE = 0, 1, 2, 3, 4, 5
CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 6, 7
FLAG_FUA, FLAG_DF, FLAG_REQ_ONE, FLAG_PAYLOAD_LEN = 1, 4, 8, 32

C_FIXED, C_NO_ZEROES = 1, 2
BASE, BITMAP, DEPTH = "base:allocation", "qemu:dirty-bitmap:fuzz", "qemu:allocation-depth"


def be16(v): return struct.pack(">H", v)
def be32(v): return struct.pack(">I", v)
def be64(v): return struct.pack(">Q", v)


def string(s):
    b = s.encode() if isinstance(s, str) else s
    return be32(len(b)) + b


class Session:
    def __init__(self, tls=False, cflags=C_FIXED | C_NO_ZEROES):
        self.out = bytearray([1 if tls else 0])
        self.out += be32(cflags)
        self.ext = False
        self.cookie = 0

    def opt(self, opt, data=b""):
        self.out += be64(IHAVEOPT) + be32(opt) + be32(len(data)) + data
        return self

    def info(self, opt, name, infos=(INFO_BLOCK_SIZE,)):
        d = string(name) + be16(len(infos)) + b"".join(be16(i) for i in infos)
        return self.opt(opt, d)

    def meta(self, opt, name, queries):
        d = string(name) + be32(len(queries)) + b"".join(string(q) for q in queries)
        return self.opt(opt, d)

    def extended(self):
        self.ext = True
        return self.opt(OPT_EXTENDED)

    def req(self, typ, off=0, length=0, flags=0, payload=b""):
        self.cookie += 1
        if self.ext:
            self.out += (be32(EXT_REQUEST_MAGIC) + be16(flags) + be16(typ) + be64(self.cookie)
                         + be64(off) + be64(length))
        else:
            self.out += (be32(REQUEST_MAGIC) + be16(flags) + be16(typ) + be64(self.cookie)
                         + be64(off) + be32(length))
        self.out += payload
        return self

    def raw(self, b):
        self.out += b
        return self

    def bytes(self):
        return bytes(self.out)


def seeds():
    s = {}

    # A libnbd-like session: structured replies, two contexts, GO, the
    # commands of a backup, writes refused, DISC.
    x = (Session().opt(OPT_STRUCTURED_REPLY).meta(OPT_SET_META, "disk", [BASE, BITMAP])
         .info(OPT_GO, "disk"))
    x.req(CMD_READ, 0, 4096).req(CMD_READ, 65536, 8192, FLAG_DF).req(CMD_READ, 500 * 1024, 65536)
    x.req(CMD_BLOCK_STATUS, 0, 1 << 20).req(CMD_BLOCK_STATUS, 4096, 65536, FLAG_REQ_ONE)
    x.req(CMD_CACHE, 0, 65536).req(CMD_FLUSH)
    x.req(CMD_WRITE, 0, 512, FLAG_FUA, b"\x55" * 512).req(CMD_TRIM, 0, 4096)
    x.req(CMD_WRITE_ZEROES, 0, 4096).req(CMD_DISC)
    s["seed-structured-session"] = x.bytes()

    # QEMU-like: one context, GO on the default export.
    x = (Session().opt(OPT_STRUCTURED_REPLY).meta(OPT_SET_META, "", [BASE]).info(OPT_GO, ""))
    x.req(CMD_BLOCK_STATUS, 0, 1 << 20, FLAG_REQ_ONE).req(CMD_READ, 0, 1 << 20).req(CMD_DISC)
    s["seed-qemu-session"] = x.bytes()

    # Extended headers: every context, the payload filter, 64-bit lengths.
    x = (Session().extended().meta(OPT_LIST_META, "disk", [])
         .meta(OPT_SET_META, "disk", [BASE, BITMAP, DEPTH]).info(OPT_GO, "disk"))
    x.req(CMD_READ, 4096, 65536)
    x.req(CMD_BLOCK_STATUS, 0, 12, FLAG_PAYLOAD_LEN, be64(1 << 20) + be32(2))
    x.req(CMD_BLOCK_STATUS, 0, 16, FLAG_PAYLOAD_LEN, be64(1 << 20) + be32(3) + be32(1))
    x.req(CMD_BLOCK_STATUS, 0, 1 << 20)
    x.req(CMD_BLOCK_STATUS, 950 * 1024, 4096)
    x.req(CMD_WRITE, 0, 16, FLAG_PAYLOAD_LEN, b"\x01" * 16)
    x.req(CMD_READ, 0, 16, FLAG_PAYLOAD_LEN, b"\x02" * 16)
    x.req(CMD_DISC)
    s["seed-extended-session"] = x.bytes()

    # The big export: lengths over 4 GiB, compact and extended.
    x = (Session().opt(OPT_STRUCTURED_REPLY).meta(OPT_SET_META, "big", [BASE, DEPTH])
         .info(OPT_GO, "big"))
    x.req(CMD_BLOCK_STATUS, 0, 0xFFFFFFFF).req(CMD_BLOCK_STATUS, (1 << 42) - 4096, 4096)
    x.req(CMD_READ, (1 << 42) - 65536, 65536).req(CMD_DISC)
    s["seed-big-compact"] = x.bytes()
    x = (Session().extended().meta(OPT_SET_META, "big", [BASE, BITMAP, DEPTH])
         .info(OPT_GO, "big"))
    x.req(CMD_BLOCK_STATUS, 0, 1 << 41).req(CMD_BLOCK_STATUS, 0, 12, FLAG_PAYLOAD_LEN,
                                            be64(1 << 42) + be32(3))
    x.req(CMD_READ, 1 << 33, 1 << 20).req(CMD_DISC)
    s["seed-big-extended"] = x.bytes()

    # Listing and asking: LIST, INFO with every info, LIST_META with
    # wildcards, an unknown export, an unknown option, ABORT.
    x = (Session().opt(OPT_LIST).info(OPT_INFO, "disk", (INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE))
         .info(OPT_INFO, "nope").opt(OPT_STRUCTURED_REPLY)
         .meta(OPT_LIST_META, "disk", ["qemu:", "base:"])
         .meta(OPT_LIST_META, "big", ["qemu:dirty-bitmap:"])
         .opt(0x4242, b"junk").opt(OPT_ABORT))
    s["seed-list-info"] = x.bytes()

    # Old clients: EXPORT_NAME with and without NO_ZEROES, simple replies.
    x = Session(cflags=C_FIXED).opt(OPT_EXPORT_NAME, b"disk")
    x.req(CMD_READ, 0, 4096).req(CMD_READ, 600 * 1024, 4096).req(CMD_BLOCK_STATUS, 0, 4096)
    x.req(CMD_READ, 0, 4096, FLAG_DF).req(CMD_DISC)
    s["seed-export-name-simple"] = x.bytes()
    x = Session(cflags=0).opt(OPT_EXPORT_NAME, b"")
    x.req(CMD_READ, 65536, 65536).req(CMD_DISC)
    s["seed-oldstyle-client"] = x.bytes()
    x = Session().opt(OPT_STRUCTURED_REPLY).opt(OPT_EXPORT_NAME, b"big")
    x.req(CMD_READ, 0, 4096).req(CMD_DISC)
    s["seed-export-name-structured"] = x.bytes()

    # Without structured replies: GO, simple replies, BLOCK_STATUS refused.
    x = Session().info(OPT_GO, "disk")
    x.req(CMD_READ, 0, 131072).req(CMD_BLOCK_STATUS, 0, 4096).req(CMD_DISC)
    s["seed-simple-go"] = x.bytes()

    # Refusals in the handshake: repeated and out-of-order options.
    x = (Session().meta(OPT_SET_META, "disk", [BASE]).opt(OPT_STRUCTURED_REPLY)
         .opt(OPT_STRUCTURED_REPLY).opt(OPT_STARTTLS).extended().opt(OPT_STRUCTURED_REPLY)
         .meta(OPT_SET_META, "disk", [BASE, "qemu:", "base:", BASE])
         .meta(OPT_SET_META, "big", [BITMAP]).info(OPT_GO, "disk"))
    x.req(CMD_BLOCK_STATUS, 0, 65536).req(CMD_DISC)
    s["seed-refusals"] = x.bytes()

    # Requests out of bounds and malformed, after a good GO.
    x = (Session().opt(OPT_STRUCTURED_REPLY).meta(OPT_SET_META, "disk", [BASE])
         .info(OPT_GO, "disk"))
    x.req(CMD_READ, 0, (32 << 20) + 1).req(CMD_READ, (1 << 20) - 100, 4096)
    x.req(CMD_BLOCK_STATUS, (1 << 20) - 512, 0xFFFFFFFF).req(CMD_BLOCK_STATUS, 1 << 20, 1)
    x.req(CMD_READ, 0, 4096, 0x8000).req(0x99, 0, 4096).req(CMD_CACHE, 1 << 20, 1)
    x.req(CMD_READ, 0, 0).req(CMD_WRITE, 0, 8, 0, b"12345678").req(CMD_DISC)
    s["seed-bad-requests"] = x.bytes()

    # TLS required: refusals before STARTTLS, then STARTTLS and a client
    # hello that goes nowhere.
    x = (Session(tls=True).opt(OPT_LIST).info(OPT_GO, "disk").opt(OPT_STRUCTURED_REPLY)
         .opt(OPT_STARTTLS).raw(bytes.fromhex("160301002a0100002603030000")))
    s["seed-tls-required"] = x.bytes()
    x = Session(tls=True).opt(OPT_EXPORT_NAME, b"disk")
    s["seed-tls-export-name"] = x.bytes()

    # Requests before GO; an option too long.
    x = Session().raw(be32(REQUEST_MAGIC) + bytes(24))
    s["seed-request-in-handshake"] = x.bytes()
    x = Session().raw(be64(IHAVEOPT) + be32(OPT_GO) + be32(0xFFFFFFFF) + b"x" * 64)
    s["seed-option-too-long"] = x.bytes()
    return s


def main():
    top = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus")
    d = os.path.join(top, "fuzz_server")
    os.makedirs(d, exist_ok=True)
    for name in os.listdir(d):
        if name.startswith("seed-"):
            os.unlink(os.path.join(d, name))
    for name, data in sorted(seeds().items()):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    print("wrote %d seeds into %s" % (len(seeds()), d))


if __name__ == "__main__":
    main()
