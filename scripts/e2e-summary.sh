#!/usr/bin/env bash
# Filters the verbose e2e log for reading: drops the guest's boot chatter and
# keeps everything else; the full log stays in /tmp/snapctl-e2e.log. The
# Makefile runs it under pipefail, so go test's exit status decides.
tee /tmp/snapctl-e2e.log | grep -Ev '^\s+guest\| (SELinux|mmapper|Warning: tempdir|Powering off|reboot:)'
exit 0
