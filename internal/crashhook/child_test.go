package crashhook

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// envChild makes this test binary a child that calls Point for each of the
// comma-separated steps it names and exits 0: what the environment does to
// it is the hook's behaviour.
const envChild = "CRASHHOOK_TEST_CHILD_STEPS"

func init() {
	steps := os.Getenv(envChild)
	if steps == "" {
		return
	}
	for _, s := range strings.Split(steps, ",") {
		Point(s)
	}
	fmt.Println("child: all steps passed")
	os.Exit(0)
}

// runChild runs the child with the steps and the extra environment, and
// returns its stdout, its stderr and whether SIGKILL ended it.
func runChild(t *testing.T, steps string, env ...string) (stdout, stderr string, killed bool) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envChild+"="+steps)
	cmd.Env = append(cmd.Env, env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		ws, ok := ee.Sys().(syscall.WaitStatus)
		if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("child with %v: %v\n%s%s", env, err, out.String(), errOut.String())
		}
		killed = true
	default:
		t.Fatal(err)
	}
	return out.String(), errOut.String(), killed
}

const childSteps = "prepare:cow,prepare:real,prepare:snap,prepare:origin"
