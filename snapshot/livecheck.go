package snapshot

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// deviceMounts is what /proc/self/mountinfo says about the filesystems
// mounted from one block device.
type deviceMounts struct {
	Mounts   int  // mount points (bind mounts of one filesystem count each)
	ReadOnly bool // every filesystem on it is read-only (superblock "ro")
	// Mountpoint and FSType are of the first mount of the filesystem's
	// root (not a bind mount of a directory in it); "" when none.
	Mountpoint, FSType string
}

// parseMountinfo reads mountinfo (proc(5)) and reports the mounts of the
// block device dev ("major:minor"). A mount is read-only only when its
// superblock is (the options after the " - " separator): a read-only bind
// mount of a read-write filesystem still lets the filesystem write.
func parseMountinfo(r io.Reader, dev string) (deviceMounts, error) {
	out := deviceMounts{ReadOnly: true}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) < 3 || f[2] != dev {
			continue
		}
		sep := strings.Index(line, " - ")
		if sep < 0 {
			return out, fmt.Errorf("mountinfo line without separator: %q", line)
		}
		tail := strings.Fields(line[sep+3:])
		if len(tail) < 3 {
			return out, fmt.Errorf("mountinfo line without superblock options: %q", line)
		}
		out.Mounts++
		if out.Mountpoint == "" && len(f) > 4 && f[3] == "/" {
			out.Mountpoint, out.FSType = unescapeMount(f[4]), tail[0]
		}
		if opts := strings.Split(tail[2], ","); opts[0] != "ro" {
			out.ReadOnly = false
		}
	}
	return out, sc.Err()
}

// writeCounts is what the kernel counted of writes to a block device: write
// and discard requests started (block/stat.rst: fields 5 and 12 of
// /sys/block/<dev>/stat; device-mapper counts every bio it is sent).
type writeCounts struct {
	Writes, Discards uint64
}

// parseDiskStat reads a /sys/block/<dev>/stat line.
func parseDiskStat(s string) (writeCounts, error) {
	f := strings.Fields(s)
	if len(f) < 11 {
		return writeCounts{}, fmt.Errorf("block device stat %q: want at least 11 fields", s)
	}
	var w writeCounts
	var err error
	if w.Writes, err = strconv.ParseUint(f[4], 10, 64); err != nil {
		return w, fmt.Errorf("block device stat %q: writes: %w", s, err)
	}
	if len(f) >= 12 {
		if w.Discards, err = strconv.ParseUint(f[11], 10, 64); err != nil {
			return w, fmt.Errorf("block device stat %q: discards: %w", s, err)
		}
	}
	return w, nil
}

// mountsOf reads /proc/self/mountinfo for dev.
func mountsOf(dev string) (deviceMounts, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return deviceMounts{}, err
	}
	defer f.Close()
	m, err := parseMountinfo(f, dev)
	if err != nil {
		return m, fmt.Errorf("read /proc/self/mountinfo: %w", err)
	}
	return m, nil
}

// writeCountsOf reads the write counters of the block device dev
// ("major:minor").
func writeCountsOf(dev string) (writeCounts, error) {
	p := "/sys/dev/block/" + dev + "/stat"
	b, err := os.ReadFile(p)
	if err != nil {
		return writeCounts{}, fmt.Errorf("read %s: %w", p, err)
	}
	return parseDiskStat(string(b))
}
