#!/usr/bin/env bash
# Filters the verbose e2e log: keeps the test lines and failures, drops the
# guest's boot chatter, and passes go test's exit status through.
set -uo pipefail
tee /tmp/snapctl-e2e.log | grep -Ev '^\s+guest\| (SELinux|mmapper|Warning: tempdir|Powering off|reboot:)' 
exit "${PIPESTATUS[0]}"
