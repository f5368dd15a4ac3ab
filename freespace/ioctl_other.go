//go:build !linux

package freespace

import "github.com/snapctl/snapctl/internal/platform"

// Free returns platform.ErrUnsupported outside Linux.
func Free(mountpoint string) ([]Extent, error) { return nil, platform.ErrUnsupported }

// Freeze returns platform.ErrUnsupported outside Linux.
func Freeze(mountpoint string) error { return platform.ErrUnsupported }

// Thaw returns platform.ErrUnsupported outside Linux.
func Thaw(mountpoint string) error { return platform.ErrUnsupported }
