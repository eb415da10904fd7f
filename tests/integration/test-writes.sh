#!/bin/bash
# Writes through nbdcore to a writable qemu-nbd export: pwrite (with and
# without FUA), zero (fast, nohole, fua), trim, cache and flush, the result
# checked with qemu-img compare against a raw reference built with dd; an
# upload and a download through a 4-connection pool (--shared=4: 4
# connections; the default --shared=1 offers no multi-conn: 1 connection).
# nbdkit's log filter shows that each command carries the flags asked for.
. "$(dirname "$0")/lib.sh"
requires qemu-img --version
requires qemu-nbd --version
requires nbdkit --filter=log memory 1M --version

# put FILE OFFSET SRC / put_zero FILE OFFSET LENGTH: the reference edits.
put () { dd if="$3" of="$1" bs=64k seek="$2" oflag=seek_bytes conv=notrunc status=none; }
put_zero () {
    head -c "$3" /dev/zero > zeros.tmp
    put "$1" "$2" zeros.tmp
}
# Time limit for one client command: a pool that opened more connections
# than a --shared=1 qemu-nbd serves would wait for ever.
tool () { run timeout 60 $NBDCORE_TOOL "$@"; }

M=1048576
head -c $((16 * M)) /dev/urandom > disk.img
cp disk.img ref.raw
start_qemu_nbd rw.sock -t -f raw --discard=unmap --shared=4 disk.img
uri="nbd+unix:///?socket=$testdir/rw.sock"

head -c 4096 /dev/urandom > a.bin
head -c $M /dev/urandom > b.bin
tool pwrite "$uri" 12345 a.bin fua;                put ref.raw 12345 a.bin
tool pwrite "$uri" $((2 * M)) b.bin;               put ref.raw $((2 * M)) b.bin
tool zero "$uri" $((3 * M)) 65536 fast;            put_zero ref.raw $((3 * M)) 65536
tool zero "$uri" $((4 * M + 100)) 1000 nohole;     put_zero ref.raw $((4 * M + 100)) 1000
tool zero "$uri" $((5 * M)) $M nohole fua;         put_zero ref.raw $((5 * M)) $M
tool zero "$uri" $((6 * M)) $M;                    put_zero ref.raw $((6 * M)) $M
# qemu-nbd --discard=unmap punches a hole for a trim of a raw file, so the
# range reads back as zeroes.
tool trim "$uri" $((8 * M)) $M;                    put_zero ref.raw $((8 * M)) $M
tool cache "$uri" 0 $((16 * M))
tool flush "$uri"

run qemu-img compare -f raw -F raw ref.raw "$uri" || fail "export differs from the reference"
cmp ref.raw disk.img || fail "the image file differs from the reference after flush"
# Reading back through nbdcore too, unaligned across an edited edge.
tool pread "$uri" $((4 * M)) 2000 > piece
cmp piece <(tail -c +$((4 * M + 1)) ref.raw | head -c 2000) || fail "pread after writes differs"

# Past the end: refused.
expect_fail 1 'past the end|ENOSPC|EINVAL' $NBDCORE_TOOL pwrite "$uri" $((16 * M - 100)) a.bin
cmp ref.raw disk.img || fail "a refused write changed the image"

# ---- the pool, multi-conn -------------------------------------------------
head -c $((16 * M)) /dev/urandom > up.bin
tool upload "$uri" up.bin 4 > up.out
grep -qx 'connections: 4' up.out || fail "upload with --shared=4: $(cat up.out)"
run qemu-img compare -f raw -F raw up.bin "$uri" || fail "uploaded export differs"
cmp up.bin disk.img || fail "uploaded image file differs"
tool download "$uri" down.bin 4 > down.out
grep -qx 'connections: 4' down.out || fail "download with --shared=4: $(cat down.out)"
cmp up.bin down.bin || fail "pool download differs from the upload"
stop_server "$qemu_nbd_pid"

# ---- no multi-conn (--shared=1): the pool stays at one connection -------
head -c $((16 * M)) /dev/urandom > up1.bin
start_qemu_nbd one.sock -t -f raw disk.img
uri1="nbd+unix:///?socket=$testdir/one.sock"
$NBDVAULT info --json "$uri1" > one.json
"$PYTHON" -c 'import json; e = json.load(open("one.json"))["exports"][0]
assert e["can_multi_conn"] is False, e'
tool upload "$uri1" up1.bin 4 > up1.out
grep -qx 'connections: 1' up1.out || fail "upload with --shared=1: $(cat up1.out)"
tool download "$uri1" down1.bin 4 > down1.out
grep -qx 'connections: 1' down1.out || fail "download with --shared=1: $(cat down1.out)"
cmp up1.bin down1.bin || fail "single-connection download differs from the upload"
run qemu-img compare -f raw -F raw up1.bin "$uri1" || fail "single-connection upload differs"

# ---- the flags on the wire, as nbdkit's log filter records them ---------
start_nbdkit log.sock --filter=log memory 16M logfile="$testdir/nbdkit.log"
luri="nbd+unix:///?socket=$testdir/log.sock"
tool pwrite "$luri" 12345 a.bin fua
tool pwrite "$luri" 0 a.bin
tool zero "$luri" 65536 4096 fast
tool zero "$luri" 131072 4096 nohole fua
tool zero "$luri" 196608 4096
tool trim "$luri" 0 4096
tool cache "$luri" 0 4096
tool flush "$luri"
tool upload "$luri" up.bin 4 > log-up.out
grep -qx 'connections: 4' log-up.out || fail "upload to nbdkit memory: $(cat log-up.out)"
cat nbdkit.log
logged () { grep -Eq "$1" nbdkit.log || fail "nbdkit log has no line matching /$1/"; }
logged ' Write id=[0-9]+ offset=0x3039 count=0x1000 fua=1 '
logged ' Write id=[0-9]+ offset=0x0 count=0x1000 fua=0 '
logged ' Zero id=[0-9]+ offset=0x10000 count=0x1000 trim=1 fua=0 fast=1 '
logged ' Zero id=[0-9]+ offset=0x20000 count=0x1000 trim=0 fua=1 fast=0 '
logged ' Zero id=[0-9]+ offset=0x30000 count=0x1000 trim=1 fua=0 fast=0 '
logged ' Trim id=[0-9]+ offset=0x0 count=0x1000 '
logged ' Cache id=[0-9]+ offset=0x0 count=0x1000 '
logged ' Flush id=[0-9]+ '
# spread_over_4 OP: the last pool transfer sent OP (Write or Read) on each
# of its 4 connections; for Write, the FLUSH came after the last write's
# reply (the multi-conn consistency rule).
spread_over_4 ()
{
    "$PYTHON" - nbdkit.log "$1" <<'EOF' || fail "the last pool transfer did not use 4 connections ($1)"
import re, sys
lines = open(sys.argv[1]).read().splitlines()
op = sys.argv[2]
conns = sorted({int(m.group(1)) for l in lines
                for m in [re.search(r"connection=(\d+) Connect ", l)] if m})[-4:]
users = set()
last_reply = flush = None
for i, l in enumerate(lines):
    m = re.search(r"connection=(\d+) (\.\.\.)?(Write|Read|Flush) id=", l)
    if not m or int(m.group(1)) not in conns:
        continue
    if m.group(3) == op and not m.group(2):
        users.add(int(m.group(1)))
    if m.group(3) == op and m.group(2):
        last_reply = i
    if m.group(3) == "Flush" and not m.group(2):
        flush = i
assert len(users) == 4, (op, "used connections", users, "of", conns)
if op == "Write":
    assert flush is not None and flush > last_reply, (last_reply, flush)
EOF
}
spread_over_4 Write
tool download "$luri" log-down.bin 4 > /dev/null
spread_over_4 Read
cmp up.bin log-down.bin || fail "download from nbdkit memory differs from the upload"
