package snapshot

import (
	"errors"
	"fmt"
	"os"

	"github.com/snapctl/snapctl/dmtable"
)

// A flush of NAME-cow is sent by device-mapper to every target of its
// table: one per store segment, and a fragmented store has up to 50,000
// (35-108 ms a flush in user-mode Linux). What the kernel or snapctl
// wrote through NAME-cow has already reached the raw devices beneath it
// when the write completed; a flush of each of those devices, usually
// one, makes it durable at the cost of a single flush.

// syncStore makes durable what was written through NAME-cow: it flushes
// each raw device the store's segments are on, once.
func (v *volume) syncStore() error {
	seen := map[string]bool{}
	for _, s := range v.rec.Store.Segments {
		if seen[s.Dev] {
			continue
		}
		seen[s.Dev] = true
		if err := v.m.k.syncRaw(s.Dev); err != nil {
			return fmt.Errorf("flush the store's device %s: %w", s.Dev, err)
		}
	}
	return nil
}

// syncRaw flushes the block device dev ("major:minor") through its node:
// fsync of a block device writes its dirty pages and sends the device a
// flush of its volatile cache.
func (dmKernel) syncRaw(dev string) error {
	major, minor, err := dmtable.ParseDevNum(dev)
	if err != nil {
		return err
	}
	p, err := dmtable.PathByDev(major, minor)
	if err != nil {
		return err
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return errors.Join(fmt.Errorf("sync %s: %w", p, err), f.Close())
	}
	return f.Close()
}
