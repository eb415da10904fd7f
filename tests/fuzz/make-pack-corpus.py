#!/usr/bin/env python3
"""Writes seeds for fuzz_pack: whole packs (docs/FORMAT.md, "Packs") of
raw chunks, and damaged copies of them.  Usage: make-pack-corpus.py DIR"""
import hashlib, os, struct, sys, zlib

def entry(plain):
    h = hashlib.sha256(plain).digest()
    crc = zlib.crc32(plain)
    hdr = b"NBDE" + h + bytes([0, 0, 0, 0]) + struct.pack(">III", len(plain), len(plain), crc)
    hdr += struct.pack(">I", zlib.crc32(hdr))
    return hdr + plain, (h, len(plain), crc)

def pack(chunks):
    out = b"NBDVPACK" + struct.pack(">II", 1, 0)
    recs = []
    for c in chunks:
        off = len(out)
        e, (h, n, crc) = entry(c)
        out += e
        recs.append(h + bytes([0, 0, 0, 0]) + struct.pack(">IIIQ", n, n, crc, off))
    index_off = len(out)
    index = b"NBDI" + struct.pack(">I", len(recs)) + b"".join(recs)
    out += index + struct.pack(">QII", index_off, len(recs), zlib.crc32(index)) + b"NBDVPIDX"
    return out

d = sys.argv[1]
os.makedirs(d, exist_ok=True)
seeds = {
    "empty": pack([]),
    "one": pack([b"hello, pack"]),
    "three": pack([b"a" * 100, bytes(range(256)), b""]),
}
p = seeds["three"]
seeds["cut-entry"] = p[:60]
seeds["cut-index"] = p[:-30]
seeds["flip-data"] = p[:80] + bytes([p[80] ^ 1]) + p[81:]
seeds["flip-footer"] = p[:-10] + bytes([p[-10] ^ 0x40]) + p[-9:]
seeds["trailing"] = p + b"x"
for name, body in seeds.items():
    for check in (0, 1):
        with open(os.path.join(d, "%s-%d" % (name, check)), "wb") as f:
            f.write(bytes([check]) + body)
