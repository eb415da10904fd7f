#!/usr/bin/python3
"""abuse-libnbd.py URI REFERENCE: a real NBD client (libnbd, strict mode
off, so that it sends what a conforming client never would) against a
read-only export whose bytes are the file REFERENCE.  Each case prints
"ok NAME" or "FAIL NAME: why"; after each, a second connection must still
read the right bytes.  Exit 0 when every case held.

Cases: a read, a write, a trim and a cache past the end (EINVAL, or
ENOSPC for the write); a zero-length read; an unaligned read (the right
bytes, or EINVAL when the server asked for alignment); a read of 64 MiB
(over the 32 MiB the spec lets a server refuse: the right bytes or
EINVAL/EOVERFLOW); a write, a trim and a write of zeros to the read-only
export (EPERM); unknown command flags (EINVAL); block status of length
2^32-1 (extents inside the export, or EINVAL past its end); 32 reads in
flight and the connection cut; 200 connections opened at once."""
import errno
import hashlib
import sys
import time

import nbd

URI, REF = sys.argv[1], sys.argv[2]
with open(REF, "rb") as f:
    f.seek(0, 2)
    SIZE = f.tell()


def ref(off, n):
    with open(REF, "rb") as f:
        f.seek(off)
        return f.read(n)


def handle(meta=False):
    h = nbd.NBD()
    h.set_strict_mode(0)
    if meta:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    # Connected by hand, with a deadline: a server that never answers the
    # handshake (a full one that queues clients) must not hang the case.
    h.aio_connect_uri(URI)
    deadline = time.monotonic() + 20
    while not h.aio_is_ready():
        if h.aio_is_dead() or h.aio_is_closed():
            raise nbd.Error("the connection died in the handshake", errno.ECONNRESET)
        if time.monotonic() > deadline:
            raise nbd.Error("no handshake in 20 s", errno.ETIMEDOUT)
        h.poll(1000)
    return h


def err_of(fn):
    """errno of an nbd.Error raised by fn, or None when fn succeeded."""
    try:
        fn()
    except nbd.Error as e:
        return e.errnum
    return None


failed = 0


def case(name, fn):
    global failed
    try:
        why = fn()
    except Exception as e:  # the client died: the server broke the protocol
        why = "%s: %s" % (type(e).__name__, e)
    if why is None:
        try:
            h = handle()
            n = min(SIZE, 1 << 20)
            if h.pread(n, SIZE - n) != ref(SIZE - n, n):
                why = "a second client read other bytes afterwards"
            h.shutdown()
        except nbd.Error as e:
            why = "a second client is not served afterwards: %s" % e
    if why is None:
        print("ok", name)
    else:
        failed = 1
        print("FAIL %s: %s" % (name, why))
    sys.stdout.flush()


def want(name, h, fn, codes, note=""):
    """None when fn fails with one of codes (errno numbers)."""
    e = err_of(fn)
    if e in codes:
        return None
    names = "/".join(errno.errorcode.get(c, str(c)) for c in codes)
    got = "success" if e is None else errno.errorcode.get(e, str(e))
    return "%s: %s, expected %s%s" % (name, got, names, note)


def past_end():
    h = handle()
    why = (want("read", h, lambda: h.pread(4096, SIZE), [errno.EINVAL])
           or want("read across the end", h, lambda: h.pread(8192, SIZE - 4096), [errno.EINVAL])
           or want("write", h, lambda: h.pwrite(b"x" * 4096, SIZE),
                   [errno.EINVAL, errno.ENOSPC, errno.EPERM])
           or want("trim", h, lambda: h.trim(4096, SIZE), [errno.EINVAL, errno.EPERM])
           or want("cache", h, lambda: h.cache(4096, SIZE + 4096), [errno.EINVAL])
           or want("read at 2^63", h, lambda: h.pread(512, 1 << 63), [errno.EINVAL]))
    h.shutdown()
    return why


def zero_length():
    h = handle()
    e = err_of(lambda: h.pread(0, 0))
    h.shutdown()
    return None if e in (None, errno.EINVAL) else "errno %d" % e


def unaligned():
    h = handle()
    try:
        got = h.pread(3, 4097)
    except nbd.Error as e:
        e = e.errnum
        minimum = h.get_block_size(nbd.SIZE_MINIMUM)
        h.shutdown()
        if e == errno.EINVAL and minimum > 1:
            return None
        return "EINVAL without a minimum block size of its own" if e == errno.EINVAL \
            else "errno %s" % e
    h.shutdown()
    return None if got == ref(4097, 3) else "other bytes"


def huge_read():
    n = 64 << 20
    if SIZE < n:
        return "the export is smaller than 64 MiB"
    h = handle()
    try:
        got = h.pread(n, 0)
    except nbd.Error as e:
        h.shutdown()
        return None if e.errnum in (errno.EINVAL, errno.EOVERFLOW) else "errno %s" % e.errnum
    h.shutdown()
    return None if hashlib.sha256(got).digest() == hashlib.sha256(ref(0, n)).digest() \
        else "other bytes"


def read_only():
    h = handle()
    why = (want("write", h, lambda: h.pwrite(b"w" * 4096, 0), [errno.EPERM])
           or want("trim", h, lambda: h.trim(4096, 0), [errno.EPERM])
           or want("write zeroes", h, lambda: h.zero(4096, 0), [errno.EPERM]))
    if why is None and h.pread(4096, 0) != ref(0, 4096):
        why = "the export changed"
    h.shutdown()
    return why


def bad_flags():
    h = handle()
    why = want("read with flag 0x8000", h, lambda: h.pread(4096, 0, flags=0x8000), [errno.EINVAL])
    h.shutdown()
    return why


def huge_status():
    h = handle(meta=True)
    seen = []

    def cb(metacontext, offset, entries, err):
        seen.append((offset, list(entries)))
        return 0

    length = (1 << 32) - 1
    e = err_of(lambda: h.block_status(length, 0, cb))
    h.shutdown()
    if e is not None:
        return None if e == errno.EINVAL and length > SIZE else "errno %d" % e
    end = 0
    for off, ents in seen:
        end = max(end, off + sum(ents[0::2]))
    if end > min(SIZE, length) or not seen:
        return "extents to %d of an export of %d" % (end, SIZE)
    return None


def cut_in_flight():
    h = handle()
    for i in range(32):
        h.aio_pread(nbd.Buffer(1 << 20), (i << 20) % max(SIZE - (1 << 20), 1))
    del h  # no disconnect: the handle closes the socket
    return None


def many():
    hs = []
    try:
        for _ in range(200):
            hs.append(handle())
    except nbd.Error:
        pass  # a full server may refuse; the case checks who is served
    why = None
    try:
        if hs[-1].pread(4096, 0) != ref(0, 4096):
            why = "the newest of %d connections read other bytes" % len(hs)
    except nbd.Error as e:
        why = "the newest of %d connections is not served: %s" % (len(hs), e)
    del hs[:]
    return why


case("past-end", past_end)
case("zero-length", zero_length)
case("unaligned", unaligned)
case("huge-read", huge_read)
case("read-only", read_only)
case("bad-flags", bad_flags)
case("huge-status", huge_status)
case("cut-in-flight", cut_in_flight)
case("many-connections", many)
sys.exit(failed)
