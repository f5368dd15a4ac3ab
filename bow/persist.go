package bow

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"

	"github.com/snapctl/snapctl/internal/atomicfile"
)

// The state file keeps what the log alone cannot give back: which blocks
// are free, changed or backups. Close writes it for an active checkpoint
// (temp file, fsync, rename, fsync of the directory); Open reads it only if
// the log block it recorded is byte for byte the one in block 0, and
// deletes it before serving, so that a crash never leaves a map behind that
// no longer matches the device. Layout, little endian:
//
//	magic "SNAPBOWS" | version u32 = 1 | block size u32 | blocks u64
//	backed-up bytes u64 | backups u64 | entries u64 | discards u64
//	log block (block size bytes) | runs u64 | runs × (start u64, kind u8)
//	CRC-32C of everything before it, u32
const stateMagic = "SNAPBOWS"

const stateVersion = 1

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func (e *Engine) encodeState() []byte {
	var b bytes.Buffer
	le := binary.LittleEndian
	b.WriteString(stateMagic)
	b.Write(le.AppendUint32(nil, stateVersion))
	b.Write(le.AppendUint32(nil, uint32(e.bs)))
	b.Write(le.AppendUint64(nil, e.blocks))
	b.Write(le.AppendUint64(nil, uint64(e.st.backedUp)))
	b.Write(le.AppendUint64(nil, e.st.backups))
	b.Write(le.AppendUint64(nil, e.st.entries))
	b.Write(le.AppendUint64(nil, e.st.discards))
	b.Write(e.logBuf)
	b.Write(le.AppendUint64(nil, uint64(e.rm.runs.len())))
	e.rm.runs.ascend(0, func(s uint64, k kind) bool {
		b.Write(le.AppendUint64(nil, s))
		b.WriteByte(byte(k))
		return true
	})
	b.Write(le.AppendUint32(nil, crc32.Checksum(b.Bytes(), castagnoli)))
	return b.Bytes()
}

// saveState writes the state file. Called with tr held for writing.
func (e *Engine) saveState() error {
	e.mu.Lock()
	data := e.encodeState()
	e.mu.Unlock()
	if err := atomicfile.Write(e.opts.StatePath, data, 0o600); err != nil {
		return fmt.Errorf("save bow state of %s: %w", e.name, err)
	}
	return nil
}

// loadState reads the state file into a fresh engine and checks it against
// the log in block 0.
func (e *Engine) loadState() error {
	path := e.opts.StatePath
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return NeedsRestoreError{Device: e.name, Reason: fmt.Sprintf("no saved range map at %s", path)}
	}
	if err != nil {
		return fmt.Errorf("open %s: read saved state: %w", e.name, err)
	}
	bad := func(format string, args ...any) error {
		return NeedsRestoreError{Device: e.name, Reason: fmt.Sprintf("saved range map at %s: ", path) + fmt.Sprintf(format, args...)}
	}
	if err := e.decodeState(data); err != nil {
		return bad("%v", err)
	}
	disk := make([]byte, e.bs)
	if _, err := e.dev.ReadAt(disk, 0); err != nil {
		return fmt.Errorf("open %s: %w", e.name, err)
	}
	if !bytes.Equal(disk, e.logBuf) {
		return bad("it belongs to a different log than the one in block 0")
	}
	return nil
}

func (e *Engine) decodeState(data []byte) error {
	le := binary.LittleEndian
	fixed := 8 + 4 + 4 + 8 + 4*8
	if len(data) < fixed+4 {
		return fmt.Errorf("%d bytes is too short", len(data))
	}
	body, sum := data[:len(data)-4], le.Uint32(data[len(data)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return fmt.Errorf("checksum mismatch")
	}
	if string(body[:8]) != stateMagic {
		return fmt.Errorf("bad magic")
	}
	if v := le.Uint32(body[8:]); v != stateVersion {
		return fmt.Errorf("version %d, want %d", v, stateVersion)
	}
	if bs := int64(le.Uint32(body[12:])); bs != e.bs {
		return fmt.Errorf("block size %d, device log uses %d", bs, e.bs)
	}
	if n := le.Uint64(body[16:]); n != e.blocks {
		return fmt.Errorf("%d blocks, device has %d", n, e.blocks)
	}
	st := counters{
		backedUp: int64(le.Uint64(body[24:])),
		backups:  le.Uint64(body[32:]),
		entries:  le.Uint64(body[40:]),
		discards: le.Uint64(body[48:]),
	}
	p := body[fixed:]
	if int64(len(p)) < e.bs+8 {
		return fmt.Errorf("truncated log block")
	}
	logBuf := p[:e.bs]
	p = p[e.bs:]
	nruns := le.Uint64(p)
	p = p[8:]
	if nruns == 0 || nruns > e.blocks || uint64(len(p)) != nruns*9 {
		return fmt.Errorf("%d runs in %d bytes", nruns, len(p))
	}
	lb, err := ParseLogBlock(logBuf)
	if err != nil {
		return err
	}
	if lb.Magic != Magic || int64(lb.BlockSize) != e.bs || lb.Count == 0 {
		return fmt.Errorf("log block is not an active log")
	}
	zero := lb.Sector0 / e.spb
	if lb.Sector0%e.spb != 0 || zero == 0 || zero >= e.blocks {
		return fmt.Errorf("log places the live block 0 at sector %d", lb.Sector0)
	}
	rm := newRangeMap(e.blocks)
	var prevStart uint64
	prevKind := numKinds
	for i := uint64(0); i < nruns; i++ {
		s, k := le.Uint64(p[i*9:]), kind(p[i*9+8])
		if i == 0 && s != 0 || i > 0 && s <= prevStart || s >= e.blocks || k >= numKinds || k == prevKind {
			return fmt.Errorf("run %d (block %d, kind %d) out of order", i, s, k)
		}
		end := e.blocks
		if i+1 < nruns {
			end = le.Uint64(p[(i+1)*9:])
			if end <= s || end > e.blocks {
				return fmt.Errorf("run %d (block %d) out of order", i+1, end)
			}
		}
		rm.set(s, end, k)
		prevStart, prevKind = s, k
	}
	if s, en, k := rm.at(0); s != 0 || en != 1 || k != kindLog {
		return fmt.Errorf("block 0 is not the log")
	}
	if s, en, k := rm.at(zero); s != zero || en != zero+1 || k != kindLiveZero {
		return fmt.Errorf("block %d is not the live block 0", zero)
	}
	if rm.count(kindLog) != 1 || rm.count(kindLiveZero) != 1 {
		return fmt.Errorf("more than one log or live block 0")
	}
	e.rm = rm
	e.st = st
	copy(e.logBuf, logBuf)
	e.logCount = int(lb.Count)
	e.logSeq = lb.Sequence
	e.logZero = zero
	e.zero.Store(zero)
	return nil
}

// removeDurably removes path and syncs its directory.
func removeDurably(path string) error { return atomicfile.Remove(path) }
