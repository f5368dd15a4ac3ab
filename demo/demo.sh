#!/bin/sh
# snapctl's demo session. It runs as root inside a user-mode Linux guest
# (see e2e/demo_test.go), on a blank 256 MiB disk /dev/ubda. Every command
# shown is real: a real kernel's device-mapper does the work.
set -eu
snapctl() { "$SNAPCTL_BIN" "$@"; }
export SNAPCTL_STATE_DIR="$(mktemp -d)"
M="$(mktemp -d)"
say() { printf '\n== %s\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }
# show_snapctl prints a command as the user types it and runs the binary.
sc() { printf '$ snapctl %s\n' "$*"; snapctl "$@"; }

say "The kernel: Linux $(uname -r), booted as user-mode Linux, with device-mapper"
sc targets

say "Attach /dev/ubda as volume 'data' and put ext4 on /dev/mapper/data"
sc attach data --origin /dev/ubda
mkfs.ext4 -q -F -b 4096 /dev/mapper/data
show mount /dev/mapper/data "$M"

say "Write five files and remember their checksums"
for i in 1 2 3 4 5; do head -c $((i * 300000)) /dev/urandom > "$M/file$i"; done
(cd "$M" && sha256sum file* > /tmp/demo.sums) && awk '{print substr($1, 1, 16) "...  " $2}' /tmp/demo.sums
sync

say "Checkpoint: snapshot the mounted filesystem, the store a file on that same filesystem"
sc prepare data --store "$M/.snapctl-store" --size auto --max-size 64M

say "The change: delete two files, overwrite one, add a big one"
rm "$M/file1" "$M/file2"
head -c 100000 /dev/urandom | dd of="$M/file3" conv=notrunc status=none
head -c 20000000 /dev/urandom > "$M/new-big-file"
sync
show ls "$M"
sc status data

say "Roll back: unmount, merge the snapshot back into the origin (userspace copy; /dev/mapper/data is removed meanwhile)"
show umount "$M"
sc rollback data
show mount /dev/mapper/data "$M"
show ls "$M"
(cd "$M" && sha256sum -c --quiet /tmp/demo.sums) && echo "all five files are back, byte for byte"
sc activate data   # deletes the store file the rollback brought back
umount "$M"
e2fsck -fn /dev/mapper/data >/dev/null 2>&1 && echo "e2fsck: the filesystem is clean"

say "Checkpoint again, change, and commit this time (cheap: the snapshot is dropped)"
mount /dev/mapper/data "$M"
sc prepare data --store "$M/.snapctl-store" --size 32M
echo "version 2" > "$M/file5"
sync
sc commit data
show cat "$M/file5"
umount "$M"
sc detach data

# The same on a device with no room for a store: bow, served over NBD.
sh "$(dirname "$0")/bow.sh" /dev/ubda
echo
echo "DEMO OK"
