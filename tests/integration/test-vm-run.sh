#!/bin/bash
# requires: libvirtd
# nbdvault run with a job file of three sources - a libvirt domain, a QEMU
# over QMP and a qemu-nbd export - and one broken (a domain that does not
# exist): the three are backed up and pruned, the exit code is 1, and the
# summary names the failure.  A second run takes incrementals of all three;
# each disk's newest point restores bit-identically.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/backup-lib.sh"
. "$here/vm-lib.sh"
requires virsh --version
requires qemu-system-x86_64 --version

M=1048576
dom=nbdvault-run-$$
repo=$testdir/repo
work=$testdir/work
mkdir -m 0711 -p "$work"
for i in 0 1 2; do
    qemu-img create -q -f qcow2 d$i.qcow2 $((8 * M))
    qemu-io -f qcow2 -c "write -P 0x1$i 0 2M" d$i.qcow2 >/dev/null
    qemu-img convert -O raw d$i.qcow2 ref-$i.raw
done
qemu-img bitmap --add d2.qcow2 b0
# QMP: disk 0 of the QEMU vm "qvm"; libvirt: vda of $dom; qemu-nbd: d2.
start_qmp_vm qvm d0.qcow2
start_libvirt_vm "$dom" d1.qcow2
start_qemu_nbd n.sock -t -r -f qcow2 -B b0 --shared=4 d2.qcow2
nbd_pid=$qemu_nbd_pid

cat > job.conf <<CONF
[defaults]
repo = $repo
work-dir = $work
keep-last = 1

[vm qvm]
qmp = $testdir/mon.sock

[vm lv]
libvirt = $dom

[vm plain]
uri = nbd+unix:///?socket=$testdir/n.sock
bitmap = b0

[vm gone]
libvirt = no-such-domain-$$
CONF

rc=0
"$NBDVAULT" run --config job.conf > sum1.txt 2> log1.txt || rc=$?
cat sum1.txt log1.txt
[ "$rc" = 1 ] || fail "run with a broken source exited $rc, not 1"
grep -q "^qvm: ok: 1 disk(s) (1 full, 0 incremental)" sum1.txt || fail "qvm not backed up"
grep -q "^lv: ok: 1 disk(s) (1 full, 0 incremental)" sum1.txt || fail "lv not backed up"
grep -q "^plain: ok: 1 disk(s) (1 full, 0 incremental)" sum1.txt || fail "plain not backed up"
grep -q "^gone: FAILED: .*no-such-domain-$$.*[Dd]omain not found" sum1.txt || fail "the summary does not name the broken domain"
grep -q "^total: 4 source(s), 3 succeeded, 1 failed" sum1.txt || fail "no total"

# Guest writes, a second run of the three good ones: incrementals.
guest_write 0 "write -P 0x21 $((4 * M)) 64k"
lv_write "$dom" 0 "write -P 0x22 $((5 * M)) 64k" 1
stop_server "$nbd_pid"
qemu-io -f qcow2 -c "write -P 0x23 $((6 * M)) 64k" d2.qcow2 >/dev/null
qemu-io -f raw -c "write -P 0x23 $((6 * M)) 64k" ref-2.raw >/dev/null
start_qemu_nbd n.sock -t -r -f qcow2 -B b0 --shared=4 d2.qcow2
run "$NBDVAULT" run --config job.conf --only qvm --only lv --only plain --json > sum2.json \
    || fail "the second run failed"
cat sum2.json
"$PYTHON" - sum2.json <<'PY' || fail "second run's JSON"
import json, sys
v = json.load(open(sys.argv[1]))
assert [o["name"] for o in v] == ["qvm", "lv", "plain"], v
for o in v:
    assert o["ok"], o
    assert [d["kind"] for d in o["disks"]] == ["incremental"], o
    assert o["pruned"] == 1, o
PY
for pair in "qvm/disk0 0" "$dom/vda 1" "plain 2"; do
    set -- $pair
    run "$NBDVAULT" restore --repo "$repo" --disk "$1" --output r.raw || fail "restore $1"
    cmp r.raw ref-$2.raw || fail "$1 restored differs from the disk"
done
