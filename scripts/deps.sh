#!/usr/bin/env bash
# Installs the Debian packages snapctl's tests and demo need, if missing:
# user-mode Linux (the real kernel the end-to-end tests boot), kmod (modprobe
# in the guest), file-system tools, dmsetup (an oracle in tests), and a C
# compiler for the UML ptrace shim (e2e/umlfpu), libnbd-bin (nbdinfo and
# nbdcopy: an independent NBD client for the interop test), RAUC with
# what its end-to-end test needs (rauc bundle, the RAUC service on a private
# system bus: dbus, mksquashfs from squashfs-tools, openssl for the test's
# signing certificate), and qemu-user (make cross runs the unit tests of
# other architectures under it).
set -euo pipefail
pkgs=(user-mode-linux kmod e2fsprogs xfsprogs f2fs-tools btrfs-progs dmsetup libnbd-bin util-linux gcc libc6-dev make rauc dbus squashfs-tools openssl qemu-user)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	echo "deps: installing ${missing[*]}"
	SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update -qq
	$SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "deps: Go 1.26 or newer is required (https://go.dev/dl)"; exit 1; }
