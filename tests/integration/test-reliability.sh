#!/bin/bash
# The short version of the reliability matrix (scripts/reliability.sh
# --short; make reliability runs the long one into docs/RELIABILITY.md),
# its rows on local servers: nbdkit's error filter at 1%, 10% and 50% on
# pread and extents; flipped, truncated, deleted and swapped packs; kill -9
# of qemu-nbd during a backup; kill -9 of nbdvault during a backup, prune,
# gc or copy; two of backup, prune, gc, restore and serve at once in every
# pair; five backups of one disk at once; a scripted hostile NBD server
# (handshake and replies, stalls); TLS refusals; a full file system;
# valgrind (not for a sanitizer build); serve against hostile clients and
# libnbd with its strict mode off.  test-reliability-vm has the rows of
# running VMs and of S3.  Every trial must hold.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
requires nbdkit --version
requires qemu-nbd --version
requires sqlite3 --version

TMPDIR=$testdir NBDVAULT=$NBDVAULT run "$here/../../scripts/reliability.sh" --short --out rel.md \
    errors damage server-kill kill pairs same-disk hostile tls full valgrind abuse ||
    { cat rel.md 2>/dev/null; fail "a trial of the reliability matrix did not hold"; }
cat rel.md
[ "$(grep -Ec '^\| .* \| [0-9]+ \| [0-9]+ \| ' rel.md)" -ge 21 ] || fail "the matrix has fewer than 21 rows"
echo OK
