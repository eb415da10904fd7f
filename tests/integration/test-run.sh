#!/bin/bash
# nbdvault run: a job file of NBD sources, one of them broken: the others
# are backed up and pruned, the exit code is 1 and the summary names the
# failure; every point restores bit-identically; a bad file is exit 2 with
# the line named; a second run on the same repository is refused while the
# first holds it.  (test-vm-run covers libvirt and QMP sources.)
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/backup-lib.sh"
requires qemu-nbd --version
requires nbdkit --version

M=1048576
repo=$testdir/repo
for d in a b; do
    qemu-img create -q -f qcow2 $d.qcow2 $((16 * M))
    qemu-io -f qcow2 -c "write -P 0x3$d 0 $((3 * M))" $d.qcow2 >/dev/null 2>&1 ||
        qemu-io -f qcow2 -c "write -P 0x31 0 $((3 * M))" $d.qcow2 >/dev/null
    qemu-img bitmap --add $d.qcow2 b0
done
start_qemu_nbd a.sock -t -r -f qcow2 -B b0 --shared=4 a.qcow2
pid_a=$qemu_nbd_pid
start_qemu_nbd b.sock -t -r -f qcow2 -B b0 b.qcow2
pid_b=$qemu_nbd_pid

cat > job.conf <<CONF
; the nightly job
[defaults]
repo = $repo
keep-last = 2
gc = daily

[vm alpha]
uri = nbd+unix:///?socket=$testdir/a.sock
bitmap = b0

[vm beta]
uri = nbd+unix:///?socket=$testdir/b.sock
bitmap = b0
disk = beta-disk
connections = 1

[vm broken]
uri = nbd+unix:///?socket=$testdir/missing.sock
CONF

# --dry-run: the plan, nothing done.
run "$NBDVAULT" run --config job.conf --dry-run > plan.txt || fail "dry run failed"
cat plan.txt
grep -q "^alpha: would back up nbd+unix:///?socket=$testdir/a.sock as disk alpha, bitmap b0 into $repo; then prune keep-last=2; gc today" plan.txt \
    || fail "dry run does not show alpha's plan"
grep -q "^beta: would back up .* as disk beta-disk" plan.txt || fail "dry run: beta's disk name"
[ ! -e "$repo" ] || fail "dry run created the repository"

# Run 1: two good sources, one broken: exit 1, the others done.
rc=0
"$NBDVAULT" run --config job.conf > sum1.txt 2> log1.txt || rc=$?
cat sum1.txt log1.txt
[ "$rc" = 1 ] || fail "a run with a broken source exited $rc, not 1"
grep -q "^alpha: ok: 1 disk(s) (1 full, 0 incremental)" sum1.txt || fail "alpha not in the summary"
grep -q "^beta: ok: 1 disk(s) (1 full, 0 incremental)" sum1.txt || fail "beta not in the summary"
grep -q "^broken: FAILED: .*missing.sock" sum1.txt || fail "the summary does not name the failure"
grep -q "^total: 3 source(s), 2 succeeded, 1 failed" sum1.txt || fail "no total line"
grep -Eq '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z nbdvault run: error: .*missing.sock' log1.txt \
    || fail "the log line of the failure has no timestamp and level"
qemu-img convert -O raw a.qcow2 a-1.raw
qemu-img convert -O raw b.qcow2 b-1.raw

# Writes, then runs 2 and 3 of the good sources only (--only): incrementals.
stop_server "$pid_a"; stop_server "$pid_b"
qemu-io -f qcow2 -c "write -P 0x41 $((5 * M)) 64k" a.qcow2 >/dev/null
qemu-io -f qcow2 -c "write -P 0x42 $((7 * M + 512)) 1000" b.qcow2 >/dev/null
start_qemu_nbd a.sock -t -r -f qcow2 -B b0 --shared=4 a.qcow2; pid_a=$qemu_nbd_pid
start_qemu_nbd b.sock -t -r -f qcow2 -B b0 b.qcow2; pid_b=$qemu_nbd_pid
run "$NBDVAULT" run --config job.conf --only alpha --only beta --json > sum2.json \
    || fail "run 2 failed"
cat sum2.json
"$PYTHON" - sum2.json <<'PY' || fail "run 2's JSON"
import json, sys
v = json.load(open(sys.argv[1]))
assert [o["name"] for o in v] == ["alpha", "beta"], v
for o in v:
    assert o["ok"] is True and o["error"] is None, o
    assert len(o["disks"]) == 1 and o["disks"][0]["kind"] == "incremental", o
assert v[0]["disks"][0]["bytes_read"] == 65536, v[0]
PY
qemu-img convert -O raw a.qcow2 a-2.raw
qemu-img convert -O raw b.qcow2 b-2.raw
run "$NBDVAULT" run --config job.conf --only alpha --only beta > sum3.txt || fail "run 3 failed"
cat sum3.txt
grep -q "^alpha: ok: .* pruned 1 point(s)" sum3.txt || fail "keep-last = 2 did not prune alpha"
# keep-last 2: points of runs 2 and 3 are left, and restore as the disk was.
"$NBDVAULT" list --repo "$repo" --disk alpha --json > la.json
n=$("$PYTHON" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' la.json)
[ "$n" = 2 ] || fail "alpha has $n points after keep-last = 2"
for d in alpha beta-disk; do
    f=a; [ $d = beta-disk ] && f=b
    run "$NBDVAULT" restore --repo "$repo" --disk $d --output r-$d.raw || fail "restore $d"
    cmp r-$d.raw $f-2.raw || fail "$d restored differs from the disk"
done

# Bad files: exit 2, the line or section named.
printf '[vm x]\nuri = nbd+unix:///?socket=/x\nrepo = /tmp/x\nfrobnicate = 1\n' > bad1.conf
expect_fail 2 'bad1.conf, line 4: unknown key "frobnicate"' "$NBDVAULT" run --config bad1.conf
printf '[vm x]\nlibvirt = d\nqmp = /s\nrepo = /tmp/x\n' > bad2.conf
expect_fail 2 'section \[vm x\]: give exactly one of libvirt =, qmp = and uri =' \
    "$NBDVAULT" run --config bad2.conf
printf '[vm x]\nuri = nbd+unix:///?socket=/x\n' > bad3.conf
expect_fail 2 'section \[vm x\]: no repo' "$NBDVAULT" run --config bad3.conf
printf '[defaults]\nrepo = /tmp/x\ngc = someday\n[vm x]\nuri = nbd+unix:///?socket=/x\n' > bad4.conf
expect_fail 2 'bad gc "someday"' "$NBDVAULT" run --config bad4.conf
expect_fail 2 '--only nosuch: no section \[vm nosuch\]' "$NBDVAULT" run --config job.conf --only nosuch
expect_fail 2 'config nothere.conf: No such file' "$NBDVAULT" run --config nothere.conf
expect_fail 2 'config FILE is required' "$NBDVAULT" run

# Two runs on one repository: the second is refused while the first runs.
start_nbdkit slow.sock --filter=delay pattern 4M rdelay=2
cat > slow.conf <<CONF
[vm slow]
uri = nbd+unix:///?socket=$testdir/slow.sock
repo = $repo
CONF
"$NBDVAULT" run --config slow.conf > slow.out 2>&1 &
slow=$!
for i in $(seq 50); do grep -q "slow: backup into" slow.out && break; sleep 0.1; done
expect_fail 1 "another nbdvault run holds it \(pid $slow on " "$NBDVAULT" run --config job.conf --only alpha
grep -q "^alpha: FAILED: repository $repo: another nbdvault run holds it" expect.out \
    || fail "the refused run's summary does not say why"
wait $slow || fail "the first run failed: $(cat slow.out)"
