#!/bin/bash
# requires: rgw
# A bucket over https: with the CA in --s3-ca-file (or the config's
# s3-ca-file) a backup and its restore go through and are bit-identical;
# without that CA, or with another one, every command is refused before
# any request is answered (exit 1, the certificate named), and no secret
# shows.  The endpoint is a TLS proxy of our own in front of RGW.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/backup-lib.sh"
. "$here/s3-lib.sh"
requires qemu-nbd --version
requires certtool --version

M=1048576
bucket=$(s3_bucket tls)
repo=s3://$bucket/r
upstream=${AWS_ENDPOINT_URL##*:}
make_x509 "$testdir/pki"
port=$(free_port)
"$PYTHON" "$here/s3proxy.py" "$port" "$upstream" --log proxy.log \
    --tls "$testdir/pki/server/server-cert.pem" "$testdir/pki/server/server-key.pem" > proxy.out 2>&1 &
proxy_pid=$!
cleanup_fn kill "$proxy_pid"
for _ in $(seq 50); do grep -q listening proxy.out && break; sleep 0.1; done
grep -q listening proxy.out || fail "the TLS proxy did not start"
# The certificate names localhost; path-style, since it is not an IP.
export AWS_ENDPOINT_URL=https://localhost:$port
ca=(--s3-path-style yes --s3-ca-file "$testdir/pki/ca-cert.pem")

run "$NBDVAULT" init --repo "$repo" "${ca[@]}"
head -c $((8 * M)) /dev/urandom > data.raw
start_qemu_nbd d.sock -t -f raw -x d --shared=8 data.raw
uri="nbd+unix:///d?socket=$testdir/d.sock"
run "$NBDVAULT" backup "$uri" --repo "$repo" --disk d "${ca[@]}" >/dev/null
run "$NBDVAULT" restore --repo "$repo" --disk d --output r.raw "${ca[@]}"
cmp r.raw data.raw || fail "the point backed up over https differs"
grep -q "PUT /$bucket/r/packs/" proxy.log || fail "no pack went through the TLS proxy"

# The same from the config file's [repository] keys.
cat > agent.conf <<EOF
[repository]
path = $repo
s3-path-style = yes
s3-ca-file = $testdir/pki/ca-cert.pem
EOF
rm -rf "$XDG_CACHE_HOME"
run "$NBDVAULT" restore --config agent.conf --disk d --output r2.raw
cmp r2.raw data.raw || fail "the point restored with the config's CA differs"

# Without the CA, and with another CA: refused, the certificate named.
rm -rf "$XDG_CACHE_HOME" r3.raw
for opt in "" "--s3-ca-file $testdir/pki/other-ca/ca-cert.pem"; do
    # shellcheck disable=SC2086
    expect_fail 1 "certificate" "$NBDVAULT" restore --repo "$repo" --disk d --output r3.raw \
        --s3-path-style yes $opt
    [ ! -e r3.raw ] || fail "a restore refused by TLS wrote its output"
    ! grep -q "$AWS_SECRET_ACCESS_KEY" expect.out expect.err || fail "the secret appears in the output"
done
expect_fail 1 "certificate" "$NBDVAULT" backup "$uri" --repo "$repo" --disk d --s3-path-style yes
echo OK
