package main

import (
	"errors"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Exit codes; documented in exitCodeHelp and the README.
const (
	exitFailure     = 1
	exitUsage       = 2
	exitInvalidData = 3
	exitRefused     = 4
	exitUnsupported = 5
	exitNeedsRepair = 6
)

// usageError marks a bad command line.
type usageError struct {
	cmd string
	err error
}

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// newUsageError reports a bad flag value or argument combination.
func newUsageError(cmdPath string, err error) error { return usageError{cmd: cmdPath, err: err} }

// classifier maps an error a package returns to an exit code and a hint with
// the command that fixes or continues the operation. ok is false when the
// classifier does not know the error. Command files register their own.
type classifier func(err error) (code int, hint string, ok bool)

var classifiers []classifier

func registerClassifier(c classifier) { classifiers = append(classifiers, c) }

func classify(err error) (int, string) {
	var u usageError
	if errors.As(err, &u) {
		return exitUsage, ""
	}
	// cobra's own argument errors: an unknown command or flag.
	if msg := err.Error(); strings.HasPrefix(msg, "unknown command ") || strings.HasPrefix(msg, "unknown flag") || strings.HasPrefix(msg, "unknown shorthand flag") {
		return exitUsage, "see `snapctl --help`"
	}
	for _, c := range classifiers {
		if code, hint, ok := c(err); ok {
			return code, hint
		}
	}
	switch {
	case errors.Is(err, os.ErrPermission), errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return exitUnsupported, "snapctl drives the kernel's device-mapper and block devices: run it as root"
	case errors.Is(err, unix.EBUSY):
		return exitRefused, ""
	}
	return exitFailure, ""
}
