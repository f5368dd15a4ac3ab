//go:build !crashhook

package crashhook

// Enabled reports whether this binary was built with the hook: not in a
// release build.
const Enabled = false

// Point marks a step boundary; in a release build it does nothing, and the
// compiler drops the call.
func Point(string) {}
