// Package crashhook lets the crash tests kill snapctl with SIGKILL at a step
// boundary of a multi-step operation, exactly as an OOM kill or the process
// side of a power cut would at that point.
//
// The hook exists only in binaries built with the build tag crashhook (the
// end-to-end suite's snapctl and the unit tests that kill a child process,
// see `make unit` and e2e/uml_test.go). A release build (`make build`, no
// tag) compiles Point to nothing: Enabled is the constant false, every
// call site's work is dead code, and the variables below mean nothing to
// it. An e2e test runs the release binary with them set and checks that it
// completes.
//
// In a tagged build, the variables are read once, when the process starts:
//   - SNAPCTL_TEST_CRASH_AFTER=k: kill at the k-th step the process
//     reaches; k = 0 kills nowhere, so a test can count the steps;
//   - SNAPCTL_TEST_CRASH_AT=STEP: kill at the first step named STEP.
//
// With either set the process announces every step on stderr, numbered
// from 1 in the order it reaches them, and the step it kills itself at:
//
//	snapctl: test hook: step N: STEP
//	snapctl: test hook: killed at step N (STEP)
//
// The tests parse these lines. Unset, a step costs one comparison.
//
// A step boundary is a point where the durable record of the operation (a
// state record written ahead, or a flushed block on the device) has just
// changed and the next kernel or disk action has not started.
package crashhook

// The environment variables of the hook.
const (
	EnvAfter = "SNAPCTL_TEST_CRASH_AFTER"
	EnvAt    = "SNAPCTL_TEST_CRASH_AT"
)
