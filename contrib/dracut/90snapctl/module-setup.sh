#!/bin/bash
# dracut module: activates snapctl volumes in the initramfs, before the root
# filesystem is mounted, so a root filesystem on /dev/mapper/NAME comes up
# rolled back, merging, or with its snapshot rebuilt (as
# snapctl-activate.service does for other filesystems once booted).
#
# Install (Fedora, RHEL, openSUSE, Arch with dracut):
#   install -m 0755 bin/snapctl /usr/sbin/snapctl
#   cp -r contrib/dracut/90snapctl /usr/lib/dracut/modules.d/
#   install -m 0644 contrib/initramfs-tools/snapctl.conf /etc/snapctl/initramfs.conf   # then edit it
#   dracut --force --add snapctl
# or boot with snapctl.state=DEV[:PATH] on the kernel command line.
#
# dracut waits in its main loop until the root device exists; with
# root=/dev/mapper/NAME that device exists only once snapctl has activated
# it, so activation is a job of that loop (initqueue, settled), not a
# pre-mount hook, which would run only after the root device appeared.

# check: include the module only when asked (--add snapctl) and snapctl is
# installed.
check() {
	require_binaries /usr/sbin/snapctl || return 1
	return 255
}

depends() {
	echo dm
	return 0
}

installkernel() {
	instmods dm-mod dm-bufio dm-snapshot
}

install() {
	inst_binary /usr/sbin/snapctl
	inst_multiple -o modprobe mount umount mkdir
	[ -f /etc/snapctl/initramfs.conf ] && inst_simple /etc/snapctl/initramfs.conf
	inst_script "$moddir/snapctl-activate.sh" /sbin/snapctl-activate
	inst_hook cmdline 90 "$moddir/snapctl-queue.sh"
}
