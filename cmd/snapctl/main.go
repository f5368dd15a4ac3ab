// Command snapctl makes block-device updates revertible on Linux: a
// dm-snapshot over a file-backed exception store (checkpoint and update
// modes), an offline merge of that store, and bow, a userspace
// backup-on-write block device served over NBD.
package main

import (
	"errors"
	"fmt"
	"os"
)

func main() {
	a := newApp(os.Stdout, os.Stderr)
	root := a.rootCmd()
	err := root.Execute()
	if err == nil {
		return
	}
	code, hint := classify(err)
	fmt.Fprintf(os.Stderr, "snapctl: %v\n", err)
	if hint != "" {
		fmt.Fprintf(os.Stderr, "hint: %s\n", hint)
	}
	var u usageError
	if errors.As(err, &u) {
		fmt.Fprintf(os.Stderr, "Run '%s --help' for usage.\n", u.cmd)
	}
	os.Exit(code)
}
