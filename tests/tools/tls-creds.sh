# TLS credentials for the tests and the reliability matrix (sourced by
# tests/integration/lib.sh and scripts/reliability.sh).

# make_psk DIR USER: DIR/keys.psk with a random key for USER.
make_psk ()
{
    mkdir -p "$1"
    psktool -u "$2" -p "$1/keys.psk" >/dev/null
}

# make_x509 DIR: a test CA and, signed by it:
#   DIR/server/  ca-cert.pem server-cert.pem server-key.pem (cn localhost)
#                — a qemu-nbd tls-creds-x509 dir=
#   DIR/client/  ca-cert.pem client-cert.pem client-key.pem
#                — a client tls-certificates= dir that can prove itself
#   DIR/ca-only/ ca-cert.pem — a client dir without a certificate of its own
#   DIR/other-ca/ ca-cert.pem of another CA that signed nothing here
make_x509 ()
{
    local d=$1
    mkdir -p "$d/server" "$d/client" "$d/ca-only" "$d/other-ca"
    _certtool --generate-privkey --outfile "$d/ca-key.pem"
    printf 'cn = nbdvault test ca\nca\ncert_signing_key\nexpiration_days = 30\n' > "$d/ca.info"
    _certtool --generate-self-signed --load-privkey "$d/ca-key.pem" \
        --template "$d/ca.info" --outfile "$d/ca-cert.pem"

    _certtool --generate-privkey --outfile "$d/server/server-key.pem"
    printf 'cn = localhost\ndns_name = localhost\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 30\n' \
        > "$d/server.info"
    _certtool --generate-certificate --load-privkey "$d/server/server-key.pem" \
        --load-ca-certificate "$d/ca-cert.pem" --load-ca-privkey "$d/ca-key.pem" \
        --template "$d/server.info" --outfile "$d/server/server-cert.pem"

    _certtool --generate-privkey --outfile "$d/client/client-key.pem"
    printf 'cn = nbdvault test client\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 30\n' \
        > "$d/client.info"
    _certtool --generate-certificate --load-privkey "$d/client/client-key.pem" \
        --load-ca-certificate "$d/ca-cert.pem" --load-ca-privkey "$d/ca-key.pem" \
        --template "$d/client.info" --outfile "$d/client/client-cert.pem"

    cp "$d/ca-cert.pem" "$d/server/"
    cp "$d/ca-cert.pem" "$d/client/"
    cp "$d/ca-cert.pem" "$d/ca-only/"

    _certtool --generate-privkey --outfile "$d/other-ca-key.pem"
    printf 'cn = some other ca\nca\ncert_signing_key\nexpiration_days = 30\n' > "$d/other-ca.info"
    _certtool --generate-self-signed --load-privkey "$d/other-ca-key.pem" \
        --template "$d/other-ca.info" --outfile "$d/other-ca/ca-cert.pem"
}

# certtool, quietly, with ECDSA keys (RSA-3072 takes half a second each).
_certtool ()
{
    local out
    if [ "$1" = --generate-privkey ]; then
        set -- "$@" --key-type=ecdsa
    fi
    out=$(certtool "$@" 2>&1) || { echo "$out" >&2; echo "certtool $* failed" >&2; return 1; }
}
