#!/bin/bash
# requires: rgw
# An encrypted repository in a bucket: no object holds a plaintext string of
# the disk (packs, manifests, config, key slots); an empty machine with the
# passphrase rebuilds the cache and restores bit-identically, without it is
# refused; a manifest with one byte changed is refused by its seal, named;
# a config stripped of its encryption is refused by a cache that knew it
# encrypted (no backup writes plain chunks into it); copy re-encrypts from a
# local encrypted repository into the bucket under another key.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/backup-lib.sh"
. "$here/s3-lib.sh"
requires qemu-nbd --version

M=1048576
export NBDVAULT_KDF_MEMORY_KIB=8192
bucket=$(s3_bucket enc)
repo=s3://$bucket/r
printf 'bucket passphrase\n' > pw

"$PYTHON" -c '
import sys
line = b"CONFIDENTIAL-LEDGER nbdvault plaintext in a bucket %06d\n"
sys.stdout.buffer.write(b"".join(line % i for i in range(40000)))' > text.bin
head -c $((3 * M)) /dev/urandom >> text.bin
truncate -s $((8 * M)) text.bin
start_qemu_nbd d.sock -t -r -f raw -x d --shared=8 text.bin
uri="nbd+unix:///d?socket=$testdir/d.sock"

run "$NBDVAULT" init --repo "$repo" --encrypt --password-file pw
backup_json b1.json "$uri" --repo "$repo" --disk d --password-file pw
run "$NBDVAULT" restore --repo "$repo" --disk d --output r.raw --password-file pw
cmp r.raw text.bin || fail "the point restored from the encrypted bucket differs"

# Every object of the bucket: no plaintext.
mkdir objs
i=0
for k in $(s3_keys "$bucket" r/); do
    i=$((i + 1))
    s3_get "$bucket" "$k" "objs/$i"
done
[ "$i" -ge 4 ] || fail "only $i objects in the bucket"
! grep -rlaF CONFIDENTIAL-LEDGER objs || fail "a plaintext string of the disk is in the bucket"
! grep -rlaF '"disk"' objs || fail "a manifest's header is readable in the bucket"
m=$(s3_keys "$bucket" r/points/ | sed -n 1p)
s3_get "$bucket" "$m" man
[ "$(head -c 8 man)" = NBDVMANE ] || fail "the manifest is not sealed"

# An empty machine: with the passphrase, every point; without, a clear refusal.
XDG_CACHE_HOME=$testdir/empty run "$NBDVAULT" catalog rebuild --repo "$repo" --password-file pw
XDG_CACHE_HOME=$testdir/empty run "$NBDVAULT" restore --repo "$repo" --disk d --output r2.raw \
    --password-file pw
cmp r2.raw text.bin || fail "the point restored on an empty machine differs"
XDG_CACHE_HOME=$testdir/nokey expect_fail 1 "is encrypted: its key is needed" \
    "$NBDVAULT" list --repo "$repo"
XDG_CACHE_HOME=$testdir/nokey NBDVAULT_PASSWORD=nope expect_fail 1 "opens none of the 1 key slot" \
    "$NBDVAULT" list --repo "$repo"

# One byte of the manifest: refused by its seal, the object named.
cp man man.bad
"$PYTHON" -c 'import sys; b=bytearray(open("man.bad","rb").read()); b[40]^=1; open("man.bad","wb").write(b)'
s3_put "$bucket" "$m" man.bad
XDG_CACHE_HOME=$testdir/third expect_fail 1 "manifest s3://$bucket/$m is damaged or not this repository's: its seal" \
    "$NBDVAULT" list --repo "$repo" --password-file pw
s3_put "$bucket" "$m" man

# The config stripped of its encryption: the cache that knew refuses.
s3_get "$bucket" r/config config.json
"$PYTHON" -c 'import json; c=json.load(open("config.json")); del c["encryption"]; json.dump(c, open("plain.json","w"))'
s3_put "$bucket" r/config plain.json
expect_fail 1 "knew it encrypted: refusing" "$NBDVAULT" backup "$uri" --repo "$repo" --disk d --password-file pw
s3_put "$bucket" r/config config.json

# copy: a local encrypted repository (its own key file) into the bucket.
run "$NBDVAULT" init --repo "$testdir/local" --encrypt --key-file local.key
head -c $((2 * M)) /dev/urandom > small.raw
"$PYTHON" -c 'import sys; sys.stdout.buffer.write(b"CONFIDENTIAL-LEDGER copied\n" * 40000)' >> small.raw
truncate -s $((4 * M)) small.raw
start_qemu_nbd s.sock -t -r -f raw -x s --shared=8 small.raw
run "$NBDVAULT" backup "nbd+unix:///s?socket=$testdir/s.sock" --repo "$testdir/local" --disk s \
    --key-file local.key >/dev/null
run "$NBDVAULT" copy --repo "$testdir/local" --key-file local.key --to "$repo" --to-password-file pw
XDG_CACHE_HOME=$testdir/empty run "$NBDVAULT" restore --repo "$repo" --disk s --output r3.raw --password-file pw
cmp r3.raw small.raw || fail "the point copied into the encrypted bucket differs"
rm -rf objs && mkdir objs
i=0
for k in $(s3_keys "$bucket" r/packs/); do
    i=$((i + 1))
    s3_get "$bucket" "$k" "objs/$i"
done
! grep -rlaF CONFIDENTIAL-LEDGER objs || fail "the copy put plaintext into the bucket"
echo OK
