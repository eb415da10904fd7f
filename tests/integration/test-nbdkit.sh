#!/bin/bash
# Against nbdkit: the memory and sparse-random plugins map as nbdinfo
# --map does, and a 4-connection pool download equals nbdcopy's copy (and,
# for memory, the data written); a file of 1000003 bytes backs up and
# restores bit-identically (also to /dev/null); the error filter makes pread, download and
# map fail with exit 1 and the I/O error named, leaving no output file; the
# delay filter gives slow but correct replies.
. "$(dirname "$0")/lib.sh"
requires nbdkit memory --version
requires nbdkit sparse-random --version
requires nbdkit file --version
requires nbdkit --filter=error memory 1M --version
requires nbdkit --filter=delay memory 1M --version
requires nbdinfo --version
requires nbdcopy --version
requires qemu-io --version

# ---- memory, filled with a pattern through QEMU's NBD client -------------
start_nbdkit mem.sock memory 64M
mem="nbd+unix:///?socket=$testdir/mem.sock"
qemu-io -f raw -c 'write -P 0x33 1M 3M' -c 'write -P 0x44 40M 64k' -c 'write -P 0x55 12345 1' "$mem" >/dev/null

nbdinfo --map "$mem" > mem.nbdinfo
run $NBDVAULT map "$mem" > mem.nbdvault
cat mem.nbdvault
diff -u mem.nbdinfo mem.nbdvault || fail "map of memory differs from nbdinfo --map"
grep -Eq '^ +41943040 +65536 +0  data$' mem.nbdvault || fail "map misses the data at 40M"

# The same bytes, built independently with dd.
truncate -s 64M want.raw
head -c $((3 << 20)) /dev/zero | tr '\0' '\063' | dd of=want.raw bs=1M seek=1 conv=notrunc status=none
head -c 65536 /dev/zero | tr '\0' '\104' | dd of=want.raw bs=64k seek=640 conv=notrunc status=none
printf '\125' | dd of=want.raw bs=1 seek=12345 conv=notrunc status=none

run $NBDCORE_TOOL download "$mem" mem.pool 4 > pool.out
grep -qx 'connections: 4' pool.out || fail "nbdkit memory offers multi-conn, but: $(cat pool.out)"
cmp want.raw mem.pool || fail "pool download of memory differs from what was written"
nbdcopy "$mem" mem.nbdcopy
cmp mem.nbdcopy mem.pool || fail "pool download differs from nbdcopy"
# Unaligned single reads across the pattern's edges.
for r in "12340 10" "$(((1 << 20) - 3)) 70000" "$(((4 << 20) - 5000)) 10000"; do
    set -- $r
    run $NBDCORE_TOOL pread "$mem" "$1" "$2" > piece
    cmp piece <(tail -c +$(($1 + 1)) want.raw | head -c "$2") || fail "pread $1+$2 differs"
done

# ---- sparse-random: many extents, data from a seed -----------------------
start_nbdkit sr.sock sparse-random size=256M seed=7 percent=2 runlength=1048576
sr="nbd+unix:///?socket=$testdir/sr.sock"
nbdinfo --map "$sr" > sr.nbdinfo
run $NBDVAULT map "$sr" > sr.nbdvault
diff -u sr.nbdinfo sr.nbdvault || fail "map of sparse-random differs from nbdinfo --map"
[ "$(grep -c ' data$' sr.nbdvault)" -ge 3 ] || fail "sparse-random map has too few data extents"
nbdinfo --map --totals "$sr" > sr.totals.nbdinfo
run $NBDVAULT map --totals "$sr" > sr.totals.nbdvault
diff -u sr.totals.nbdinfo sr.totals.nbdvault || fail "--totals of sparse-random differs"
nbdinfo --map --json "$sr" > sr.json.nbdinfo
run $NBDVAULT map --json "$sr" > sr.json.nbdvault
json_equal sr.json.nbdinfo sr.json.nbdvault || fail "--json map of sparse-random differs"

run $NBDCORE_TOOL download "$sr" sr.pool 4 > pool.out
grep -qx 'connections: 4' pool.out || fail "wanted 4 connections: $(cat pool.out)"
nbdcopy "$sr" sr.nbdcopy
cmp sr.nbdcopy sr.pool || fail "pool download of sparse-random differs from nbdcopy"
# One read inside the data (sparse-random derives a block's byte from the
# request, so an unaligned read would not match: keep it aligned).
off=$(awk '$4 == "data" { print $1 + 4096; exit }' sr.nbdvault)
run $NBDCORE_TOOL pread "$sr" "$off" 100000 > piece
cmp piece <(tail -c +$((off + 1)) sr.nbdcopy | head -c 100000) || fail "pread at $off differs"

# ---- a backup sends reads of at most 256 KiB (QEMU's server faults in new
# memory for each larger one), and its bytes come back ------------------------
start_nbdkit srlog.sock --filter=log sparse-random size=256M seed=7 percent=2 \
    runlength=1048576 logfile="$testdir/sr.log"
run $NBDVAULT backup "nbd+unix:///?socket=$testdir/srlog.sock" --repo "$testdir/srrepo" --disk sr > /dev/null
run $NBDVAULT restore --repo "$testdir/srrepo" --disk sr --output sr.restored > /dev/null
cmp sr.nbdcopy sr.restored || fail "backup of sparse-random does not restore as nbdcopy read it"
grep -o ' Read id=[0-9]* offset=0x[0-9a-f]* count=0x[0-9a-f]*' sr.log |
    sed 's/.*count=//' > sr.counts
[ "$(wc -l < sr.counts)" -ge 16 ] || fail "the log filter saw too few reads: $(wc -l < sr.counts)"
while read -r n; do
    [ $((n)) -le 262144 ] || fail "a read of $((n)) bytes was sent (over 256 KiB)"
done < sr.counts

# ---- an export of an odd size, backed up and restored ---------------------
# 1000003 bytes: the last cell is not a multiple of any block size, so the
# restore's direct writes must fall back for it; the bytes must come back.
head -c 1000003 /dev/urandom > odd.bin
start_nbdkit odd.sock file odd.bin
run $NBDVAULT backup "nbd+unix:///?socket=$testdir/odd.sock" --repo odd.repo --disk odd
run $NBDVAULT restore --repo odd.repo --disk odd --output odd.out
cmp odd.bin odd.out || fail "a disk of 1000003 bytes does not restore bit-identically"
# A special file that cannot sync is a valid target (a read-back test).
run $NBDVAULT restore --repo odd.repo --disk odd --output /dev/null

# ---- the error filter: every read fails with EIO --------------------------
start_nbdkit err.sock --filter=error sparse-random size=64M seed=3 error-pread-rate=100% error=EIO
err="nbd+unix:///?socket=$testdir/err.sock"
# The errno's text first, the NBD name in parentheses.
expect_fail 1 'server failed NBD_CMD_READ 0x0\+4096: Input/output error \(NBD_EIO\)' \
    $NBDCORE_TOOL pread "$err" 0 4096
[ ! -s expect.out ] || fail "a failed pread wrote data"
expect_fail 1 'EIO|Input/output error' $NBDCORE_TOOL download "$err" err.pool 4
[ ! -e err.pool ] || fail "a failed download left an output file"
# Block status is not a read: map still works, and agrees with nbdinfo.
nbdinfo --map "$err" > err.nbdinfo
run $NBDVAULT map "$err" > err.nbdvault
diff -u err.nbdinfo err.nbdvault || fail "map through the error filter differs"

# ... and with failing block status, map fails.
start_nbdkit errx.sock --filter=error memory 64M error-extents-rate=100% error=EIO
expect_fail 1 'NBD_CMD_BLOCK_STATUS 0x0\+[0-9]+: Input/output error \(NBD_EIO\)' \
    $NBDVAULT map "nbd+unix:///?socket=$testdir/errx.sock"
[ ! -s expect.out ] || fail "a failed map printed extents: $(cat expect.out)"

# ---- the delay filter: slow replies, same bytes --------------------------
start_nbdkit slow.sock --filter=delay sparse-random size=64M seed=11 percent=20 runlength=65536 rdelay=50ms
slow="nbd+unix:///?socket=$testdir/slow.sock"
start=$(date +%s%N)
run $NBDCORE_TOOL download "$slow" slow.pool 4 > pool.out
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "download through the delay filter: ${elapsed_ms} ms"
[ "$elapsed_ms" -ge 50 ] || fail "the delay filter did not delay (${elapsed_ms} ms)"
nbdcopy "$slow" slow.nbdcopy
cmp slow.nbdcopy slow.pool || fail "download through the delay filter differs"
run $NBDCORE_TOOL pread "$slow" 1000 70000 > piece
cmp piece <(tail -c +1001 slow.nbdcopy | head -c 70000) || fail "delayed pread differs"
nbdinfo --map "$slow" > slow.nbdinfo
run $NBDVAULT map "$slow" > slow.nbdvault
diff -u slow.nbdinfo slow.nbdvault || fail "map through the delay filter differs"
