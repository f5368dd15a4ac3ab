//go:build !linux

package bow

import (
	"errors"
	"os"
)

var errUnsupported = errors.New("block devices are supported on Linux only")

const exclusiveFlag = 0

func blockDeviceSize(*os.File) (int64, error)   { return 0, errUnsupported }
func blockDiscard(*os.File, int64, int64) error { return errUnsupported }
func punchHole(*os.File, int64, int64) error    { return errUnsupported }
func datasync(f *os.File) error                 { return f.Sync() }
