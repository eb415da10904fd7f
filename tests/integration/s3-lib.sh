# s3-lib.sh: helpers for the tests of repositories in a bucket, sourced
# after lib.sh.  run.sh starts one Ceph RGW for the suite when a test says
# "# requires: rgw" and exports AWS_ENDPOINT_URL and the keys; each test
# makes buckets of its own (s3_bucket).

[ -n "${NBDVAULT_TEST_RGW:-}" ] || skip "no Ceph RGW (run through make integration-check)"
# Caches of this test only.
export XDG_CACHE_HOME=$testdir/cache
EMPTY_SHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

# s3_curl ARGS...: a request signed with the suite's keys (empty body).
s3_curl ()
{
    curl -sS --aws-sigv4 "aws:amz:us-east-1:s3" -u "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
        -H "x-amz-content-sha256: $EMPTY_SHA256" "$@"
}

# s3_bucket SUFFIX [lock]: creates a bucket named after the test; prints
# its name.  With "lock", the bucket has S3 Object Lock enabled.
s3_bucket ()
{
    local name
    name=$(printf 't-%s-%s' "$(basename "$testdir" | tr 'A-Z_.' 'a-z--')" "$1" | cut -c1-63)
    if [ "${2:-}" = lock ]; then
        s3_curl -f -X PUT -H "x-amz-bucket-object-lock-enabled: true" \
            "$AWS_ENDPOINT_URL/$name" >/dev/null || fail "cannot create bucket $name"
    else
        s3_curl -f -X PUT "$AWS_ENDPOINT_URL/$name" >/dev/null || fail "cannot create bucket $name"
    fi
    echo "$name"
}

# s3_keys BUCKET [PREFIX]: the keys under PREFIX, one per line.
s3_keys ()
{
    local prefix=${2:-}
    s3_curl -f "$AWS_ENDPOINT_URL/$1?list-type=2&max-keys=1000&prefix=${prefix//\//%2F}" |
        "$PYTHON" -c 'import sys, xml.etree.ElementTree as E
ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
for c in E.parse(sys.stdin).getroot().iter(ns + "Contents"):
    print(c.find(ns + "Key").text)'
}

# s3_get BUCKET KEY FILE / s3_put BUCKET KEY FILE: one object.
s3_get ()
{
    s3_curl -f -o "$3" "$AWS_ENDPOINT_URL/$1/$2" || fail "GET $1/$2 failed"
}
s3_put ()
{
    curl -sS -f --aws-sigv4 "aws:amz:us-east-1:s3" -u "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
        -H "x-amz-content-sha256: $(sha256sum "$3" | cut -d' ' -f1)" -X PUT --data-binary @"$3" \
        "$AWS_ENDPOINT_URL/$1/$2" >/dev/null || fail "PUT $1/$2 failed"
}
