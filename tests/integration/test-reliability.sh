#!/bin/bash
# The short version of the reliability matrix (scripts/reliability.sh
# --short; make reliability runs the long one into docs/RELIABILITY.md):
# nbdkit's error filter at 1%, 10% and 50% on pread and extents, and
# flipped, truncated, deleted and swapped packs; every trial must hold.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
requires nbdkit --version
requires qemu-nbd --version

TMPDIR=$testdir NBDVAULT=$NBDVAULT run "$here/../../scripts/reliability.sh" --short --out rel.md ||
    { cat rel.md 2>/dev/null; fail "a trial of the reliability matrix did not hold"; }
cat rel.md
[ "$(grep -c '^| [a-z]' rel.md)" -ge 10 ] || fail "the matrix has fewer than 10 rows"
echo OK
