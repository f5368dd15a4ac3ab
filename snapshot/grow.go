package snapshot

import (
	"context"
	"fmt"
)

// Grow extends the store by at least by bytes, online: the file grows, its
// new extents are mapped and NAME-cow is reloaded with more segments (the
// kernel reads the store's size at every allocation).
func (m *Manager) Grow(ctx context.Context, name string, by uint64) error {
	v, err := m.open(ctx, name)
	if err != nil {
		return err
	}
	defer v.close()
	return v.grow(by)
}

func (v *volume) grow(by uint64) error {
	if v.rec.Phase == PhaseGrowing {
		return v.finishGrow()
	}
	if v.rec.Phase != PhasePrepared {
		return &WrongPhaseError{Volume: v.name(), Op: "grow", Phase: v.rec.Phase, Mode: v.rec.Mode}
	}
	if err := v.checkOrigin(); err != nil {
		return err
	}
	s := v.rec.Store
	if s.Backend == BackendLoop {
		return fmt.Errorf("grow %q: %w", v.name(), ErrLoopFixedSize)
	}
	chunk := uint64(s.ChunkSectors) * 512
	newBytes := (s.Bytes + by + chunk - 1) / chunk * chunk
	_, free, _, err := v.m.fs.fsOf(s.Path)
	if err != nil {
		return fmt.Errorf("grow %q: %w", v.name(), err)
	}
	if newBytes-s.Bytes > free {
		return &NoSpaceError{Path: s.Path, Need: newBytes - s.Bytes, Free: free}
	}
	if err := v.step(PhaseGrowing, "grow:extend"); err != nil {
		return err
	}
	if err := v.m.fs.extend(s.Path, s.Inode, newBytes); err != nil {
		return joinErr(fmt.Errorf("grow %q: %w", v.name(), err), v.settle(PhasePrepared, "grow failed", err.Error()))
	}
	segs, err := v.m.fs.segments(s.Path, s.Inode, s.ChunkSectors)
	if err != nil {
		return joinErr(fmt.Errorf("grow %q: %w", v.name(), err), v.settle(PhasePrepared, "grow failed", err.Error()))
	}
	if !keepsPrefix(s.Segments, segs) {
		err := fmt.Errorf("grow %q: the store's existing extents moved while it grew", v.name())
		return joinErr(err, v.settle(PhasePrepared, "grow failed", err.Error()))
	}
	old := s.Bytes
	s.Segments, s.Bytes = segs, newBytes
	if err := v.step(PhaseGrowing, "grow:reload"); err != nil {
		return err
	}
	if err := v.finishGrow(); err != nil {
		return err
	}
	v.rec.event("grow", fmt.Sprintf("%d -> %d bytes, %d extents", old, newBytes, len(segs)))
	return v.save()
}

// finishGrow makes NAME-cow map the recorded segments. A grow interrupted
// before it recorded the new segments leaves the old ones, which still map
// the start of the (larger) file exactly.
func (v *volume) finishGrow() error {
	name := cowName(v.name())
	inf, err := v.m.k.info(name)
	if err != nil {
		return err
	}
	if inf.Exists {
		t, err := cowTable(v.rec.Store)
		if err != nil {
			return fmt.Errorf("grow %q: %w", v.name(), err)
		}
		if err := v.load(name, t); err != nil {
			return fmt.Errorf("grow %q: load %q: %w", v.name(), name, err)
		}
		if err := v.suspendIfNeeded(name); err != nil {
			return err
		}
		if err := v.m.k.resume(name); err != nil {
			return fmt.Errorf("grow %q: resume %q: %w", v.name(), name, err)
		}
	}
	v.rec.Phase, v.rec.Step, v.rec.Command = PhasePrepared, "", ""
	if err := v.save(); err != nil {
		return err
	}
	return v.buildPrepared(PhasePrepared)
}

// keepsPrefix reports whether the new mapping maps every sector the old one
// mapped to the same place.
func keepsPrefix(old, cur []Segment) bool {
	type piece struct {
		dev       string
		off, left uint64
	}
	j := 0
	var c piece
	for _, o := range old {
		off, left := o.Offset, o.Length
		for left > 0 {
			if c.left == 0 {
				if j >= len(cur) {
					return false
				}
				c = piece{cur[j].Dev, cur[j].Offset, cur[j].Length}
				j++
			}
			if c.dev != o.Dev || c.off != off {
				return false
			}
			n := min(left, c.left)
			off, left = off+n, left-n
			c.off, c.left = c.off+n, c.left-n
		}
	}
	return true
}

// devString renders a Linux dev_t as "major:minor".
func devString(d uint64) string {
	major := (d>>8)&0xfff | (d>>32)&^0xfff
	minor := d&0xff | (d>>12)&^0xff
	return fmt.Sprintf("%d:%d", major, minor)
}
