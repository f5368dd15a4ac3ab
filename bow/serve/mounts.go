package serve

import (
	"os"
	"strconv"
	"strings"
)

// mountedAt is where dev is mounted according to /proc/self/mounts, or "".
func mountedAt(dev string) string {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return ""
	}
	return mountPoint(string(b), dev)
}

// mountPoint finds dev's first mount point in a mounts table in the format
// of /proc/self/mounts (proc(5)): device, mount point, ... per line, with
// space, tab, newline and backslash in names written as octal escapes.
func mountPoint(table, dev string) string {
	for _, l := range strings.Split(table, "\n") {
		fs := strings.Fields(l)
		if len(fs) >= 2 && unescapeMount(fs[0]) == dev {
			return unescapeMount(fs[1])
		}
	}
	return ""
}

// unescapeMount undoes the kernel's \ooo escapes in a mounts field.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
