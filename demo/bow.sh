#!/bin/sh
# The bow part of snapctl's demo: a device with no room for a snapshot store
# is checkpointed using its own free space. It runs as root inside a
# user-mode Linux guest with nbd.ko loaded, on the disk given as $1 (default
# /dev/ubda; its contents are destroyed). demo/demo.sh calls it; it also
# runs on its own (TestBowDemo). Every command shown is real.
set -eu
DEV="${1:-/dev/ubda}"
NBD=/dev/nbd0
snapctl() { "$SNAPCTL_BIN" "$@"; }
export SNAPCTL_STATE_DIR="${SNAPCTL_STATE_DIR:-$(mktemp -d)}"
M="$(mktemp -d)"
say() { printf '\n== %s\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }
sc() { printf '$ snapctl %s\n' "$*"; snapctl "$@"; }

say "bow: serve $DEV through the backup-on-write engine as $NBD (the kernel's NBD client)"
printf '$ snapctl bow serve %s --nbd %s &\n' "$DEV" "$NBD"
"$SNAPCTL_BIN" bow serve "$DEV" --nbd "$NBD" &   # the binary itself, so $! is the server
SERVER=$!
i=0
until snapctl bow status "$DEV" >/dev/null 2>&1; do
	i=$((i + 1))
	[ "$i" -lt 200 ] || { echo "the bow server did not come up"; exit 1; }
	sleep 0.1
done

say "ext4 on $NBD, five files, then fstrim tells bow which blocks are free"
mkfs.ext4 -q -F "$NBD"
show mount "$NBD" "$M"
for i in 1 2 3 4 5; do head -c $((i * 300000)) /dev/urandom > "$M/file$i"; done
(cd "$M" && sha256sum file* > /tmp/bow-demo.sums) && awk '{print substr($1, 1, 16) "...  " $2}' /tmp/bow-demo.sums
sync
show fstrim -v "$M"

say "Checkpoint: from now on every overwrite first copies the old data into free space"
sc bow checkpoint "$DEV"

say "The change: delete two files, overwrite one in place, add a big one"
rm "$M/file1" "$M/file2"
head -c 100000 /dev/urandom | dd of="$M/file3" conv=notrunc status=none
head -c 20000000 /dev/urandom > "$M/new-big-file"
sync
show ls "$M"
sc bow status "$DEV"

say "Roll back: unmount, stop the server (SIGTERM), restore the checkpoint on the raw disk"
show umount "$M"
printf '$ kill %s   # the server flushes, disconnects %s and saves its map\n' "$SERVER" "$NBD"
kill "$SERVER"
wait "$SERVER"
sc bow restore "$DEV"
show mount "$DEV" "$M"
show ls "$M"
(cd "$M" && sha256sum -c --quiet /tmp/bow-demo.sums) && echo "all five files are back, byte for byte"
umount "$M"
e2fsck -fn "$DEV" >/dev/null 2>&1 && echo "e2fsck: the filesystem is clean"
echo
echo "BOW DEMO OK"
