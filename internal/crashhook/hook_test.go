//go:build crashhook

package crashhook

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
)

var (
	stepLine   = regexp.MustCompile(`(?m)^snapctl: test hook: step (\d+): (.*)$`)
	killedLine = regexp.MustCompile(`(?m)^snapctl: test hook: killed at step (\d+) \((.*)\)$`)
)

func TestHookEnabled(t *testing.T) {
	if !Enabled {
		t.Fatal("Enabled is false in a build with the crashhook tag")
	}
}

// TestHookAfter: SNAPCTL_TEST_CRASH_AFTER=k announces steps 1..k and kills
// at step k; k = 0 and k past the last step announce every step and kill
// nowhere.
func TestHookAfter(t *testing.T) {
	names := strings.Split(childSteps, ",")
	for k := 0; k <= len(names)+1; k++ {
		t.Run(strconv.Itoa(k), func(t *testing.T) {
			out, errOut, killed := runChild(t, childSteps, EnvAfter+"="+strconv.Itoa(k))
			wantKilled := k >= 1 && k <= len(names)
			if killed != wantKilled {
				t.Fatalf("killed %v, want %v:\n%s%s", killed, wantKilled, out, errOut)
			}
			steps := stepLine.FindAllStringSubmatch(errOut, -1)
			want := len(names)
			if wantKilled {
				want = k
			}
			if len(steps) != want {
				t.Fatalf("%d steps announced, want %d:\n%s", len(steps), want, errOut)
			}
			for i, s := range steps {
				if s[1] != strconv.Itoa(i+1) || s[2] != names[i] {
					t.Fatalf("announcement %d is step %s %q, want %d %q", i+1, s[1], s[2], i+1, names[i])
				}
			}
			kl := killedLine.FindStringSubmatch(errOut)
			switch {
			case wantKilled && (kl == nil || kl[1] != strconv.Itoa(k) || kl[2] != names[k-1]):
				t.Fatalf("kill line %q, want step %d (%s):\n%s", kl, k, names[k-1], errOut)
			case !wantKilled && (kl != nil || out != "child: all steps passed\n"):
				t.Fatalf("not killed, yet kill line %q or stdout %q", kl, out)
			}
		})
	}
}

// TestHookAt: SNAPCTL_TEST_CRASH_AT=STEP kills at the step named STEP,
// and a name no step has kills nowhere.
func TestHookAt(t *testing.T) {
	_, errOut, killed := runChild(t, childSteps, EnvAt+"=prepare:snap")
	kl := killedLine.FindStringSubmatch(errOut)
	if !killed || kl == nil || kl[1] != "3" || kl[2] != "prepare:snap" || len(stepLine.FindAllString(errOut, -1)) != 3 {
		t.Fatalf("AT=prepare:snap: killed %v, kill line %q, want killed at step 3 after 3 announcements:\n%s", killed, kl, errOut)
	}
	out, errOut, killed := runChild(t, childSteps, EnvAt+"=prepare:none")
	if killed || out != "child: all steps passed\n" || len(stepLine.FindAllString(errOut, -1)) != 4 {
		t.Fatalf("AT=prepare:none: killed %v, stdout %q, want 4 steps announced and no kill:\n%s", killed, out, errOut)
	}
}

// TestHookUnarmed: without the variables, or with a count that is not a
// number, the hook neither announces nor kills.
func TestHookUnarmed(t *testing.T) {
	for _, env := range [][]string{nil, {EnvAfter + "=x"}, {EnvAfter + "=-1"}, {EnvAt + "="}} {
		out, errOut, killed := runChild(t, childSteps, env...)
		if killed || out != "child: all steps passed\n" || errOut != "" {
			t.Errorf("%v: killed %v, stdout %q, stderr %q; want every step passed, nothing on stderr", env, killed, out, errOut)
		}
	}
}
