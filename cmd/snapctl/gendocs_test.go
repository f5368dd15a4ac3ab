package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// manDate is the date field of a page's .TH line, which follows the clock:
// the comparison ignores it.
var manDate = regexp.MustCompile(`(?m)^(\.TH "[^"]*" "[^"]*" )"[^"]*"`)

// TestManPagesCurrent regenerates the man pages from the command tree and
// fails when docs/man differs: a command, flag or help text changed without
// `make man`.
func TestManPagesCurrent(t *testing.T) {
	t.Setenv("SNAPCTL_STATE_DIR", "/somewhere/else") // must not leak into the pages
	dir := t.TempDir()
	var out, errOut bytes.Buffer
	root := newApp(&out, &errOut).rootCmd()
	root.SetArgs([]string{"gen-docs", "--man", dir})
	if err := root.Execute(); err != nil {
		t.Fatalf("gen-docs: %v\n%s", err, errOut.String())
	}
	committed := filepath.Join("..", "..", "docs", "man")
	got, _ := filepath.Glob(filepath.Join(dir, "*.1"))
	want, _ := filepath.Glob(filepath.Join(committed, "*.1"))
	base := func(ps []string) []string {
		var b []string
		for _, p := range ps {
			b = append(b, filepath.Base(p))
		}
		return b
	}
	if len(got) == 0 {
		t.Fatal("gen-docs wrote no pages")
	}
	stale := false
	if g, w := base(got), base(want); !slices.Equal(g, w) {
		t.Errorf("docs/man has pages %v, the command tree gives %v", w, g)
		stale = true
	}
	for _, p := range got {
		g, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		w, err := os.ReadFile(filepath.Join(committed, filepath.Base(p)))
		if err != nil {
			continue // reported above
		}
		if manDate.ReplaceAllString(string(g), `$1"-"`) != manDate.ReplaceAllString(string(w), `$1"-"`) {
			t.Errorf("docs/man/%s is stale", filepath.Base(p))
			stale = true
		}
	}
	if stale {
		t.Errorf("the man pages are out of date: run `make man` and commit docs/man")
	}
	if strings.Contains(mustRead(t, filepath.Join(dir, "snapctl.1")), "/somewhere/else") {
		t.Errorf("SNAPCTL_STATE_DIR leaked into the man pages")
	}
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestManPageContent checks what a page must carry: every visible command
// has one, the root page has the exit codes, hidden commands have none, and
// an indented example stays a preformatted block.
func TestManPageContent(t *testing.T) {
	dir := t.TempDir()
	root := newApp(&bytes.Buffer{}, &bytes.Buffer{}).rootCmd()
	n, err := genManPages(root, dir)
	if err != nil {
		t.Fatal(err)
	}
	var visible []string
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if !c.IsAvailableCommand() && c != root {
			if c.Hidden {
				if _, err := os.Stat(filepath.Join(dir, strings.ReplaceAll(c.CommandPath(), " ", "-")+".1")); err == nil {
					t.Errorf("hidden command %q has a man page", c.CommandPath())
				}
			}
			return
		}
		visible = append(visible, c.CommandPath())
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(root)
	if n != len(visible) {
		t.Errorf("got %d pages, want one per visible command: %d (%v)", n, len(visible), visible)
	}
	for _, c := range visible {
		if _, err := os.Stat(filepath.Join(dir, strings.ReplaceAll(c, " ", "-")+".1")); err != nil {
			t.Errorf("no page for %q: %v", c, err)
		}
	}
	top := mustRead(t, filepath.Join(dir, "snapctl.1"))
	for _, want := range []string{"Exit codes:", "6  an interrupted operation needs recovery", `.TH "SNAPCTL" "1"`, "snapctl manual"} {
		if !strings.Contains(top, want) {
			t.Errorf("snapctl.1 lacks %q", want)
		}
	}
	// The attach example stays on its own lines (a .EX/.nf block), rather
	// than being run into the paragraph before it.
	attach := mustRead(t, filepath.Join(dir, "snapctl-attach.1"))
	if !regexp.MustCompile(`(?m)^  snapctl attach data --origin /dev/sdb1\n  mount /dev/mapper/data /data$`).MatchString(attach) {
		t.Errorf("snapctl-attach.1: the example is not preformatted:\n%s", attach)
	}
}

func TestManMarkdown(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain text\nmore", "plain text\nmore"},
		{"Example:\n  a b\n  c d\nafter", "Example:\n```\n  a b\n  c d\n```\nafter"},
		{"x\n  one\n\n  two\n\ny", "x\n```\n  one\n\n  two\n```\n\ny"},
		{"ends indented\n  last", "ends indented\n```\n  last\n```"},
	} {
		if got := manMarkdown(tc.in); got != tc.want {
			t.Errorf("manMarkdown(%q):\ngot  %q\nwant %q", tc.in, got, tc.want)
		}
	}
}

// TestCompletion checks the shell completions generated from the command
// tree: every shell's script is produced, and completing a command name
// offers every visible command and no hidden one.
func TestCompletion(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish"} {
		out, errOut, err := goldenRun(t, "completion", sh)
		if err != nil || !strings.Contains(out, "snapctl") || len(out) < 1000 {
			t.Errorf("completion %s: err %v, %d bytes of script\n%s", sh, err, len(out), errOut)
		}
	}
	out, _, err := goldenRun(t, "__complete", "")
	if err != nil {
		t.Fatal(err)
	}
	var offered []string
	for _, l := range strings.Split(out, "\n") {
		if name, _, _ := strings.Cut(l, "\t"); name != "" && !strings.HasPrefix(name, ":") {
			offered = append(offered, name)
		}
	}
	root := newApp(&bytes.Buffer{}, &bytes.Buffer{}).rootCmd()
	for _, c := range root.Commands() {
		if c.Hidden && slices.Contains(offered, c.Name()) {
			t.Errorf("completion offers the hidden command %q", c.Name())
		}
		if !c.Hidden && !slices.Contains(offered, c.Name()) {
			t.Errorf("completion does not offer %q (offered %v)", c.Name(), offered)
		}
	}
	out, _, err = goldenRun(t, "__complete", "prepare", "x", "--mo")
	if err != nil || !strings.Contains(out, "--mode") {
		t.Errorf("flag completion for prepare --mo: %q, %v", out, err)
	}
}
