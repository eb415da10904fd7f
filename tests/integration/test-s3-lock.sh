#!/bin/bash
# requires: rgw
# Immutable backups: with --s3-object-lock-days, packs and manifests are
# written under S3 Object Lock (GOVERNANCE); a credential cannot delete a
# retained version; prune keeps the locked points and gc the locked packs,
# and both say so; lock objects are never retained; points written without
# a retention are pruned as usual.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/backup-lib.sh"
. "$here/s3-lib.sh"
requires qemu-nbd --version

M=1048576
bucket=$(s3_bucket lock lock)
repo=s3://$bucket/r
run "$NBDVAULT" init --repo "$repo"
head -c $((4 * M)) /dev/urandom > data.raw
start_qemu_nbd d.sock -t -f raw -x d --shared=8 data.raw
uri="nbd+unix:///d?socket=$testdir/d.sock"
for i in 1 2; do
    run "$NBDVAULT" backup "$uri" --repo "$repo" --disk d --full --s3-object-lock-days 1 >/dev/null
    head -c 65536 /dev/urandom | qemu-io -f raw -c "write -s /dev/stdin $((i * M)) 65536" "$uri" >/dev/null
done
cp data.raw ref-2.raw
[ -z "$(s3_keys "$bucket" r/locks/)" ] || fail "a lock object was left"
pack=$(s3_keys "$bucket" r/packs/ | sed -n 1p)
man=$(s3_keys "$bucket" r/points/ | sed -n 1p)
for k in "$pack" "$man"; do
    s3_curl -I "$AWS_ENDPOINT_URL/$bucket/$k" > head.out
    grep -qi "x-amz-object-lock-mode: GOVERNANCE" head.out || { cat head.out; fail "$k is not locked"; }
done
# A credential cannot delete the retained version.
s3_curl "$AWS_ENDPOINT_URL/$bucket?prefix=${pack//\//%2F}&versions=" > versions.xml
vid=$("$PYTHON" -c 'import re; print(re.search(r"<VersionId>([^<]+)</VersionId>", open("versions.xml").read()).group(1))')
code=$(s3_curl -o /dev/null -w '%{http_code}' -X DELETE "$AWS_ENDPOINT_URL/$bucket/$pack?versionId=$vid")
[ "$code" = 403 ] || fail "deleting a retained version answered $code"

run "$NBDVAULT" prune --repo "$repo" --disk d --keep-last 1 | tee prune.out
grep -q "object lock until" prune.out || fail "prune did not say the point is locked"
grep -q "removed 0 point" prune.out || fail "prune removed a locked point"
run "$NBDVAULT" gc --repo "$repo"
[ "$(s3_keys "$bucket" r/points/ | wc -l)" = 2 ] || fail "a locked manifest went"
# A point written without a retention is pruned.
run "$NBDVAULT" backup "$uri" --repo "$repo" --disk d --full >/dev/null
run "$NBDVAULT" backup "$uri" --repo "$repo" --disk d --full >/dev/null
run "$NBDVAULT" prune --repo "$repo" --disk d --keep-last 1 | tee prune2.out
grep -q "removed 1 point" prune2.out || fail "the unlocked point was not removed"
run "$NBDVAULT" restore --repo "$repo" --disk d --output r.raw
cmp r.raw data.raw || fail "the newest point differs"
"$NBDVAULT" list --repo "$repo" --json > l.json
first=$("$PYTHON" -c 'import json; print(json.load(open("l.json"))[0]["point"])')
run "$NBDVAULT" restore --repo "$repo" --disk d --point "$first" --output r.raw
echo OK
