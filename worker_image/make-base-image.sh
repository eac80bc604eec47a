#!/usr/bin/env bash
# Make a Debian base image locally, for hosts that cannot pull from any registry.
#
#   sudo worker_image/make-base-image.sh IMAGE[:TAG] [SUITE]
#
# e.g. `sudo worker_image/make-base-image.sh debian:bookworm-slim`. It debootstraps a
# `--variant=minbase` Debian (SUITE, default bookworm) from $DEBIAN_MIRROR (default
# http://deb.debian.org/debian, plain HTTP so no CA is needed), trims it the way the
# official "-slim" images are trimmed, and `docker import`s it under IMAGE with the label
# ccq.role=base-image. Needs root (debootstrap chroots and creates device nodes), the
# `debootstrap` package and a running Docker engine. ccq's worker_image/builder.py runs it
# when the configured base image is a Debian bookworm image that is neither present nor
# pullable. The temporary root filesystem is always removed, also on failure.
set -euo pipefail

usage() {
    echo "usage: sudo $0 IMAGE[:TAG] [SUITE]   (e.g. debian:bookworm-slim bookworm)" >&2
    exit 2
}

[[ $# -ge 1 && $# -le 2 ]] || usage
image=$1
suite=${2:-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

if [[ $(id -u) -ne 0 ]]; then
    echo "error: making a base image needs root (debootstrap chroots)." >&2
    echo "run:   sudo $0 $image $suite" >&2
    exit 1
fi
for tool in debootstrap docker tar; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "error: '$tool' is not installed (apt-get install debootstrap docker.io)" >&2
        exit 1
    fi
done

rootfs=$(mktemp -d "${TMPDIR:-/tmp}/ccq-rootfs.XXXXXXXX")
cleanup() {
    # debootstrap mounts proc/sys inside the target; a failed run can leave them
    # mounted, and removing the tree must never walk into the host's /proc.
    local mnt
    for mnt in dev/pts dev/shm proc sys; do
        if mountpoint -q "$rootfs/$mnt" 2>/dev/null; then
            umount -l "$rootfs/$mnt" || true
        fi
    done
    rm -rf --one-file-system "$rootfs"
}
trap cleanup EXIT

echo ">> debootstrap --variant=minbase $suite from $mirror"
debootstrap --variant=minbase "$suite" "$rootfs" "$mirror"

echo ">> trimming the root filesystem like debian:*-slim"
# Later `apt-get install`s in images built on this one skip docs, man pages and locales.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/man/*
EOF
cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
# The same sources as the official image: the release, its updates and security.
rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security_mirror
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs"/usr/share/{man,info,groff,lintian,linda}/* "$rootfs"/usr/share/locale/*/
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* \
    "$rootfs"/tmp/* "$rootfs"/var/tmp/*
# Docker supplies these at run time; do not ship the build host's copies.
: >"$rootfs/etc/resolv.conf"
: >"$rootfs/etc/hostname"
rm -f "$rootfs/etc/machine-id" "$rootfs/var/lib/dbus/machine-id"

echo ">> docker import -> $image"
tar --numeric-owner --xattrs -C "$rootfs" -c . |
    docker import \
        --change 'CMD ["bash"]' \
        --change 'LABEL ccq.role=base-image' \
        --change "LABEL ccq.base.suite=$suite" \
        --message "ccq: debootstrap --variant=minbase $suite $mirror" \
        - "$image"
echo ">> made $image locally ($suite, minbase)"
