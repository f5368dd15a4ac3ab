package dmtable

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The sizes of include/uapi/linux/dm-ioctl.h are the same on every
// architecture snapctl builds for (dm_ioctl's __u64 dev sits at offset 40),
// so the 386 and arm builds, whose structs align 64-bit fields to 4, lay
// them out as amd64 does. These assertions fail the test build, so a
// cross-compiled `go vet` checks them where the binary cannot run.
var (
	_ = [1]struct{}{}[sizeofDmIoctl-312]
	_ = [1]struct{}{}[sizeofDmTargetSpec-40]
	_ = [1]struct{}{}[sizeofDmTargetVersions-16]
	_ = [1]struct{}{}[offsetofDmNameListName-12]
	_ = [1]struct{}{}[unsafe.Offsetof(unix.DmIoctl{}.Dev)-40]
)

// TestABISizes pins the C ABI of include/uapi/linux/dm-ioctl.h.
func TestABISizes(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want int
	}{
		{"sizeof(struct dm_ioctl)", sizeofDmIoctl, 312},
		{"sizeof(struct dm_target_spec)", sizeofDmTargetSpec, 40},
		{"offsetof(dm_target_spec, sector_start)", offsetofSpecSector, 0},
		{"offsetof(dm_target_spec, length)", offsetofSpecLength, 8},
		{"offsetof(dm_target_spec, status)", offsetofSpecStatus, 16},
		{"offsetof(dm_target_spec, next)", offsetofSpecNext, 20},
		{"offsetof(dm_target_spec, target_type)", offsetofSpecType, 24},
		{"sizeof(struct dm_target_versions)", sizeofDmTargetVersions, 16},
		{"sizeof(dmNameList), the 16-byte mirror", sizeofDmNameList, 16},
		{"offsetof(dm_ioctl, dev)", int(unsafe.Offsetof(unix.DmIoctl{}.Dev)), 40},
		{"offsetof(dm_ioctl, name)", int(unsafe.Offsetof(unix.DmIoctl{}.Name)), 48},
		{"offsetof(dm_name_list, name)", offsetofDmNameListName, 12},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %d, want %d", c.name, c.got, c.want)
		}
	}
}

// decodeLoad reads a DM_TABLE_LOAD data area the way the kernel's
// populate_table does: next is relative to the current spec.
func decodeLoad(t *testing.T, b []byte, count int) Table {
	t.Helper()
	var out Table
	off := 0
	for i := 0; i < count; i++ {
		if off%8 != 0 {
			t.Fatalf("target %d at offset %d, want 8-byte alignment", i, off)
		}
		s := b[off:]
		params := cstring(s[sizeofDmTargetSpec:])
		if len(s) < sizeofDmTargetSpec+len(params)+1 || s[sizeofDmTargetSpec+len(params)] != 0 {
			t.Fatalf("target %d: params not NUL-terminated inside the buffer", i)
		}
		if st := binary.NativeEndian.Uint32(s[offsetofSpecStatus:]); st != 0 {
			t.Fatalf("target %d: status %d, want 0", i, st)
		}
		out = append(out, Target{
			Start:  binary.NativeEndian.Uint64(s[offsetofSpecSector:]),
			Length: binary.NativeEndian.Uint64(s[offsetofSpecLength:]),
			Type:   cstring(s[offsetofSpecType:sizeofDmTargetSpec]),
			Params: params,
		})
		off += int(binary.NativeEndian.Uint32(s[offsetofSpecNext:]))
	}
	if off != len(b) {
		t.Fatalf("records end at %d, buffer is %d bytes", off, len(b))
	}
	return out
}

func TestEncodeTargets(t *testing.T) {
	tests := []struct {
		name string
		t    Table
	}{
		{"one", Table{Linear(0, 8, "/dev/ubda", 2048)}},
		{"params of 7 bytes fill 8", Table{{Start: 0, Length: 8, Type: "linear", Params: "8:0 123"}}},
		{"params of 8 bytes pad to 16", Table{{Start: 0, Length: 8, Type: "linear", Params: "8:0 1234"}}},
		{"empty params", Table{{Start: 0, Length: 8, Type: "zero"}}},
		{"15-byte type", Table{{Start: 0, Length: 8, Type: "abcdefghijklmno", Params: "x"}}},
		{"snapshot", Table{Snapshot(0, 1<<21, SnapshotParams{Origin: "254:0", COW: "254:1", Store: PersistentOverflow, Chunk: 8})}},
		{"1000 segments", segments(1000)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := encodeTargets(tt.t)
			if got := decodeLoad(t, b, len(tt.t)); !reflect.DeepEqual(got, tt.t) {
				t.Fatalf("got %v, want %v", got, tt.t)
			}
		})
	}
}

// segments is an n-target linear table over scattered ranges.
func segments(n int) Table {
	var tbl Table
	var start uint64
	for i := 0; i < n; i++ {
		l := uint64(8 + i%57)
		tbl = append(tbl, Linear(start, l, "98:0", uint64((i*389)%n)*64))
		start += l
	}
	return tbl
}

// statusAnswer lays out a DM_TABLE_STATUS answer as the kernel's
// retrieve_status does: next is an offset from the start of the data area.
func statusAnswer(ts []TargetStatus) []byte {
	var b []byte
	for _, s := range ts {
		spec := make([]byte, sizeofDmTargetSpec)
		binary.NativeEndian.PutUint64(spec[offsetofSpecSector:], s.Target.Start)
		binary.NativeEndian.PutUint64(spec[offsetofSpecLength:], s.Target.Length)
		copy(spec[offsetofSpecType:offsetofSpecType+15], s.Target.Type)
		b = append(b, spec...)
		b = append(b, s.Status...)
		b = append(b, 0)
		for len(b)%8 != 0 {
			b = append(b, 0xff) // the kernel does not clear the padding
		}
		binary.NativeEndian.PutUint32(b[len(b)-align8(sizeofDmTargetSpec+len(s.Status)+1)+offsetofSpecNext:], uint32(len(b)))
	}
	return b
}

func TestDecodeSpecs(t *testing.T) {
	ts := []TargetStatus{
		{Target{Start: 0, Length: 8, Type: "linear"}, "98:0 2048"},
		{Target{Start: 8, Length: 16, Type: "snapshot"}, "24/131072 16"},
		{Target{Start: 24, Length: 1, Type: "snapshot-origin"}, ""},
		{Target{Start: 25, Length: 1, Type: "abcdefghijklmno"}, "1234567"},
	}
	b := statusAnswer(ts)
	got, err := decodeSpecs(b, len(ts))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, ts) {
		t.Fatalf("got %v, want %v", got, ts)
	}
	if got, err := decodeSpecs(nil, 0); err != nil || len(got) != 0 {
		t.Fatalf("empty answer: got %v, %v, want nothing", got, err)
	}
	bad := []struct {
		name  string
		b     []byte
		count int
	}{
		{"count past data", b, len(ts) + 1},
		{"huge count", b, 1 << 30},
		{"negative count", b, -1},
		{"truncated text", b[:sizeofDmTargetSpec+3], 1},
		{"next backwards", func() []byte {
			c := append([]byte(nil), b...)
			binary.NativeEndian.PutUint32(c[offsetofSpecNext:], 0)
			return c
		}(), 2},
		{"next past end", func() []byte {
			c := append([]byte(nil), b...)
			binary.NativeEndian.PutUint32(c[offsetofSpecNext:], uint32(len(c)+8))
			return c
		}(), 2},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			if got, err := decodeSpecs(c.b, c.count); err == nil {
				t.Fatalf("got %v, want an error", got)
			}
		})
	}
}

// nameListAnswer lays out a DM_LIST_DEVICES answer as the kernel's
// list_devices does with DM_UUID_FLAG.
func nameListAnswer(devs []Device) []byte {
	var b []byte
	last := -1
	for _, d := range devs {
		off := len(b)
		if last >= 0 {
			binary.NativeEndian.PutUint32(b[last+8:], uint32(off-last))
		}
		rec := make([]byte, offsetofDmNameListName)
		binary.NativeEndian.PutUint64(rec, unix.Mkdev(d.Dev.Major, d.Dev.Minor))
		rec = append(rec, d.Name...)
		rec = append(rec, 0)
		for len(rec)%8 != 0 {
			rec = append(rec, 0)
		}
		flags := uint32(unix.DM_NAME_LIST_FLAG_DOESNT_HAVE_UUID)
		if d.UUID != "" {
			flags = unix.DM_NAME_LIST_FLAG_HAS_UUID
		}
		rec = binary.NativeEndian.AppendUint32(rec, 7) // event_nr
		rec = binary.NativeEndian.AppendUint32(rec, flags)
		if d.UUID != "" {
			rec = append(rec, d.UUID...)
			rec = append(rec, 0)
			for len(rec)%8 != 0 {
				rec = append(rec, 0)
			}
		}
		b = append(b, rec...)
		last = off
	}
	return b
}

func TestDecodeNameList(t *testing.T) {
	devs := []Device{
		{Name: "data", Dev: Dev{254, 0}},
		{Name: "data-cow", UUID: "SNAPCTL-data-cow", Dev: Dev{254, 1}},
		{Name: strings.Repeat("n", 127), Dev: Dev{254, 1 << 19}},
		{Name: "x", UUID: strings.Repeat("u", 128), Dev: Dev{254, 3}},
	}
	got, err := decodeNameList(nameListAnswer(devs))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, devs) {
		t.Fatalf("got %+v, want %+v", got, devs)
	}
	for _, empty := range [][]byte{nil, make([]byte, 8), make([]byte, 16)} {
		if got, err := decodeNameList(empty); err != nil || len(got) != 0 {
			t.Errorf("empty list %v: got %v, %v, want nothing", empty, got, err)
		}
	}
	b := nameListAnswer(devs[:2])
	binary.NativeEndian.PutUint32(b[8:], 4) // next inside the header
	if _, err := decodeNameList(b); err == nil {
		t.Error("next inside the record: got no error, want one")
	}
	b = nameListAnswer(devs[:1])
	for i := offsetofDmNameListName; i < len(b); i++ {
		b[i] = 'a' // no NUL anywhere
	}
	if _, err := decodeNameList(b); err == nil {
		t.Error("name without NUL: got no error, want one")
	}
}

func versionsAnswer(v []TargetVersion) []byte {
	var b []byte
	last := -1
	for _, tv := range v {
		off := len(b)
		if last >= 0 {
			binary.NativeEndian.PutUint32(b[last:], uint32(off-last))
		}
		rec := binary.NativeEndian.AppendUint32(nil, 0)
		for _, x := range tv.Version {
			rec = binary.NativeEndian.AppendUint32(rec, x)
		}
		rec = append(rec, tv.Name...)
		rec = append(rec, 0)
		for len(rec)%8 != 0 {
			rec = append(rec, 0)
		}
		b = append(b, rec...)
		last = off
	}
	return b
}

func TestDecodeVersions(t *testing.T) {
	v := []TargetVersion{{"snapshot-merge", Version{1, 5, 0}}, {"snapshot", Version{1, 16, 0}}, {"linear", Version{1, 4, 0}}}
	got, err := decodeVersions(versionsAnswer(v))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, v) {
		t.Fatalf("got %v, want %v", got, v)
	}
	b := versionsAnswer(v)
	binary.NativeEndian.PutUint32(b, uint32(len(b)+1))
	if _, err := decodeVersions(b); err == nil {
		t.Error("next past the end: got no error, want one")
	}
	if _, err := decodeVersions(b[:10]); err == nil {
		t.Error("truncated record: got no error, want one")
	}
}

func FuzzDecodeAnswers(f *testing.F) {
	f.Add(statusAnswer([]TargetStatus{{Target{0, 8, "linear", ""}, "8:0 0"}, {Target{8, 8, "zero", ""}, ""}}), 2)
	f.Add(nameListAnswer([]Device{{Name: "a", UUID: "u", Dev: Dev{254, 0}}, {Name: "b", Dev: Dev{254, 1}}}), 0)
	f.Add(versionsAnswer([]TargetVersion{{"linear", Version{1, 4, 0}}, {"zero", Version{1, 2, 0}}}), 1)
	f.Add([]byte{}, 0)
	f.Fuzz(func(t *testing.T, b []byte, count int) {
		// Any answer decodes to a value or an error, never a panic.
		if ts, err := decodeSpecs(b, count); err == nil && len(ts) != count {
			t.Fatalf("decoded %d specs, want %d", len(ts), count)
		}
		_, _ = decodeNameList(b)
		_, _ = decodeVersions(b)
	})
}

// fakeKernel points the client at an empty tree: no control node, no
// device-mapper in /proc/misc, an empty sysfs.
func fakeKernel(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	old := []*string{&mapperDir, &controlPath, &procMisc, &sysDevBlock, &devDir}
	saved := make([]string, len(old))
	for i, p := range old {
		saved[i] = *p
	}
	t.Cleanup(func() {
		for i, p := range old {
			*p = saved[i]
		}
	})
	mapperDir = filepath.Join(dir, "dev", "mapper")
	controlPath = filepath.Join(mapperDir, "control")
	procMisc = filepath.Join(dir, "misc")
	sysDevBlock = filepath.Join(dir, "sys", "dev", "block")
	devDir = filepath.Join(dir, "dev")
	must(t, os.WriteFile(procMisc, []byte(" 58 network_throughput\n183 hw_random\n"), 0o644))
	return dir
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestNoDeviceMapper(t *testing.T) {
	fakeKernel(t)
	calls := map[string]func() error{
		"DriverVersion":  func() error { _, err := DriverVersion(); return err },
		"List":           func() error { _, err := List(); return err },
		"TargetVersions": func() error { _, err := TargetVersions(); return err },
		"Create":         func() error { _, err := Create("data", ""); return err },
		"Load":           func() error { return Load("data", Table{Linear(0, 8, "8:0", 0)}) },
		"Remove":         func() error { return Remove("data") },
		"Exists":         func() error { _, err := Exists("data"); return err },
		"ReadTable":      func() error { _, err := ReadTable("data"); return err },
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			err := call()
			var e NoDeviceMapperError
			if !errors.As(err, &e) {
				t.Fatalf("got %v, want NoDeviceMapperError", err)
			}
			for _, want := range []string{"CONFIG_BLK_DEV_DM", "modprobe dm-mod", controlPath} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

// Bad input is refused before the kernel is asked: with no device-mapper
// at all, the error is still about the input.
func TestRefusedBeforeKernel(t *testing.T) {
	fakeKernel(t)
	gap := Table{Linear(0, 8, "8:0", 0), Linear(16, 8, "8:0", 8)}
	err := Load("data", gap)
	var it InvalidTableError
	if !errors.As(err, &it) || !strings.Contains(err.Error(), `load table for "data": invalid table: gap`) {
		t.Errorf("Load with a gap: got %v, want InvalidTableError naming the device", err)
	}
	for _, name := range []string{"a/b", strings.Repeat("x", 128), "", ".."} {
		var in InvalidNameError
		if _, err := Create(name, ""); !errors.As(err, &in) {
			t.Errorf("Create(%q): got %v, want InvalidNameError", name, err)
		}
		if err := Remove(name); !errors.As(err, &in) {
			t.Errorf("Remove(%q): got %v, want InvalidNameError", name, err)
		}
	}
	if _, err := Create("data", strings.Repeat("u", 129)); err == nil || !strings.Contains(err.Error(), "uuid") {
		t.Errorf("Create with a 129-byte uuid: got %v, want a uuid error", err)
	}
}

func TestTableByDevNotDM(t *testing.T) {
	dir := fakeKernel(t)
	// 8:0 is a plain disk: its sysfs entry has no dm directory.
	must(t, os.MkdirAll(filepath.Join(sysDevBlock, "8:0"), 0o755))
	must(t, os.WriteFile(filepath.Join(sysDevBlock, "8:0", "uevent"), []byte("MAJOR=8\nMINOR=0\nDEVNAME=sda\nDEVTYPE=disk\n"), 0o644))
	for _, d := range []Dev{{8, 0}, {9, 9}} {
		tbl, ok, err := TableByDev(d.Major, d.Minor)
		if err != nil || ok || tbl != nil {
			t.Errorf("TableByDev(%s): got %v, %v, %v, want nil, false, nil", d, tbl, ok, err)
		}
	}
	// 254:0 is a DM device named "data"; reading its table needs the
	// kernel, which is missing here.
	must(t, os.MkdirAll(filepath.Join(sysDevBlock, "254:0", "dm"), 0o755))
	must(t, os.WriteFile(filepath.Join(sysDevBlock, "254:0", "dm", "name"), []byte("data\n"), 0o644))
	name, ok, err := NameByDev(254, 0)
	if err != nil || !ok || name != "data" {
		t.Errorf("NameByDev(254:0): got %q, %v, %v, want data, true, nil", name, ok, err)
	}
	var e NoDeviceMapperError
	if _, _, err := TableByDev(254, 0); !errors.As(err, &e) {
		t.Errorf("TableByDev(254:0) without the kernel: got %v, want NoDeviceMapperError", err)
	}
	// /dev/sda is not a block node in the fake tree: PathByDev says so.
	must(t, os.MkdirAll(filepath.Join(dir, "dev"), 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "dev", "sda"), nil, 0o644))
	if p, err := PathByDev(8, 0); err == nil {
		t.Errorf("PathByDev(8:0) with a regular file at /dev/sda: got %q, want an error", p)
	}
	if p, err := PathByDev(9, 9); err == nil {
		t.Errorf("PathByDev(9:9) of a missing device: got %q, want an error", p)
	}
}

// TestFlushBuffersRefused checks the errors of FlushBuffers off a block
// device (the e2e test TestPageCache proves what it does on one).
func TestFlushBuffersRefused(t *testing.T) {
	file := filepath.Join(t.TempDir(), "image")
	must(t, os.WriteFile(file, make([]byte, 4096), 0o644))
	for _, c := range []struct {
		name, path string
		is         error
	}{
		{"regular file", file, unix.ENOTTY},
		{"missing", filepath.Join(t.TempDir(), "none"), os.ErrNotExist},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := FlushBuffers(c.path)
			if !errors.Is(err, c.is) {
				t.Fatalf("got %v, want an error that is %v", err, c.is)
			}
			if want := "drop page cache of " + c.path; !strings.Contains(err.Error(), want) {
				t.Errorf("got %q, want it to contain %q", err, want)
			}
		})
	}
}

func TestErrorTexts(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
		is   error
	}{
		{fmt.Errorf("create device %q: %w", "data-cow", permission(unix.EBUSY)), `create device "data-cow": device or resource busy`, unix.EBUSY},
		{fmt.Errorf("open x: %w", permission(unix.EACCES)), "open x: permission denied: device-mapper needs root (CAP_SYS_ADMIN)", os.ErrPermission},
		{UnknownTargetError{Type: "snapshot", Err: unix.EINVAL}, `target type "snapshot" is not known to the kernel (its module: dm-snapshot): invalid argument`, unix.EINVAL},
		{UnknownTargetError{Type: "foo", Err: unix.EINVAL}, `(its module: dm-foo)`, unix.EINVAL},
	} {
		if !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("got %q, want it to contain %q", c.err, c.want)
		}
		if !errors.Is(c.err, c.is) {
			t.Errorf("%q: errors.Is(%v) is false", c.err, c.is)
		}
	}
	var p PermissionError
	if !errors.As(fmt.Errorf("x: %w", permission(unix.EPERM)), &p) {
		t.Error("EPERM is not an PermissionError")
	}
}

func TestVersion(t *testing.T) {
	v, err := ParseVersion("4.47.0")
	if err != nil || v != (Version{4, 47, 0}) || v.String() != "4.47.0" {
		t.Fatalf("got %v, %v, want 4.47.0", v, err)
	}
	for _, c := range []struct {
		v    Version
		m    [3]uint32
		want bool
	}{{Version{1, 16, 0}, [3]uint32{1, 15, 0}, true}, {Version{1, 15, 0}, [3]uint32{1, 15, 0}, true}, {Version{1, 14, 9}, [3]uint32{1, 15, 0}, false}, {Version{2, 0, 0}, [3]uint32{1, 99, 0}, true}} {
		if got := c.v.AtLeast(c.m[0], c.m[1], c.m[2]); got != c.want {
			t.Errorf("%v.AtLeast(%v): got %v, want %v", c.v, c.m, got, c.want)
		}
	}
	for _, bad := range []string{"", "1.2", "1.2.3.4", "1.x.3", "-1.0.0"} {
		if _, err := ParseVersion(bad); err == nil {
			t.Errorf("ParseVersion(%q): got no error, want one", bad)
		}
	}
	b, _ := v.MarshalText()
	var w Version
	if err := w.UnmarshalText(b); err != nil || w != v {
		t.Errorf("text round trip: got %v, %v, want %v", w, err, v)
	}
}
