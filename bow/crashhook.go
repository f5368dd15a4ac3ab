package bow

import (
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
)

// The crash hook exists for the end-to-end crash matrix only
// (e2e/reliability_bow_test.go); nothing in the product sets its variable.
// With SNAPCTL_TEST_CRASH_AFTER=k in the environment, the process announces
// every step boundary of a checkpoint, a commit and a restore on stderr
// ("snapctl: test hook: bow step N: NAME") and kills itself with SIGKILL
// right after the k-th, exactly as an OOM kill at that point would; k = 0
// only announces them, so a test can count the steps. This is the contract
// of the crash hook in package snapshot. The variable is read once, at
// start; unset, a step costs one comparison.
//
// A step boundary is a point where the state on the device has just changed
// and been flushed: a checkpoint's copies of block 0, its first log block,
// a commit's block 0 put home, and in a restore each WOB mark, each older
// log block put back in block 0 and the final block 0. Each entry a restore
// copies back is a step too, though it is flushed only with the next of
// those: a killed process's writes stay in the kernel, so the kill tests
// that a repeated restore copes with any prefix of the copies. (Power cuts,
// which lose unflushed writes, are the unit crash tests' and the power-cut
// matrix's business.)
const envCrashAfter = "SNAPCTL_TEST_CRASH_AFTER"

var (
	crashAfter = crashAfterFromEnv() // -1: the hook is off
	crashSteps atomic.Int64
)

func crashAfterFromEnv() int64 {
	n, err := strconv.ParseInt(os.Getenv(envCrashAfter), 10, 64)
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// crashPoint marks a step boundary. log and entry locate a restore step in
// the log chain (-1: not applicable).
func crashPoint(step string, log, entry int) {
	if crashAfter >= 0 {
		crashStep(step, log, entry)
	}
}

func crashStep(step string, log, entry int) {
	n := crashSteps.Add(1)
	if log >= 0 {
		step += fmt.Sprintf(" (log block %d", log)
		if entry >= 0 {
			step += fmt.Sprintf(", entry %d", entry)
		}
		step += ")"
	}
	fmt.Fprintf(os.Stderr, "snapctl: test hook: bow step %d: %s\n", n, step)
	if n == crashAfter {
		fmt.Fprintf(os.Stderr, "snapctl: test hook: killed after bow step %d\n", n)
		if p, err := os.FindProcess(os.Getpid()); err == nil {
			p.Kill() // SIGKILL on unix
		}
		select {} // the kill is on its way; never go on past the step
	}
}
