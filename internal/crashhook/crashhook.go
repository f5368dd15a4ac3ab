// Package crashhook lets the end-to-end crash matrices kill snapctl with
// SIGKILL at a step boundary of a multi-step operation, exactly as a power
// cut's process-side effect or an OOM kill would at that point.
//
// Nothing in the product sets its variables:
//   - SNAPCTL_TEST_CRASH_AT=STEP kills at the step named STEP;
//   - SNAPCTL_TEST_CRASH_AFTER=k kills at the k-th step this process reaches.
//
// A step boundary is a point where the durable record of the operation has
// just been written and the next kernel or disk action has not started.
package crashhook

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
)

var count int

// Point marks a step boundary named step.
func Point(step string) {
	if at := os.Getenv("SNAPCTL_TEST_CRASH_AT"); at != "" && at == step {
		fmt.Fprintf(os.Stderr, "snapctl: test hook: killed at step %s\n", step)
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
	}
	if n, err := strconv.Atoi(os.Getenv("SNAPCTL_TEST_CRASH_AFTER")); err == nil {
		count++
		if count == n {
			fmt.Fprintf(os.Stderr, "snapctl: test hook: killed at step %d (%s)\n", n, step)
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
	}
}
