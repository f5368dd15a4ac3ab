package platform

import (
	"errors"
	"fmt"
	"runtime"
)

// ErrUnsupported is what every kernel call returns on a system other than
// Linux. It wraps errors.ErrUnsupported.
var ErrUnsupported = fmt.Errorf("device-mapper, FIEMAP and NBD need Linux, not %s: %w", runtime.GOOS, errors.ErrUnsupported)
