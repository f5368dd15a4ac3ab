//go:build !crashhook

package crashhook

import "testing"

// TestReleaseIgnoresHook: in a build without the tag, the variables that
// arm the hook change nothing: every step passes, nothing is printed.
func TestReleaseIgnoresHook(t *testing.T) {
	if Enabled {
		t.Fatal("Enabled is true in a build without the crashhook tag")
	}
	for _, env := range [][]string{
		{EnvAfter + "=1"},
		{EnvAfter + "=0"},
		{EnvAt + "=prepare:snap"},
		{EnvAfter + "=2", EnvAt + "=prepare:cow"},
	} {
		out, errOut, killed := runChild(t, childSteps, env...)
		if killed || out != "child: all steps passed\n" || errOut != "" {
			t.Errorf("%v: killed %v, stdout %q, stderr %q; want every step passed and nothing on stderr", env, killed, out, errOut)
		}
	}
}
