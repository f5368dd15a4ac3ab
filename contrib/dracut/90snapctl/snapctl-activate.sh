#!/bin/sh
# Installed as /sbin/snapctl-activate in the initramfs and run by dracut's
# main loop (see module-setup.sh): `snapctl activate` with the state records
# from the filesystem named in /etc/snapctl/initramfs.conf
# (SNAPCTL_STATE_DEV, SNAPCTL_STATE_FSTYPE, SNAPCTL_STATE_PATH) or by
# snapctl.state=DEV[:PATH] on the kernel command line. The state must not be
# on a snapshotted origin, so for a root volume it is on another filesystem.
# Until the state device appears it does nothing (the loop runs it again);
# once it has run, a marker in /run keeps it from running twice.

. /lib/dracut-lib.sh

done_marker=/run/snapctl-activated
[ -e "$done_marker" ] && exit 0

SNAPCTL_STATE_DEV=""
SNAPCTL_STATE_FSTYPE="auto"
SNAPCTL_STATE_PATH="/snapctl"
[ -f /etc/snapctl/initramfs.conf ] && . /etc/snapctl/initramfs.conf
v=$(getarg snapctl.state=)
if [ -n "$v" ]; then
	SNAPCTL_STATE_DEV="${v%%:*}"
	case "$v" in *:*) SNAPCTL_STATE_PATH="${v#*:}" ;; esac
fi
if [ -z "$SNAPCTL_STATE_DEV" ]; then
	warn "snapctl: no state device configured (SNAPCTL_STATE_DEV or snapctl.state=); not activating"
	: >"$done_marker"
	exit 0
fi
# Not there yet: the main loop runs this again after the next settle.
[ -b "$SNAPCTL_STATE_DEV" ] || exit 0

modprobe -q dm-snapshot
mnt=/run/snapctl-state
mkdir -p "$mnt"
if ! mount -t "$SNAPCTL_STATE_FSTYPE" "$SNAPCTL_STATE_DEV" "$mnt"; then
	warn "snapctl: cannot mount $SNAPCTL_STATE_DEV; volumes not activated"
	: >"$done_marker"
	exit 0
fi
info "snapctl: activating volumes"
/usr/sbin/snapctl activate --state-dir "$mnt$SNAPCTL_STATE_PATH" ||
	warn "snapctl: activate failed (exit $?): run 'snapctl status' once booted"
umount "$mnt"
: >"$done_marker"
exit 0
