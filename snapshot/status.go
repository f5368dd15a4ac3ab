package snapshot

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/snapctl/snapctl/cowsize"
	"github.com/snapctl/snapctl/dmtable"
)

// DeviceStatus is one device of a volume's stack as the kernel sees it.
type DeviceStatus struct {
	Name      string `json:"name"`
	Exists    bool   `json:"exists"`
	Dev       string `json:"dev,omitempty"`
	Suspended bool   `json:"suspended,omitempty"`
	OpenCount int32  `json:"open_count"`
	Table     string `json:"table,omitempty"`
}

// Usage is how full the store is, from the kernel's snapshot status.
type Usage struct {
	State            dmtable.SnapshotState `json:"state"` // active, invalid, overflow, merge failed, unknown
	AllocatedSectors uint64                `json:"allocated_sectors"`
	TotalSectors     uint64                `json:"total_sectors"`
	MetadataSectors  uint64                `json:"metadata_sectors"`
	DataChunks       uint64                `json:"data_chunks"`
	ChunksLeft       uint64                `json:"chunks_left"` // data chunks that still fit
	PercentFull      float64               `json:"percent_full"`
	// SeededChunks is, for a store seeded with the filesystem's free
	// chunks, how many seeds it holds. The kernel counts their slots as
	// allocated; every other figure here leaves them out and counts only
	// the store's real capacity (its file), except while merging, when
	// DataChunks is what the kernel has left to merge, seeds included.
	SeededChunks uint64 `json:"seeded_chunks,omitempty"`
}

// VolumeStatus is everything `snapctl status` reports about a volume.
type VolumeStatus struct {
	SchemaVersion int            `json:"schema_version"`
	Name          string         `json:"name"`
	Mode          Mode           `json:"mode,omitempty"`
	Phase         Phase          `json:"phase"`
	Step          string         `json:"step,omitempty"`
	Command       string         `json:"command,omitempty"`
	Scheduled     string         `json:"scheduled,omitempty"`
	Group         string         `json:"group,omitempty"`
	Origin        Device         `json:"origin"`
	Store         *Store         `json:"store,omitempty"`
	Extents       int            `json:"extents"`
	Devices       []DeviceStatus `json:"devices"`
	Usage         *Usage         `json:"usage,omitempty"`
	// MergeChunksLeft is, while merging, how many chunks remain.
	MergeChunksLeft *uint64  `json:"merge_chunks_left,omitempty"`
	Cleanup         []string `json:"cleanup,omitempty"`
	History         []Event  `json:"history,omitempty"`
}

// Status reads a volume's record and its devices' kernel state without
// taking the volume's lock, so it works while an operation runs.
func (m *Manager) Status(ctx context.Context, name string) (*VolumeStatus, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := CheckName(name); err != nil {
		return nil, err
	}
	rec, err := readRecord(m.Dir, name)
	if err != nil {
		return nil, err
	}
	s := &VolumeStatus{SchemaVersion: 1, Name: name, Mode: rec.Mode, Phase: rec.Phase, Step: rec.Step, Command: rec.Command,
		Scheduled: rec.Scheduled, Group: rec.Group, Origin: rec.Origin, Store: rec.Store, History: rec.History}
	s.Devices = []DeviceStatus{}
	if rec.Store != nil {
		s.Extents = len(rec.Store.Segments)
	}
	for _, c := range rec.Cleanup {
		s.Cleanup = append(s.Cleanup, c.Path)
	}
	for _, d := range []string{name, snapName(name), realName(name), baseName(name), cowName(name)} {
		inf, err := m.k.info(d)
		if err != nil {
			return nil, err
		}
		if !inf.Exists {
			continue
		}
		ds := DeviceStatus{Name: d, Exists: true, Dev: inf.Dev, Suspended: inf.Suspended, OpenCount: inf.OpenCount}
		if inf.Live {
			if t, err := m.k.table(d); err == nil {
				ds.Table = t.String()
			}
		}
		s.Devices = append(s.Devices, ds)
	}
	if rec.Store == nil {
		return s, nil
	}
	src := name
	if rec.Mode == Checkpoint && rec.Phase == PhasePrepared {
		src = snapName(name)
	}
	inf, err := m.k.info(src)
	if err != nil || !inf.Exists || !inf.Live || inf.Suspended {
		return s, err
	}
	t, err := m.k.table(src)
	if err != nil || len(t) != 1 || (t[0].Type != dmtable.TypeSnapshot && t[0].Type != dmtable.TypeSnapshotMerge) {
		return s, err
	}
	st, err := m.k.status(src)
	if err != nil {
		return s, err
	}
	u := &Usage{State: st.State, AllocatedSectors: st.Allocated, TotalSectors: st.Total, MetadataSectors: st.Metadata}
	chunk := uint64(rec.Store.ChunkSectors)
	if st.State == dmtable.SnapshotActive && chunk > 0 {
		u.DataChunks = st.DataSectors() / chunk
		if st.Total > 0 {
			u.PercentFull = float64(st.Allocated) * 100 / float64(st.Total)
		}
		u.ChunksLeft = chunksLeft(st.Total/chunk, u.DataChunks, chunk)
		if t[0].Type == dmtable.TypeSnapshot {
			realUsage(u, rec.Store)
		}
	}
	s.Usage = u
	if u := unusableState(st.State); u != "" && rec.Store.Unusable == "" && m.noteUnusableUnlocked(ctx, name, st.State) {
		rec.Store.Unusable = u
	}
	if t[0].Type == dmtable.TypeSnapshotMerge {
		left := u.DataChunks
		s.MergeChunksLeft = &left
	}
	return s, nil
}

// realUsage takes a seeded store's seed slots (mapped on zeros, no
// capacity of the store's file) out of the kernel's figures of a live
// snapshot.
func realUsage(u *Usage, s *Store) {
	sd := seededSectors(s)
	if sd == 0 || u.AllocatedSectors < sd || u.TotalSectors < sd {
		return
	}
	chunk := uint64(s.ChunkSectors)
	u.SeededChunks = s.Seeded.Seeds
	u.AllocatedSectors -= sd
	u.TotalSectors -= sd
	u.DataChunks -= min(u.DataChunks, s.Seeded.Seeds)
	u.PercentFull = 0
	if u.TotalSectors > 0 {
		u.PercentFull = float64(u.AllocatedSectors) * 100 / float64(u.TotalSectors)
	}
	// The file holds the header, the seeded areas' metadata chunks, and an
	// ordinary store's areas from area Areas on: as much room as an
	// ordinary store of the file's chunks less those metadata chunks.
	u.ChunksLeft = chunksLeft(u.TotalSectors/chunk-s.Seeded.Areas, u.DataChunks, chunk)
}

// chunksLeft is how many more data chunks fit in a store of total chunks
// that holds data chunks now, by the exception store's exact size formula.
func chunksLeft(total, data, chunkSectors uint64) uint64 {
	n, err := cowsize.Capacity(total*chunkSectors*512, uint32(chunkSectors*512))
	if err != nil || n < data {
		return 0
	}
	return n - data
}

// MonitorOptions configure Monitor.
type MonitorOptions struct {
	Names     []string      // volumes to watch; all when empty
	Threshold float64       // grow when the store is this % full
	Percent   float64       // grow by this % of the store's size
	Interval  time.Duration // how often to look
	// Report receives one line per event: a grow, a failure to grow, an
	// invalid or overflowed store.
	Report func(volume, message string, warning bool)
}

// Monitor watches prepared volumes and grows their stores when usage
// crosses the threshold, like LVM's snapshot autoextend, until ctx ends.
func (m *Manager) Monitor(ctx context.Context, o MonitorOptions) error {
	tick := time.NewTicker(o.Interval)
	defer tick.Stop()
	warned := map[string]string{}
	for {
		names := o.Names
		if len(names) == 0 {
			var err error
			if names, err = m.Names(); err != nil {
				return err
			}
		}
		for _, n := range names {
			m.monitorOne(ctx, n, o, warned)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func (m *Manager) monitorOne(ctx context.Context, name string, o MonitorOptions, warned map[string]string) {
	report := func(msg string, warning bool) {
		if warned[name] == msg {
			return
		}
		warned[name] = msg
		if o.Report != nil {
			o.Report(name, msg, warning)
		}
	}
	s, err := m.Status(ctx, name)
	if err != nil {
		report(fmt.Sprintf("cannot read status: %v", err), true)
		return
	}
	if s.Phase == PhaseMerging && !strings.HasPrefix(s.Step, "merge:offline") {
		// Finish a merge the kernel completed (after a reboot, or after
		// Merge without waiting); one still running is left to the kernel.
		if err := m.Merge(ctx, name, false); err != nil {
			report(fmt.Sprintf("cannot finish the merge: %v", err), true)
		} else if st, err := m.Status(ctx, name); err == nil && st.Phase == PhaseAttached && o.Report != nil {
			o.Report(name, "merge complete: the volume is back to linear and its store is deleted", false)
		}
		return
	}
	if s.Phase != PhasePrepared || s.Usage == nil {
		return
	}
	if s.Usage.State != dmtable.SnapshotActive {
		report(fmt.Sprintf("store is %s: the snapshot is lost; run `snapctl status %s` and drop it", s.Usage.State, name), true)
		return
	}
	if s.Usage.PercentFull < o.Threshold {
		delete(warned, name)
		return
	}
	by := uint64(float64(s.Store.Bytes) * o.Percent / 100)
	if err := m.Grow(ctx, name, by); err != nil {
		report(fmt.Sprintf("store is %.1f%% full and cannot grow: %v", s.Usage.PercentFull, err), true)
		return
	}
	delete(warned, name)
	if o.Report != nil {
		o.Report(name, fmt.Sprintf("store was %.1f%% full: grew by %d bytes", s.Usage.PercentFull, by), false)
	}
}
