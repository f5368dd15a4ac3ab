//go:build crashhook

package crashhook

import (
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

// Enabled reports whether this binary was built with the hook.
const Enabled = true

var (
	after = afterFromEnv()   // -1: no kill by count
	at    = os.Getenv(EnvAt) // "": no kill by name
	armed = after >= 0 || at != ""
	steps atomic.Int64
)

func afterFromEnv() int64 {
	n, err := strconv.ParseInt(os.Getenv(EnvAfter), 10, 64)
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// Point marks a step boundary named step: announced, and the process killed
// there, as the environment says.
func Point(step string) {
	if !armed {
		return
	}
	n := steps.Add(1)
	fmt.Fprintf(os.Stderr, "snapctl: test hook: step %d: %s\n", n, step)
	if n == after || (at != "" && step == at) {
		fmt.Fprintf(os.Stderr, "snapctl: test hook: killed at step %d (%s)\n", n, step)
		kill()
	}
}

// kill sends SIGKILL to the process and never returns: nothing runs past
// the step, whichever goroutine reached it.
func kill() {
	if p, err := os.FindProcess(os.Getpid()); err == nil {
		p.Kill() // SIGKILL on unix
	}
	for {
		time.Sleep(time.Hour)
	}
}
