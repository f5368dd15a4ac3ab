package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestGroupCommands runs the group commands in-process against hand-written
// records (no kernel needed) and checks the exit code, the hint and what
// they print: the refusals happen before anything touches a device.
func TestGroupCommands(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	if err := os.MkdirAll(filepath.Join(state, "groups"), 0o700); err != nil {
		t.Fatal(err)
	}
	exitRecord(t, state, "plain", "attached")
	write := func(name, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(state, "groups", name+".json"), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("open", `{"format":1,"name":"open","members":["plain"],"sealed":false,"tries_left":0}`)
	write("sealed", `{"format":1,"name":"sealed","members":["plain"],"sealed":true,"tries":3,"tries_left":2,"try_boot":"x"}`)
	write("empty", `{"format":1,"name":"empty","members":[],"sealed":false,"tries_left":0}`)
	write("broken", `{"format":1,"name":"broken","members":["plain"],"sealed":tr`)
	sd := []string{"--state-dir", state}
	for _, c := range []struct {
		name string
		args []string
		code int
		hint string
	}{
		{"seal unknown", []string{"seal", "nosuch"}, exitRefused, "--group nosuch"},
		{"seal no tries", []string{"seal", "open", "--tries", "0"}, exitUsage, ""},
		{"seal huge tries", []string{"seal", "open", "--tries", "1000"}, exitUsage, ""},
		{"seal empty", []string{"seal", "empty"}, exitRefused, "snapctl prepare NAME ... --group empty"},
		{"mark-good unsealed", []string{"mark-good", "open"}, exitRefused, "snapctl seal open"},
		{"mark-good corrupt", []string{"mark-good", "broken"}, exitInvalidData, "group record"},
		{"status corrupt", []string{"status", "broken"}, exitInvalidData, "group record"},
		{"mark-bad unknown", []string{"mark-bad", "nosuch"}, exitRefused, "--group nosuch"},
		{"group named like a volume", []string{"prepare", "v", "--store", "/x", "--group", "plain"}, exitRefused, "a name is either"},
		{"volume named like a group", []string{"attach", "open", "--origin", "/dev/null"}, exitRefused, "another volume name"},
		{"bad group name", []string{"prepare", "v", "--store", "/x", "--group", "a/b"}, exitUsage, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, _, err := goldenRun(t, append(append(c.args, "--json"), sd...)...)
			code, hint := 0, ""
			if err != nil {
				code, hint = classify(err)
			}
			if code != c.code || !strings.Contains(hint, c.hint) {
				t.Fatalf("got exit %d hint %q (%v), want exit %d with a hint containing %q", code, hint, err, c.code, c.hint)
			}
			if out != "" {
				t.Errorf("a failure printed on stdout: %q", out)
			}
		})
	}
	// status GROUP: the group object, and the human form (of a group
	// without members: a member's status asks the kernel).
	write("sealed", `{"format":1,"name":"sealed","members":[],"sealed":false,"tries_left":0,"decision":"rollback","decided_by":"mark-bad","done":true}`)
	out, _, err := goldenRun(t, append([]string{"status", "sealed", "--json"}, sd...)...)
	if err != nil {
		t.Fatal(err)
	}
	var s struct {
		SchemaVersion int    `json:"schema_version"`
		State         string `json:"state"`
		TriesLeft     int    `json:"tries_left"`
		Members       []struct {
			Name, Phase string
		} `json:"members"`
	}
	if err := json.Unmarshal([]byte(out), &s); err != nil || s.SchemaVersion != 1 || s.State != "rolled-back" || s.TriesLeft != 0 || len(s.Members) != 0 {
		t.Fatalf("status sealed --json: %v\n%s", err, out)
	}
	out, _, err = goldenRun(t, append([]string{"status", "sealed"}, sd...)...)
	if err != nil || !strings.Contains(out, "update group, rolled-back") || !strings.Contains(out, "decision: rollback (by mark-bad)") {
		t.Fatalf("status sealed: %v\n%s", err, out)
	}
}
