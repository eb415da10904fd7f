#!/usr/bin/env python3
"""Writes seeds for fuzz_manifest: manifests (docs/FORMAT.md, "Manifest")
of a full and an incremental point, and damaged copies.  Compressed with
the zstd command (its frames carry the content size).
Usage: make-manifest-corpus.py DIR"""
import hashlib, json, os, struct, subprocess, sys, tempfile

def body(full, runs, chunks, packs):
    hdr = {"uid": "20261206T120000Z-0123456789abcdef", "gen": 1,
           "parent": "" if full else "20261205T120000Z-fedcba9876543210",
           "disk": "vm1/vda", "kind": "full" if full else "incremental",
           "started": 1796500000.25, "finished": 1796500009.5, "disk_size": 10 * 65536 + 100,
           "chunk_size": 65536, "source_uri": "nbd+unix:///vda?socket=/s", "bitmap": "b0",
           "source_kind": "nbd", "vm_uuid": "", "checkpoint": "", "full_reason": "",
           "bytes_planned": 1, "bytes_read": 1, "bytes_stored": 1, "chunks_new": 1,
           "chunks_reused": 0, "host": "h"}
    h = json.dumps(hdr).encode()
    out = struct.pack(">II", 1, len(h)) + h + struct.pack(">I", len(packs))
    for name, size in packs:
        out += bytes([len(name)]) + name.encode() + struct.pack(">Q", size)
    out += struct.pack(">I", len(chunks))
    for i, (pack, off) in enumerate(chunks):
        out += bytes([i + 1]) * 32 + struct.pack(">IQIIBI", pack, off, 900, 65536, 1, 7)
    out += struct.pack(">Q", len(runs))
    for first, count, chunk in runs:
        out += struct.pack(">QQI", first, count, chunk)
    return out + hashlib.sha256(out).digest()

def obj(b):
    with tempfile.NamedTemporaryFile() as f:
        f.write(b)
        f.flush()
        z = subprocess.run(["zstd", "-q", "-c", f.name], check=True, stdout=subprocess.PIPE).stdout
    return b"NBDVMAN1" + z

d = sys.argv[1]
os.makedirs(d, exist_ok=True)
packs = [("ab/abcdef.pack", 100000), ("cd/cdef.pack", 200000)]
seeds = {
    "full": obj(body(True, [(0, 2, 0), (3, 4, 0xFFFFFFFF), (9, 2, 1)], [(0, 16), (1, 16)], packs)),
    "incremental": obj(body(False, [(5, 1, 0)], [(1, 1000)], packs)),
    "empty": obj(body(True, [], [], [])),
}
seeds["bad-sum"] = seeds["full"][:-3] + bytes([seeds["full"][-3] ^ 1]) + seeds["full"][-2:]
seeds["truncated"] = seeds["incremental"][:40]
for name, data in seeds.items():
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
