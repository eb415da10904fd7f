#!/bin/sh
# Installs every Debian package that nbdvault's build, tests, demo and
# benchmarks need.  This script is the only place a package is named.
#
#   scripts/install-deps.sh           install what is missing (needs root)
#   scripts/install-deps.sh --check   exit 0 when nothing is missing, else 1
#   scripts/install-deps.sh --print   print the apt-get line and exit
set -eu

PACKAGES="build-essential pkg-config clang libclang-rt-14-dev
libgnutls28-dev libzstd-dev libsqlite3-dev libcurl4-gnutls-dev libcmocka-dev
libjson-c-dev libinih-dev libisal-dev libargon2-dev
qemu-utils nbdkit nbdkit-plugin-dev libnbd-bin python3-libnbd nbd-server gnutls-bin
sqlite3 zstd time e2fsprogs valgrind
libxml2-dev libvirt-dev libvirt-daemon-system libvirt-clients qemu-system-x86 virtnbdbackup
ceph-mon ceph-osd radosgw ceph-common restic"

missing() {
    for p in $PACKAGES; do
        st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        case "$st" in
            *"install ok installed"*) ;;
            *) printf '%s ' "$p" ;;
        esac
    done
}

m=$(missing)
line="apt-get install -y --no-install-recommends $m"

case "${1:-}" in
    --check) [ -z "$m" ] && exit 0; exit 1 ;;
    --print) [ -n "$m" ] && echo "$line"; exit 0 ;;
esac

if [ -z "$m" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "nbdvault needs these Debian packages; run as root:" >&2
    echo "  apt-get update && $line" >&2
    exit 1
fi
echo "install-deps: installing $m" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || apt-get update
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $m
