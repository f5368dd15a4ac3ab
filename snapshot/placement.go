package snapshot

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/snapctl/snapctl/dmtable"
	"github.com/snapctl/snapctl/fiemap"
)

// Placement is where a dry run's store would go. The store's segments (the
// NAME-cow table) are not known before the file is allocated: the
// filesystem chooses its blocks then. What is known is the filesystem that
// will allocate them and the raw devices beneath it that the segments will
// be on.
type Placement struct {
	Filesystem string  `json:"filesystem"`          // "ext4", "xfs", "f2fs"
	FSDev      string  `json:"fs_dev"`              // the filesystem's device, "major:minor"
	FSDevice   string  `json:"fs_device,omitempty"` // its device node, when found
	Backend    Backend `json:"backend"`             // "fiemap" or "loop"
	// Devices are the raw devices ("major:minor") beneath the filesystem
	// that the segments will be on (fiemap backend); with the loop backend
	// the store is one segment on a loop device attached over the file.
	Devices []string `json:"devices,omitempty"`
}

// placement is the real storeFS's answer: the filesystem of the store's
// directory, and the raw devices beneath it, found by resolving the whole
// filesystem device down its linear stack as prepare will resolve the
// file's extents. A filesystem prepare cannot map (mounted directly on a
// disk with the fiemap backend, or over another target) is refused here as
// prepare would refuse it after allocating.
func (fileStore) placement(path string, backend Backend) (*Placement, error) {
	fs, err := fiemap.StatFS(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	p := &Placement{Filesystem: fs.Type, FSDev: fs.Dev, Backend: backend}
	if node, err := dmtable.PathByDev(fs.Major, fs.Minor); err == nil {
		p.FSDevice = node
	}
	if backend == BackendLoop {
		return p, nil
	}
	t, ok, err := dmtable.TableByDev(fs.Major, fs.Minor)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fiemap.DirectMountError{Path: path, Dev: fs.Dev}
	}
	var sectors uint64
	for _, tg := range t {
		sectors = max(sectors, tg.Start+tg.Length)
	}
	segs, err := fiemap.Resolve([]fiemap.Extent{{Length: sectors * 512}}, fs.Major, fs.Minor, dmtable.TableByDev)
	if err != nil {
		var dm fiemap.DirectMountError
		if errors.As(err, &dm) {
			dm.Path = path
			return nil, dm
		}
		return nil, fmt.Errorf("resolve the devices beneath %s: %w", fs.Dev, err)
	}
	for _, s := range segs {
		if !slices.Contains(p.Devices, s.Dev) {
			p.Devices = append(p.Devices, s.Dev)
		}
	}
	return p, nil
}
