#!/usr/bin/env bash
# Filters the verbose e2e log for reading: drops the guest's boot chatter and
# keeps everything else; the full log stays in /tmp/snapctl-e2e.log. It reads
# both passes of `make e2e` (the functional tests, two guests at a time, then
# the benchmarks alone); guest lines are "    guest TestName| ...". The
# Makefile runs it under pipefail, so the two go test exit statuses decide.
# At the end it counts the top-level tests of both passes and lists the
# tests whose guest timed out once and passed on a second boot (InGuest's
# RETRY): not failures, but each deserves a look, since an intermittent
# hang of snapctl's own would show up here first.
log=/tmp/snapctl-e2e.log
tee "$log" | grep -Ev '^\s+guest [^|]*\| (SELinux|mmapper|Warning: tempdir|Powering off|reboot:)'
pass=$(grep -cE '^--- PASS: Test' "$log")
fail=$(grep -cE '^--- FAIL: Test' "$log")
echo
echo "e2e: top-level tests, both passes: $pass passed, $fail failed"
if ((fail > 0)); then
	grep -E '^--- FAIL: Test' "$log"
fi
if retries=$(grep -E '^\s+\S+_test\.go:[0-9]+: RETRY:' "$log"); then
	echo
	echo "e2e: $(wc -l <<<"$retries") guest boot(s) timed out and were retried:"
	echo "$retries"
fi
exit 0
