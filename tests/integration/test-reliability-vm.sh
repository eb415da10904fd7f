#!/bin/bash
# requires: rgw
# requires: libvirtd
# The short version of the reliability matrix's rows that need the suite's
# heavy servers (scripts/reliability.sh --short vm-kill s3): kill -9 of a
# running VM's backup, through QMP (a bare QEMU) and through libvirt, the
# next backup incremental and whole; S3 faults through s3proxy.py before
# the suite's Ceph RGW.  Every trial must hold.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
requires qemu-nbd --version
requires qemu-system-x86_64 --version
requires virsh --version

# The libvirt row's QEMU runs as libvirt's user: the images below must be
# reachable by it.
chmod 0711 "$testdir"
TMPDIR=$testdir NBDVAULT=$NBDVAULT run "$here/../../scripts/reliability.sh" --short --out rel.md vm-kill s3 ||
    { cat rel.md 2>/dev/null; fail "a trial of the reliability matrix did not hold"; }
cat rel.md
[ "$(grep -Ec '^\| .* \| [0-9]+ \| [0-9]+ \| ' rel.md)" -ge 8 ] || fail "the matrix has fewer than 8 rows"
echo OK
