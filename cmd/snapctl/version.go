package main

import (
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version is set at link time with -ldflags "-X main.version=...".
var version = "dev"

func init() { register(newVersionCmd) }

func newVersionCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print snapctl's version",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			v := versionDoc{Version: version, Go: runtime.Version()}
			if bi, ok := debug.ReadBuildInfo(); ok {
				v.Module = bi.Main.Path
			}
			if a.json {
				return a.printDoc(&v)
			}
			a.printf("snapctl %s (%s)\n", v.Version, v.Go)
			return nil
		},
	}
}

// versionDoc is `snapctl version --json`.
type versionDoc struct {
	schema
	Version string `json:"version"`
	Go      string `json:"go"`
	Module  string `json:"module,omitempty"`
}
