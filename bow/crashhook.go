package bow

import (
	"fmt"

	"github.com/snapctl/snapctl/internal/crashhook"
)

// bow's step boundaries for the crash hook (package internal/crashhook, in
// test builds only): a point where the state on the device has just changed
// and been flushed: a checkpoint's copies of block 0, its first log block,
// a commit's block 0 put home, and in a restore each WOB mark, each older
// log block put back in block 0 and the final block 0. Each entry a restore
// copies back is a step too, though it is flushed only with the next of
// those: a killed process's writes stay in the kernel, so the kill tests
// that a repeated restore copes with any prefix of the copies. (Power cuts,
// which lose unflushed writes, are the unit crash tests' and the power-cut
// matrix's business.)

// crashPoint marks a step boundary. log and entry locate a restore step in
// the log chain (-1: not applicable). In a release build it is empty.
func crashPoint(step string, log, entry int) {
	if !crashhook.Enabled {
		return
	}
	if log >= 0 {
		step += fmt.Sprintf(" (log block %d", log)
		if entry >= 0 {
			step += fmt.Sprintf(", entry %d", entry)
		}
		step += ")"
	}
	crashhook.Point(step)
}
