#!/bin/bash
# An encrypted repository (init --encrypt): backups and restores are
# bit-identical, from the passphrase, a second passphrase and an exported
# key file alike, served too; no plaintext string of the disk is in any
# file of the repository; a wrong passphrase, a missing key, another
# repository's key file and a damaged key file are refused (exit 1, named);
# a damaged chunk is found and named; verify without the key checks the
# CRCs and says it decrypted nothing; prune and gc (a pack rewritten, its
# chunks sealed again) keep every kept point whole; copy re-encrypts to a
# plain repository and to one with another key.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/backup-lib.sh"
requires qemu-nbd --version
requires nbdinfo --version

M=1048576
repo=$testdir/repo
export NBDVAULT_KDF_MEMORY_KIB=8192     # a faster Argon2id (one slot keeps the default)
printf 'first passphrase\n' > pw1

# A disk of known text and random data, with a bitmap.
qemu-img create -q -f qcow2 disk.qcow2 $((24 * M))
"$PYTHON" -c '
import sys
line = b"SECRET-PAYROLL-RECORD nbdvault known plaintext %06d\n"
sys.stdout.buffer.write(b"".join(line % i for i in range(60000)))' > text.bin
head -c $((4 * M)) /dev/urandom > rand.bin
qemu-io -f qcow2 -c "write -s text.bin 0 $(stat -c %s text.bin)" -c "write -s rand.bin $((8 * M)) $((4 * M))" \
    disk.qcow2 >/dev/null
qemu-img bitmap --add disk.qcow2 b0
qemu-img convert -O raw disk.qcow2 ref-1.raw

env -u NBDVAULT_KDF_MEMORY_KIB "$NBDVAULT" init --repo "$repo" --encrypt --password-file pw1 | tee init.out
grep -q "created encrypted repository" init.out || fail "init --encrypt did not say so"
run "$NBDVAULT" key list --repo "$repo" | tee keys.out
grep -q "argon2id t=3 m=64MiB" keys.out || fail "the first slot does not use the default Argon2id"

serve_disk disk.qcow2
backup_json b1.json "$uri" --repo "$repo" --disk d --bitmap b0 --password-file pw1
unserve
printf 'ANOTHER-SECRET-LINE written after the full backup\n%.0s' $(seq 2000) > text2.bin
qemu-io -f qcow2 -c "write -s text2.bin $((16 * M)) $(stat -c %s text2.bin)" disk.qcow2 >/dev/null
qemu-img convert -O raw disk.qcow2 ref-2.raw
serve_disk disk.qcow2
NBDVAULT_PASSWORD='first passphrase' backup_json b2.json "$uri" --repo "$repo" --disk d --bitmap b0
unserve
[ "$(jget b2.json kind)" = incremental ] || fail "the second backup is not incremental"
for p in 1 2; do
    run "$NBDVAULT" restore --repo "$repo" --disk d --point "$(jget b$p.json point)" --output r.raw \
        --password-file pw1
    cmp r.raw ref-$p.raw || fail "point $p restored from the encrypted repository differs"
done

# No plaintext of the disk in any file of the repository.
for s in SECRET-PAYROLL-RECORD ANOTHER-SECRET-LINE "known plaintext"; do
    ! grep -rlaF "$s" "$repo" || fail "\"$s\" is readable in the repository"
done
"$PYTHON" - "$repo" rand.bin <<'EOF' || fail "random disk data is readable in the repository"
import os, sys
needle = open(sys.argv[2], "rb").read()[1000:1064]
for d, _, files in os.walk(sys.argv[1]):
    for f in files:
        if needle in open(os.path.join(d, f), "rb").read():
            sys.exit(1)
EOF

# Typed on a terminal: the passphrase is asked for, without echo.
"$PYTHON" - "$NBDVAULT" "$repo" <<'EOF' || fail "the passphrase typed on a terminal did not open the repository"
import os, pty, signal, sys, time
signal.alarm(60)  # a lost passphrase must fail the test, not hang it
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], "list", "--repo", sys.argv[2]])
out = b""
while b"passphrase for" not in out:
    out += os.read(fd, 1024)
os.write(fd, b"first passphrase\n")
try:
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        out += chunk
except OSError:
    pass
_, status = os.waitpid(pid, 0)
text = out.decode(errors="replace")
print(text)
sys.exit(0 if os.WEXITSTATUS(status) == 0 and "incremental" in text and "first passphrase" not in text else 1)
EOF

# Refusals: exit 1, each named.
expect_fail 1 "is encrypted: its key is needed" "$NBDVAULT" list --repo "$repo"
NBDVAULT_PASSWORD=wrong expect_fail 1 "the passphrase opens none of the 1 key slot" \
    "$NBDVAULT" restore --repo "$repo" --disk d --output x.raw
[ ! -e x.raw ] || fail "a refused restore wrote its output"
expect_fail 1 "a key was given: create it encrypted" "$NBDVAULT" backup "$uri" --repo "$testdir/new" \
    --disk d --password-file pw1

# A second passphrase; an exported key file; the first slot removed.
printf 'second passphrase\n' > pw2
run "$NBDVAULT" key add --repo "$repo" --password-file pw1 --new-password-file pw2 --label laptop
run "$NBDVAULT" key export --repo "$repo" --password-file pw2 --output master.key
[ "$(stat -c %a master.key)" = 600 ] || fail "the exported key file is not 0600"
run "$NBDVAULT" restore --repo "$repo" --disk d --output r.raw --key-file master.key
cmp r.raw ref-2.raw || fail "the point restored with the exported key file differs"
# The config file's key-file opens it too.
printf '[repository]\npath = %s\nkey-file = %s\n' "$repo" "$testdir/master.key" > enc.conf
run "$NBDVAULT" list --config enc.conf | grep -q incremental || fail "the config's key-file did not open the repository"
first=$("$NBDVAULT" key list --repo "$repo" --json | "$PYTHON" -c 'import json,sys; print([k["id"] for k in json.load(sys.stdin) if k["label"] == "first"][0])')
run "$NBDVAULT" key remove --repo "$repo" --id "$first" --password-file pw2
expect_fail 1 "opens none" "$NBDVAULT" list --repo "$repo" --password-file pw1
second=$("$NBDVAULT" key list --repo "$repo" --json | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
expect_fail 1 "last key slot" "$NBDVAULT" key remove --repo "$repo" --id "$second" --password-file pw2
# A key file with one digit changed, and another repository's key file.
sed 's/^key \(.\)/key X\1/; s/^key X0/key 1/; s/^key X[1-9a-f]/key 0/' master.key > bad.key
cmp -s bad.key master.key && fail "the key file was not changed"
expect_fail 1 "checksum does not match" "$NBDVAULT" list --repo "$repo" --key-file bad.key
run "$NBDVAULT" init --repo "$testdir/other" --encrypt --key-file other.key
expect_fail 1 "is the key of repository" "$NBDVAULT" list --repo "$repo" --key-file other.key

# The nightly job, its key in the job file: an incremental of the same disk.
serve_disk disk.qcow2
printf '[defaults]\nrepo = %s\nkey-file = %s\n[vm d]\nuri = %s\nbitmap = b0\n' "$repo" \
    "$testdir/master.key" "$uri" > job.conf
run "$NBDVAULT" run --config job.conf --json > run.json || { cat run.json; fail "run of an encrypted repository failed"; }
unserve
run "$NBDVAULT" restore --repo "$repo" --disk d --output r.raw --key-file master.key
cmp r.raw ref-2.raw || fail "the point of the run differs"

# Served: nbdcopy reads the newest point.
"$NBDVAULT" serve --repo "$repo" --key-file master.key --socket "$testdir/srv.sock" &
srv=$!
cleanup_fn kill $srv
for _ in $(seq 50); do [ -S srv.sock ] && break; sleep 0.1; done
nbdcopy "nbd+unix:///d?socket=$testdir/srv.sock" served.raw
cmp served.raw ref-2.raw || fail "the served point of the encrypted repository differs"
kill $srv
wait $srv || true

# verify: without the key, the CRCs; with it, every chunk.
run "$NBDVAULT" verify --repo "$repo" --json > v0.json
[ "$(jget v0.json decrypted)" = False ] || fail "verify without a key says it decrypted"
[ "$(jget v0.json chunks)" = 0 ] || fail "verify without a key read chunks"
run "$NBDVAULT" verify --repo "$repo" --key-file master.key --json > v1.json
[ "$(jget v1.json chunks)" -gt 0 ] || fail "verify with the key read no chunk"

# Copies: to a plain repository (decrypted) and to another key (sealed again).
run "$NBDVAULT" init --repo "$testdir/plain"
run "$NBDVAULT" copy --repo "$repo" --key-file master.key --to "$testdir/plain" >/dev/null
run "$NBDVAULT" restore --repo "$testdir/plain" --disk d --output r.raw
cmp r.raw ref-2.raw || fail "the point copied to a plain repository differs"
run "$NBDVAULT" copy --repo "$testdir/plain" --to "$testdir/other" --to-key-file other.key >/dev/null
run "$NBDVAULT" restore --repo "$testdir/other" --key-file other.key --disk d --output r.raw
cmp r.raw ref-2.raw || fail "the point copied to another encrypted repository differs"
! grep -rlaF SECRET-PAYROLL-RECORD "$testdir/other" || fail "the copy wrote plaintext"

# prune and gc: a new full point of new random data, the older points
# pruned; their pack, mostly garbage, is rewritten (its chunks sealed again).
head -c $((4 * M)) /dev/urandom > rand2.bin
qemu-io -f qcow2 -c "write -s rand2.bin $((8 * M)) $((4 * M))" disk.qcow2 >/dev/null
qemu-img convert -O raw disk.qcow2 ref-3.raw
serve_disk disk.qcow2
backup_json b3.json "$uri" --repo "$repo" --disk d --full --key-file master.key
unserve
run "$NBDVAULT" prune --repo "$repo" --disk d --keep-last 1 --key-file master.key >/dev/null
run "$NBDVAULT" gc --repo "$repo" --key-file master.key | tee gc.out
grep -Eq "rewrote [1-9]|removed [0-9]+ chunk\(s\), [1-9]" gc.out || fail "gc gave nothing back"
run "$NBDVAULT" restore --repo "$repo" --disk d --output r.raw --key-file master.key
cmp r.raw ref-3.raw || fail "the kept point differs after prune and gc"
run "$NBDVAULT" verify --repo "$repo" --key-file master.key >/dev/null

# One byte of a chunk: found, named, with its point.
pack=$(find "$repo/packs" -name '*.pack' | sed -n 1p)
"$PYTHON" -c 'import sys; f=open(sys.argv[1],"r+b"); f.seek(16+56+40); b=f.read(1); f.seek(16+56+40); f.write(bytes([b[0]^1]))' "$pack"
rc=0
"$NBDVAULT" verify --repo "$repo" --key-file master.key > v2.out || rc=$?
cat v2.out
[ $rc = 1 ] || fail "verify of a damaged encrypted chunk exited $rc"
grep -q "damaged: .*chunk .*affects point" v2.out || fail "the damaged chunk and its point are not named"
expect_fail 1 "chunk" "$NBDVAULT" restore --repo "$repo" --disk d --output x.raw --key-file master.key
echo OK
