#!/usr/bin/env bash
# check-units.sh: checks the boot integration shipped in contrib/.
#   - the systemd units with `systemd-analyze verify` (installing systemd with
#     apt when it is missing); any message it prints fails the check, since
#     it reports unknown keys and bad dependencies as warnings only. Their
#     Documentation= man pages are looked up in docs/man. A template unit
#     (snapctl-mark-good@.service) is verified as an instance, which
#     systemd-analyze names NAME@i.service.
#   - the shell syntax of the initramfs-tools and dracut scripts (and
#     shellcheck, when it is installed).
# systemd-analyze needs no running systemd (it works in a container), but it
# checks that every ExecStart= binary exists: the units are verified in a
# copy pointing at a snapctl built from this tree (or BIN=path).
# Usage: scripts/check-units.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

if ! command -v systemd-analyze >/dev/null 2>&1; then
	echo "check-units: systemd-analyze not found; installing systemd" >&2
	sudo=""
	[ "$(id -u)" = 0 ] || sudo=sudo
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

bin=${BIN:-}
if [ -z "$bin" ]; then
	bin=$tmp/snapctl
	(cd "$root" && CGO_ENABLED=0 go build -o "$bin" ./cmd/snapctl)
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

mkdir -p "$tmp/units" "$tmp/man/man1"
for u in snapctl-activate.service snapctl-monitor.service snapctl-mark-good@.service; do
	[ -f "$root/contrib/systemd/$u" ] || { echo "check-units: contrib/systemd/$u is missing" >&2; fail=1; }
done
for u in "$root"/contrib/systemd/*.service; do
	sed "s|/usr/sbin/snapctl|$bin|g" "$u" >"$tmp/units/$(basename "$u")"
done
man_opt=--man=yes
if command -v man >/dev/null 2>&1 && compgen -G "$root/docs/man/*.1" >/dev/null; then
	cp "$root"/docs/man/*.1 "$tmp/man/man1/"
else
	echo "check-units: no man(1) or no docs/man pages: Documentation= links not checked" >&2
	man_opt=--man=no
fi
out=$(cd "$tmp/units" && MANPATH="$tmp/man" systemd-analyze verify "$man_opt" ./*.service 2>&1) || fail=1
if [ -n "$out" ]; then
	echo "check-units: systemd-analyze verify:" >&2
	echo "$out" | sed "s|$tmp/units/||g" >&2
	fail=1
fi

for s in "$root"/contrib/initramfs-tools/hooks/snapctl \
	"$root"/contrib/initramfs-tools/scripts/local-top/snapctl \
	"$root"/contrib/dracut/90snapctl/snapctl-activate.sh \
	"$root"/contrib/dracut/90snapctl/snapctl-queue.sh; do
	sh -n "$s" || { echo "check-units: syntax error in ${s#"$root"/}" >&2; fail=1; }
done
bash -n "$root"/contrib/dracut/90snapctl/module-setup.sh ||
	{ echo "check-units: syntax error in contrib/dracut/90snapctl/module-setup.sh" >&2; fail=1; }
if command -v shellcheck >/dev/null 2>&1; then
	shellcheck -S warning -s sh -e SC1090,SC1091 \
		"$root"/contrib/initramfs-tools/hooks/snapctl \
		"$root"/contrib/initramfs-tools/scripts/local-top/snapctl \
		"$root"/contrib/dracut/90snapctl/snapctl-*.sh || fail=1
	shellcheck -S warning -s bash -e SC1090,SC1091,SC2154 "$root"/contrib/dracut/90snapctl/module-setup.sh || fail=1
fi

if [ "$fail" != 0 ]; then
	echo "check-units: FAIL" >&2
	exit 1
fi
echo "check-units: ok ($(ls "$root"/contrib/systemd/*.service | wc -l) units, initramfs-tools and dracut scripts)"
