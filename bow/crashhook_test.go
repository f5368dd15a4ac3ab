//go:build crashhook

package bow

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/snapctl/snapctl/internal/crashhook"
)

// The crash hook's own test: a child process (this test binary) runs a
// checkpoint, writes, then a restore or a commit on an image file with
// SNAPCTL_TEST_CRASH_AFTER=k, for every k; the parent checks the child died
// by SIGKILL right after step k, then recovers the image as a user would
// (restore again, or roll forward) and compares it with what that step
// implies. The end-to-end matrix does the same through the real binary.

const (
	envHookChild = "BOW_CRASHHOOK_CHILD" // "restore" or "commit": run as the child
	envHookImage = "BOW_CRASHHOOK_IMAGE"
	hookBS       = 512
	hookBlocks   = 256
	hookWrites   = 45 // single blocks: three log blocks of 512 bytes
)

// hookWrite is the i-th write of the child: a block of the lower half (the
// upper half is free space), block 0 first.
func hookWrite(i int) (blk int64, data []byte) {
	return int64(i*5) % (hookBlocks / 2), pattern(hookBS, uint64(1000+i))
}

// init runs the child instead of the tests when this test binary is
// started as TestCrashHook's child: a checkpoint, the writes, then a commit
// or a restore, on the image file named in the environment.
func init() {
	scenario := os.Getenv(envHookChild)
	if scenario == "" {
		return
	}
	if err := hookChild(scenario, os.Getenv(envHookImage)); err != nil {
		fmt.Fprintln(os.Stderr, "crash hook child:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func hookChild(scenario, path string) error {
	f, err := OpenFile(path)
	if err != nil {
		return err
	}
	defer f.Close()
	e, err := Open(f, Options{BlockSize: hookBS, WriteBack: -1})
	if err != nil {
		return err
	}
	if err := e.Discard(hookBlocks/2*hookBS, hookBlocks/2*hookBS); err != nil {
		return err
	}
	if err := e.Checkpoint(context.Background()); err != nil {
		return err
	}
	for i := 0; i < hookWrites; i++ {
		blk, b := hookWrite(i)
		if _, err := e.WriteAt(b, blk*hookBS); err != nil {
			return err
		}
	}
	if scenario == "commit" {
		if err := e.Commit(context.Background()); err != nil {
			return err
		}
	}
	if err := e.Close(); err != nil {
		return err
	}
	if scenario == "restore" {
		if _, err := Restore(context.Background(), f, RestoreOptions{}); err != nil {
			return err
		}
	}
	return nil
}

var (
	hookStepLine   = regexp.MustCompile(`(?m)^snapctl: test hook: step (\d+): (.*)$`)
	hookKilledLine = regexp.MustCompile(`(?m)^snapctl: test hook: killed at step (\d+) \((.*)\)$`)
)

// runHookChild runs the child on a fresh image with the given k and
// returns its stderr and whether SIGKILL ended it.
func runHookChild(t *testing.T, scenario string, k int, base []byte) (path, stderr string, killed bool) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, base, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envHookChild+"="+scenario, envHookImage+"="+path, crashhook.EnvAfter+"="+strconv.Itoa(k))
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		ws, ok := ee.Sys().(syscall.WaitStatus)
		if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("%s child with k=%d: %v\n%s%s", scenario, k, err, out.String(), errOut.String())
		}
		killed = true
	default:
		t.Fatal(err)
	}
	return path, errOut.String(), killed
}

func TestCrashHook(t *testing.T) {
	base := pattern(hookBS*hookBlocks, 7)
	changed := append([]byte(nil), base...)
	for i := 0; i < hookWrites; i++ {
		blk, b := hookWrite(i)
		copy(changed[blk*hookBS:], b)
	}
	lower := func(b []byte) []byte { return b[:hookBlocks/2*hookBS] }
	for _, tc := range []struct {
		scenario string
		minSteps int // checkpoint 2, then a commit's 1 or a restore's 45 entries and 3 log blocks
	}{
		{"commit", 3},
		{"restore", 2 + hookWrites + 2},
	} {
		t.Run(tc.scenario, func(t *testing.T) {
			_, stderr, killed := runHookChild(t, tc.scenario, 0, base)
			steps := hookStepLine.FindAllStringSubmatch(stderr, -1)
			if killed || len(steps) < tc.minSteps {
				t.Fatalf("k=0: killed %v, %d steps announced, want no kill and at least %d:\n%s", killed, len(steps), tc.minSteps, stderr)
			}
			for i, s := range steps {
				if s[1] != strconv.Itoa(i+1) {
					t.Fatalf("step line %d numbered %s", i+1, s[1])
				}
			}
			last := steps[len(steps)-1][2]
			if want := map[string]string{"commit": "commit: block 0 home", "restore": "restore: block 0 home, restore done"}[tc.scenario]; !strings.HasPrefix(last, want) {
				t.Fatalf("last step %q, want %q", last, want)
			}
			for k := 1; k <= len(steps)+1; k++ {
				path, stderr, killed := runHookChild(t, tc.scenario, k, base)
				if killed != (k <= len(steps)) {
					t.Fatalf("k=%d of %d steps: killed %v", k, len(steps), killed)
				}
				got := hookStepLine.FindAllStringSubmatch(stderr, -1)
				if killed && (len(got) != k || got[k-1][2] != steps[k-1][2]) {
					t.Fatalf("k=%d: the child announced %d steps before dying, want %d ending at %q:\n%s", k, len(got), k, steps[k-1][2], stderr)
				}
				if kl := hookKilledLine.FindStringSubmatch(stderr); killed && (kl == nil || kl[1] != strconv.Itoa(k) || kl[2] != steps[k-1][2]) {
					t.Fatalf("k=%d: the child did not say it was killed at step %d (%s):\n%s", k, k, steps[k-1][2], stderr)
				}
				// Recover as the user would: rerun the restore, or roll
				// the checkpoint forward for a commit.
				f, err := OpenFile(path)
				if err != nil {
					t.Fatal(err)
				}
				_, ierr := Inspect(context.Background(), f)
				var nl NoLogError
				switch {
				case errors.As(ierr, &nl):
				case ierr != nil:
					t.Fatalf("k=%d: inspect after the kill: %v", k, ierr)
				case tc.scenario == "restore":
					_, err = Restore(context.Background(), f, RestoreOptions{})
				default:
					err = RollForward(context.Background(), f)
				}
				if err != nil {
					t.Fatalf("k=%d: recovery: %v", k, err)
				}
				img := readAll(t, f, int64(len(base)))
				f.Close()
				want, what := base, "the checkpoint image"
				if tc.scenario == "commit" && k >= 3 {
					want, what = changed, "the changed image"
				}
				if !bytes.Equal(lower(img), lower(want)) {
					t.Fatalf("k=%d (%s): after recovery the used half differs from %s at block %d", k, steps[min(k, len(steps))-1][2], what,
						diffBlocks(lower(img), lower(want), hookBS, nil))
				}
			}
			t.Logf("%d steps, each killed and recovered", len(steps))
		})
	}
}
