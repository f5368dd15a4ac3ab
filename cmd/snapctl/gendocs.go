package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

func init() { register(newGenDocsCmd) }

// manHeader is the .TH line of every generated page but its date, which
// cobra takes from SOURCE_DATE_EPOCH or the clock.
var manHeader = doc.GenManHeader{Section: "1", Source: "snapctl", Manual: "snapctl manual"}

// defaultStateDir is the --state-dir default without SNAPCTL_STATE_DIR (see
// rootCmd).
const defaultStateDir = "/var/lib/snapctl"

func newGenDocsCmd(a *app) *cobra.Command {
	var manDir string
	c := &cobra.Command{
		Use:    "gen-docs --man DIR",
		Short:  "Write a man page for every command into DIR (make man)",
		Hidden: true,
		Args:   exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if manDir == "" {
				return newUsageError(cmd.CommandPath(), errors.New("--man DIR is required"))
			}
			n, err := genManPages(cmd.Root(), manDir)
			if err != nil {
				return err
			}
			a.printf("wrote %d man pages to %s\n", n, manDir)
			return nil
		},
	}
	c.Flags().StringVar(&manDir, "man", "", "directory for the man pages (snapctl.1, snapctl-NAME.1, ...)")
	return c
}

// genManPages writes one page per visible command of root's tree into dir,
// after removing the pages an earlier run left there, so a command that was
// removed or renamed loses its page. It returns how many it wrote.
func genManPages(root *cobra.Command, dir string) (int, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, fmt.Errorf("create man page directory: %w", err)
	}
	old, err := filepath.Glob(filepath.Join(dir, "snapctl*.1"))
	if err != nil {
		return 0, err
	}
	for _, p := range old {
		if err := os.Remove(p); err != nil {
			return 0, fmt.Errorf("remove stale man page: %w", err)
		}
	}
	// Execute adds the completion and help commands; a tree that was not
	// executed (a test) gets them here, so its pages are the same.
	root.InitDefaultCompletionCmd()
	root.InitDefaultHelpCmd()
	root.DisableAutoGenTag = true
	// The default shown for --state-dir follows SNAPCTL_STATE_DIR at run
	// time; the pages document the built-in default.
	if f := root.PersistentFlags().Lookup("state-dir"); f != nil {
		f.DefValue = defaultStateDir
	}
	manText(root)
	h := manHeader
	if err := doc.GenManTree(root, &h, dir); err != nil {
		return 0, fmt.Errorf("write man pages to %s: %w", dir, err)
	}
	pages, err := filepath.Glob(filepath.Join(dir, "snapctl*.1"))
	return len(pages), err
}

// manText rewrites the help texts of every command in the tree as the
// markdown the man page renderer reads: indented lines (examples, lists of
// modes, the exit code table) become preformatted blocks instead of being
// run together into one paragraph.
func manText(c *cobra.Command) {
	c.Long = manMarkdown(c.Long)
	for _, sub := range c.Commands() {
		manText(sub)
	}
}

func manMarkdown(s string) string {
	lines := strings.Split(s, "\n")
	var out []string
	inBlock := false
	for i, l := range lines {
		indented := strings.HasPrefix(l, "  ") && strings.TrimSpace(l) != ""
		// A blank line inside an indented run stays in the block.
		if inBlock && strings.TrimSpace(l) == "" && i+1 < len(lines) && strings.HasPrefix(lines[i+1], "  ") {
			out = append(out, "")
			continue
		}
		switch {
		case indented && !inBlock:
			out = append(out, "```")
			inBlock = true
		case !indented && inBlock:
			out = append(out, "```")
			inBlock = false
		}
		out = append(out, l)
	}
	if inBlock {
		out = append(out, "```")
	}
	return strings.Join(out, "\n")
}
