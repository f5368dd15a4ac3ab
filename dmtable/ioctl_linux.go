package dmtable

// The raw device-mapper ioctl client. This file is the package's only gate to
// the kernel: it alone uses unsafe and the ioctls of golang.org/x/sys/unix.
//
// Every request is one buffer: a struct dm_ioctl header (unix.DmIoctl) whose
// data_size covers the whole buffer, followed by a data area at data_start.
// Loads put dm_target_spec records there; queries get records back. When an
// answer does not fit, the kernel sets DM_BUFFER_FULL_FLAG and the request is
// repeated with a buffer twice the size. The ABI is described in
// include/uapi/linux/dm-ioctl.h and implemented in drivers/md/dm-ioctl.c.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/snapctl/snapctl/internal/platform"
)

// Paths the client uses; variables so tests can point them at a fake tree.
var (
	mapperDir   = "/dev/mapper"
	controlPath = "/dev/mapper/control"
	procMisc    = "/proc/misc"
	sysDevBlock = "/sys/dev/block"
	devDir      = "/dev"
)

// Sizes and offsets of the ABI structs, pinned by a unit test.
const (
	// sizeofDmIoctl is sizeof(struct dm_ioctl): 312 bytes; its data area
	// starts right after it.
	sizeofDmIoctl = int(unsafe.Sizeof(unix.DmIoctl{}))
	// sizeofDmTargetSpec is sizeof(struct dm_target_spec): 40 bytes,
	// followed by the NUL-terminated parameter string.
	sizeofDmTargetSpec = int(unsafe.Sizeof(unix.DmTargetSpec{}))
	// sizeofDmTargetVersions is the header of struct dm_target_versions: 16
	// bytes, followed by the NUL-terminated target name.
	sizeofDmTargetVersions = int(unsafe.Sizeof(unix.DmTargetVersions{}))
	// sizeofDmNameList and offsetofDmNameListName describe dmNameList.
	sizeofDmNameList       = int(unsafe.Sizeof(dmNameList{}))
	offsetofDmNameListName = int(unsafe.Offsetof(dmNameList{}.Next) + unsafe.Sizeof(dmNameList{}.Next))

	offsetofSpecSector = int(unsafe.Offsetof(unix.DmTargetSpec{}.Sector_start))
	offsetofSpecLength = int(unsafe.Offsetof(unix.DmTargetSpec{}.Length))
	offsetofSpecStatus = int(unsafe.Offsetof(unix.DmTargetSpec{}.Status))
	offsetofSpecNext   = int(unsafe.Offsetof(unix.DmTargetSpec{}.Next))
	offsetofSpecType   = int(unsafe.Offsetof(unix.DmTargetSpec{}.Target_type))
)

// dmNameList is the fixed part of struct dm_name_list from
// include/uapi/linux/dm-ioctl.h, which x/sys/unix does not define:
//
//	struct dm_name_list { __u64 dev; __u32 next; char name[]; };
//
// name starts at offset 12 (the flexible array is not padded to 16). C's
// sizeof is 16 but 12 on 386, whose structs align __u64 to 4; the records
// are the kernel's either way (dm-ioctl's compat handler passes a 32-bit
// process's buffer through), and snapctl reads them by offset. This mirror
// is 16 bytes everywhere. Since
// ioctl version 4.37 the name's NUL is followed, at the next 8-byte
// boundary, by __u32 event_nr and __u32 flags; when flags carries
// DM_NAME_LIST_FLAG_HAS_UUID, the NUL-terminated uuid follows at the next
// 8-byte boundary. next is the offset of the following record from this one,
// 0 for the last.
type dmNameList struct {
	Dev  uint64
	Next uint32
	_    [4]byte // the start of name[], padding of the C struct's sizeof
}

// dmIoctlVersion is the interface version snapctl speaks. The kernel refuses
// a request whose major differs or whose minor is newer than its own, and
// returns its own version; 4.0.0 is accepted by every 4.x kernel.
var dmIoctlVersion = [3]uint32{unix.DM_VERSION_MAJOR, 0, 0}

const (
	// initialAnswer is the room for an answer on the first try.
	initialAnswer = 16 << 10
	// maxAnswer bounds the buffer-full retries.
	maxAnswer = 256 << 20
)

// removeBackoff is the pause before each retry of a remove refused with
// EBUSY (a short-lived opener such as blkid or a closing file).
var removeBackoff = []time.Duration{25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}

// control is an open /dev/mapper/control.
type control struct{ fd int }

// openControl opens /dev/mapper/control. When the node is missing but the
// kernel has registered the device-mapper misc device (no devtmpfs or udev
// made it), it creates the node, as libdevmapper does.
func openControl() (*control, error) {
	fd, err := unix.Open(controlPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		minor, ok := miscMinor("device-mapper")
		if !ok {
			return nil, NoDeviceMapperError{Control: controlPath}
		}
		if err := os.MkdirAll(mapperDir, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", mapperDir, permission(err))
		}
		if err := unix.Mknod(controlPath, unix.S_IFCHR|0o600, int(unix.Mkdev(10, minor))); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create %s (misc 10:%d): %w", controlPath, minor, permission(err))
		}
		fd, err = unix.Open(controlPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	}
	switch {
	case err == nil:
		return &control{fd: fd}, nil
	case errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENXIO):
		// A stale node with no driver behind it.
		return nil, NoDeviceMapperError{Control: controlPath, Err: err}
	}
	return nil, fmt.Errorf("open %s: %w", controlPath, permission(err))
}

func (c *control) close() { unix.Close(c.fd) }

// miscMinor finds the minor of a misc device in /proc/misc ("236 device-mapper").
func miscMinor(name string) (uint32, bool) {
	b, err := os.ReadFile(procMisc)
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[1] == name {
			n, err := strconv.ParseUint(f[0], 10, 32)
			return uint32(n), err == nil
		}
	}
	return 0, false
}

// permission turns EACCES and EPERM into PermissionError, keeping the errno.
func permission(err error) error {
	if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
		return PermissionError{Err: err}
	}
	return err
}

// request is what one DM ioctl sends.
type request struct {
	name    string
	uuid    string
	flags   uint32
	targets uint32
	payload []byte // the data area: dm_target_spec records for a load
	answer  int    // room for the kernel's answer; 0: the header is the answer
}

// reply is the header the kernel returned and its data area
// (data_start..data_size).
type reply struct {
	hdr  unix.DmIoctl
	data []byte
}

func (r reply) dev() Dev { return Dev{Major: unix.Major(r.hdr.Dev), Minor: unix.Minor(r.hdr.Dev)} }

// ioctl runs one DM ioctl. EINTR is retried by platform.Ioctl (a suspend
// waits interruptibly and the Go runtime signals its threads). DM_BUFFER_FULL_FLAG repeats the request with twice the room.
func (c *control) ioctl(cmd uint32, req request) (reply, error) {
	room := req.answer
	for {
		size := align8(sizeofDmIoctl + max(len(req.payload), room))
		words := make([]uint64, size/8) // 8-byte aligned, as the kernel's records are
		buf := unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), size)
		hdr := (*unix.DmIoctl)(unsafe.Pointer(&words[0]))
		hdr.Version = dmIoctlVersion
		hdr.Data_size = uint32(size)
		hdr.Data_start = uint32(sizeofDmIoctl)
		hdr.Flags = req.flags
		hdr.Target_count = req.targets
		copy(hdr.Name[:len(hdr.Name)-1], req.name)
		copy(hdr.Uuid[:len(hdr.Uuid)-1], req.uuid)
		copy(buf[sizeofDmIoctl:], req.payload)
		err := platform.Ioctl(uintptr(c.fd), cmd, unsafe.Pointer(&words[0]))
		runtime.KeepAlive(words)
		if err != nil {
			return reply{}, err
		}
		r := reply{hdr: *hdr}
		if r.hdr.Flags&unix.DM_BUFFER_FULL_FLAG != 0 && room > 0 {
			if room >= maxAnswer {
				return reply{}, fmt.Errorf("answer larger than %d bytes: %w", maxAnswer, unix.ENOBUFS)
			}
			// The header still counts the targets (a table status): make
			// room for all of them at once rather than doubling up to a
			// store table's 50,000 (spec, text and padding, ~64 bytes a
			// linear target).
			room = min(max(room*2, int(r.hdr.Target_count)*128), maxAnswer)
			continue
		}
		start, end := int(r.hdr.Data_start), int(r.hdr.Data_size)
		if start < sizeofDmIoctl || start > end || end > size {
			start, end = size, size // no data area
		}
		r.data = buf[start:end]
		return r, nil
	}
}

// The fd-level calls, one per ioctl.

// version is DM_VERSION: the kernel's interface version.
func (c *control) version() (Version, error) {
	r, err := c.ioctl(unix.DM_VERSION, request{})
	if err != nil {
		return Version{}, err
	}
	return Version(r.hdr.Version), nil
}

// listDevices is DM_LIST_DEVICES with DM_UUID_FLAG.
func (c *control) listDevices() ([]Device, error) {
	r, err := c.ioctl(unix.DM_LIST_DEVICES, request{flags: unix.DM_UUID_FLAG, answer: initialAnswer})
	if err != nil {
		return nil, err
	}
	return decodeNameList(r.data)
}

// listVersions is DM_LIST_VERSIONS: the registered target types.
func (c *control) listVersions() ([]TargetVersion, error) {
	r, err := c.ioctl(unix.DM_LIST_VERSIONS, request{answer: initialAnswer})
	if err != nil {
		return nil, err
	}
	return decodeVersions(r.data)
}

// getTargetVersion is DM_GET_TARGET_VERSION: one target type's version; the
// kernel loads its module if needed.
func (c *control) getTargetVersion(typ string) (Version, error) {
	r, err := c.ioctl(unix.DM_GET_TARGET_VERSION, request{name: typ, answer: initialAnswer})
	if err != nil {
		return Version{}, err
	}
	v, err := decodeVersions(r.data)
	if err != nil {
		return Version{}, err
	}
	if len(v) != 1 {
		return Version{}, fmt.Errorf("kernel answered with %d target versions, want 1", len(v))
	}
	return v[0].Version, nil
}

// devCreate is DM_DEV_CREATE: a new device with no table.
func (c *control) devCreate(name, uuid string) (Dev, error) {
	r, err := c.ioctl(unix.DM_DEV_CREATE, request{name: name, uuid: uuid})
	if err != nil {
		return Dev{}, err
	}
	return r.dev(), nil
}

// tableLoad is DM_TABLE_LOAD: t becomes the device's inactive table.
func (c *control) tableLoad(name string, t Table) (Dev, error) {
	r, err := c.ioctl(unix.DM_TABLE_LOAD, request{name: name, targets: uint32(len(t)), payload: encodeTargets(t)})
	if err != nil {
		return Dev{}, err
	}
	return r.dev(), nil
}

// devSuspend is DM_DEV_SUSPEND: with DM_SUSPEND_FLAG it suspends, without
// it resumes (swapping in an inactive table if one is loaded).
func (c *control) devSuspend(name string, flags uint32) (Dev, error) {
	r, err := c.ioctl(unix.DM_DEV_SUSPEND, request{name: name, flags: flags})
	if err != nil {
		return Dev{}, err
	}
	return r.dev(), nil
}

// devRemove is DM_DEV_REMOVE.
func (c *control) devRemove(name string) error {
	_, err := c.ioctl(unix.DM_DEV_REMOVE, request{name: name})
	return err
}

// tableClear is DM_TABLE_CLEAR: drops the inactive table.
func (c *control) tableClear(name string) error {
	_, err := c.ioctl(unix.DM_TABLE_CLEAR, request{name: name})
	return err
}

// devStatus is DM_DEV_STATUS.
func (c *control) devStatus(name string) (DeviceInfo, error) {
	r, err := c.ioctl(unix.DM_DEV_STATUS, request{name: name})
	if err != nil {
		return DeviceInfo{}, err
	}
	h := r.hdr
	return DeviceInfo{
		Name:          cstring(h.Name[:]),
		UUID:          cstring(h.Uuid[:]),
		Dev:           r.dev(),
		OpenCount:     h.Open_count,
		EventNr:       h.Event_nr,
		Suspended:     h.Flags&unix.DM_SUSPEND_FLAG != 0,
		LiveTable:     h.Flags&unix.DM_ACTIVE_PRESENT_FLAG != 0,
		InactiveTable: h.Flags&unix.DM_INACTIVE_PRESENT_FLAG != 0,
		ReadOnly:      h.Flags&unix.DM_READONLY_FLAG != 0,
		TargetCount:   h.Target_count,
	}, nil
}

// tableStatus is DM_TABLE_STATUS: each target's status text, or with
// DM_STATUS_TABLE_FLAG its table parameters.
func (c *control) tableStatus(name string, flags uint32) ([]TargetStatus, error) {
	r, err := c.ioctl(unix.DM_TABLE_STATUS, request{name: name, flags: flags, answer: initialAnswer})
	if err != nil {
		return nil, err
	}
	return decodeSpecs(r.data, int(r.hdr.Target_count))
}

// The exported calls, by device name.

// withControl runs f on an open control node.
func withControl(f func(c *control) error) error {
	c, err := openControl()
	if err != nil {
		return err
	}
	defer c.close()
	return f(c)
}

// DriverVersion returns the kernel's device-mapper interface version, the
// "driver version" of `dmsetup version` (DM_VERSION).
func DriverVersion() (Version, error) {
	var v Version
	err := withControl(func(c *control) (err error) {
		v, err = c.version()
		return err
	})
	if err != nil {
		return Version{}, fmt.Errorf("get device-mapper version: %w", permission(err))
	}
	return v, nil
}

// List returns every device-mapper device with its number and uuid
// (DM_LIST_DEVICES).
func List() ([]Device, error) {
	var d []Device
	err := withControl(func(c *control) (err error) {
		d, err = c.listDevices()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", permission(err))
	}
	return d, nil
}

// TargetVersions returns the target types the kernel has registered
// (DM_LIST_VERSIONS). A type whose module is not loaded yet is missing;
// the kernel loads it when a table uses it.
func TargetVersions() ([]TargetVersion, error) {
	var v []TargetVersion
	err := withControl(func(c *control) (err error) {
		v, err = c.listVersions()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list target versions: %w", permission(err))
	}
	return v, nil
}

// TargetVersionOf returns one target type's version, loading its module if
// needed (DM_GET_TARGET_VERSION, interface 4.41 and later).
func TargetVersionOf(typ string) (Version, error) {
	if typ == "" || len(typ) > maxTypeLen || strings.ContainsAny(typ, "/\x00") {
		return Version{}, fmt.Errorf("get version of target %q: invalid type name", typ)
	}
	var v Version
	err := withControl(func(c *control) (err error) {
		v, err = c.getTargetVersion(typ)
		return err
	})
	if err != nil {
		return Version{}, fmt.Errorf("get version of target %q: %w", typ, permission(err))
	}
	return v, nil
}

// Create creates the device name with no table (DM_DEV_CREATE) and its node
// /dev/mapper/NAME, and returns its device number. uuid may be empty. The
// device is usable after Load and Resume.
func Create(name, uuid string) (Dev, error) {
	if err := ValidateName(name); err != nil {
		return Dev{}, fmt.Errorf("create device: %w", err)
	}
	if err := validateUUID(uuid); err != nil {
		return Dev{}, fmt.Errorf("create device %q: %w", name, err)
	}
	var d Dev
	err := withControl(func(c *control) (err error) {
		d, err = c.devCreate(name, uuid)
		return err
	})
	if err != nil {
		return Dev{}, fmt.Errorf("create device %q: %w", name, permission(err))
	}
	if err := makeNode(name, d); err != nil {
		return d, fmt.Errorf("create device %q: %w", name, err)
	}
	return d, nil
}

// Load validates t and loads it as the inactive table of name
// (DM_TABLE_LOAD); Resume makes it live. A table the kernel refuses for a
// target type it does not know gives an UnknownTargetError.
func Load(name string, t Table) error {
	if err := ValidateName(name); err != nil {
		return fmt.Errorf("load table: %w", err)
	}
	if err := t.Validate(); err != nil {
		return fmt.Errorf("load table for %q: %w", name, err)
	}
	err := withControl(func(c *control) error {
		d, err := c.tableLoad(name, t)
		if errors.Is(err, unix.EINVAL) {
			return unknownTarget(c, t, err)
		}
		if err == nil {
			// Since 5.15 the disk appears at the first load; make sure
			// the node is there too.
			err = makeNode(name, d)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("load table for %q: %w", name, permission(err))
	}
	return nil
}

// unknownTarget turns a refused load into UnknownTargetError when the table
// uses a type the kernel still does not list (the kernel tried to load its
// module before refusing).
func unknownTarget(c *control, t Table, err error) error {
	known, lerr := c.listVersions()
	if lerr != nil {
		return err
	}
	have := make(map[string]bool, len(known))
	for _, v := range known {
		have[v.Name] = true
	}
	for _, tg := range t {
		if !have[tg.Type] {
			return UnknownTargetError{Type: tg.Type, Err: err}
		}
	}
	return err
}

// Suspend suspends name (DM_DEV_SUSPEND with DM_SUSPEND_FLAG): I/O to it
// queues until Resume. By default in-flight I/O is flushed and a filesystem
// on it is frozen first.
func Suspend(name string, opts SuspendOptions) error {
	if err := ValidateName(name); err != nil {
		return fmt.Errorf("suspend device: %w", err)
	}
	flags := uint32(unix.DM_SUSPEND_FLAG)
	if opts.NoFlush {
		flags |= unix.DM_NOFLUSH_FLAG
	}
	if opts.NoLockFS {
		flags |= unix.DM_SKIP_LOCKFS_FLAG
	}
	err := withControl(func(c *control) error {
		_, err := c.devSuspend(name, flags)
		return err
	})
	if err != nil {
		return fmt.Errorf("suspend device %q: %w", name, permission(err))
	}
	return nil
}

// Resume resumes name (DM_DEV_SUSPEND without DM_SUSPEND_FLAG), making a
// loaded inactive table live, and makes sure /dev/mapper/NAME exists.
func Resume(name string) error {
	if err := ValidateName(name); err != nil {
		return fmt.Errorf("resume device: %w", err)
	}
	err := withControl(func(c *control) error {
		d, err := c.devSuspend(name, 0)
		if err == nil {
			err = makeNode(name, d)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("resume device %q: %w", name, permission(err))
	}
	return nil
}

// Remove removes name (DM_DEV_REMOVE) and its /dev/mapper node. A remove
// refused with EBUSY is retried a few times with short pauses, then the
// EBUSY error is returned. A missing device gives an error wrapping ENXIO.
func Remove(name string) error {
	if err := ValidateName(name); err != nil {
		return fmt.Errorf("remove device: %w", err)
	}
	err := withControl(func(c *control) error {
		info, err := c.devStatus(name)
		if err != nil {
			return err
		}
		for i := 0; ; i++ {
			err = c.devRemove(name)
			if !errors.Is(err, unix.EBUSY) || i == len(removeBackoff) {
				break
			}
			time.Sleep(removeBackoff[i])
		}
		if err != nil {
			return err
		}
		return removeNode(name, info.Dev)
	})
	if err != nil {
		return fmt.Errorf("remove device %q: %w", name, permission(err))
	}
	return nil
}

// ClearInactive drops the inactive table of name (DM_TABLE_CLEAR), undoing
// a Load that was not resumed.
func ClearInactive(name string) error {
	if err := ValidateName(name); err != nil {
		return fmt.Errorf("clear inactive table: %w", err)
	}
	err := withControl(func(c *control) error { return c.tableClear(name) })
	if err != nil {
		return fmt.Errorf("clear inactive table of %q: %w", name, permission(err))
	}
	return nil
}

// Info returns the state of name (DM_DEV_STATUS). A missing device
// gives an error wrapping ENXIO.
func Info(name string) (DeviceInfo, error) {
	if err := ValidateName(name); err != nil {
		return DeviceInfo{}, fmt.Errorf("get info: %w", err)
	}
	var info DeviceInfo
	err := withControl(func(c *control) (err error) {
		info, err = c.devStatus(name)
		return err
	})
	if err != nil {
		return DeviceInfo{}, fmt.Errorf("get info of %q: %w", name, permission(err))
	}
	return info, nil
}

// Exists reports whether the device name exists.
func Exists(name string) (bool, error) {
	_, err := Info(name)
	if errors.Is(err, unix.ENXIO) {
		return false, nil
	}
	return err == nil, err
}

// Status returns the status text of each target of name's live table
// (DM_TABLE_STATUS), as `dmsetup status` prints it.
func Status(name string) ([]TargetStatus, error) {
	if err := ValidateName(name); err != nil {
		return nil, fmt.Errorf("get status: %w", err)
	}
	var st []TargetStatus
	err := withControl(func(c *control) (err error) {
		st, err = c.tableStatus(name, 0)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("get status of %q: %w", name, permission(err))
	}
	return st, nil
}

// ReadTable returns name's live table as the kernel holds it
// (DM_TABLE_STATUS with DM_STATUS_TABLE_FLAG): devices appear as
// "major:minor". A device with no live table gives an empty table.
func ReadTable(name string) (Table, error) {
	return readTable(name, unix.DM_STATUS_TABLE_FLAG, "read table of")
}

// ReadInactiveTable returns the table loaded into name and not yet resumed
// (DM_QUERY_INACTIVE_TABLE_FLAG); empty when there is none.
func ReadInactiveTable(name string) (Table, error) {
	return readTable(name, unix.DM_STATUS_TABLE_FLAG|unix.DM_QUERY_INACTIVE_TABLE_FLAG, "read inactive table of")
}

func readTable(name string, flags uint32, verb string) (Table, error) {
	if err := ValidateName(name); err != nil {
		return nil, fmt.Errorf("%s device: %w", verb, err)
	}
	var st []TargetStatus
	err := withControl(func(c *control) (err error) {
		st, err = c.tableStatus(name, flags)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s %q: %w", verb, name, permission(err))
	}
	t := make(Table, len(st))
	for i, s := range st {
		t[i] = s.Target
		t[i].Params = s.Status
	}
	return t, nil
}

// NameByDev returns the name of the device-mapper device major:minor from
// /sys/dev/block/M:m/dm/name; ok is false when the device is not a
// device-mapper device (or has no disk yet: before its first table load).
func NameByDev(major, minor uint32) (name string, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(sysDevBlock, Dev{major, minor}.String(), "dm", "name"))
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("read name of device %d:%d: %w", major, minor, err)
	}
	return strings.TrimSpace(string(b)), true, nil
}

// TableByDev returns the live table of the device major:minor; ok is false
// for a device that is not a device-mapper device.
func TableByDev(major, minor uint32) (Table, bool, error) {
	name, ok, err := NameByDev(major, minor)
	if err != nil || !ok {
		return nil, false, err
	}
	t, err := ReadTable(name)
	if err != nil {
		return nil, false, err
	}
	return t, true, nil
}

// NodePath is the path of name's node: /dev/mapper/NAME.
func NodePath(name string) string { return filepath.Join(mapperDir, name) }

// PathByDev returns a device node for the block device major:minor:
// /dev/mapper/NAME for a device-mapper device whose node is there, else the
// /dev entry sysfs names (DEVNAME in /sys/dev/block/M:m/uevent).
func PathByDev(major, minor uint32) (string, error) {
	d := Dev{major, minor}
	if name, ok, err := NameByDev(major, minor); err == nil && ok {
		if p := NodePath(name); nodeIs(p, d) {
			return p, nil
		}
	}
	b, err := os.ReadFile(filepath.Join(sysDevBlock, d.String(), "uevent"))
	if err != nil {
		return "", fmt.Errorf("find node of block device %s: %w", d, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "DEVNAME="); ok {
			p := filepath.Join(devDir, v)
			if !nodeIs(p, d) {
				return "", fmt.Errorf("find node of block device %s: %s is not that device: %w", d, p, fs.ErrNotExist)
			}
			return p, nil
		}
	}
	return "", fmt.Errorf("find node of block device %s: no DEVNAME in sysfs: %w", d, fs.ErrNotExist)
}

// EnsureNode makes sure /dev/mapper/NAME is a block node of the existing
// device name (as `dmsetup mknodes NAME` does).
func EnsureNode(name string) error {
	info, err := Info(name)
	if err != nil {
		return err
	}
	if err := makeNode(name, info.Dev); err != nil {
		return fmt.Errorf("make node of %q: %w", name, err)
	}
	return nil
}

// blkFlsBuf writes back the dirty pages of the block device open as f and
// drops its clean ones from the page cache: BLKFLSBUF, _IO(0x12, 97) from
// include/uapi/linux/fs.h, blkdev_flushbuf in block/ioctl.c; it needs
// CAP_SYS_ADMIN and fails with ENOTTY on anything but a block device.
func blkFlsBuf(f *os.File) error {
	return unix.IoctlSetInt(int(f.Fd()), unix.BLKFLSBUF, 0)
}

// FlushBuffers drops the page cache of the block device at path (BLKFLSBUF),
// after writing back anything dirty in it. A device that device-mapper
// writes underneath (a snapshot-merge into the origin, any table over it)
// changes below its own page cache: whatever was read through path before
// stays cached, and a buffered read of path returns the old bytes until
// the cache is dropped or the last opener closes it.
func FlushBuffers(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("drop page cache of %s: %w", path, permission(err))
	}
	defer f.Close()
	if err := blkFlsBuf(f); err != nil {
		return fmt.Errorf("drop page cache of %s: BLKFLSBUF: %w", path, permission(err))
	}
	return nil
}

// nodeIs reports whether path is (or links to) the block device d.
func nodeIs(path string, d Dev) bool {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return false
	}
	return st.Mode&unix.S_IFMT == unix.S_IFBLK && unix.Major(st.Rdev) == d.Major && unix.Minor(st.Rdev) == d.Minor
}

// makeNode creates /dev/mapper/NAME as a block node of d (mode 0600) unless
// it already is one, or a link to one (udev's symlink). A node pointing
// elsewhere is replaced.
func makeNode(name string, d Dev) error {
	p := NodePath(name)
	if nodeIs(p, d) {
		return nil
	}
	if err := os.MkdirAll(mapperDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", mapperDir, permission(err))
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("replace stale node %s: %w", p, permission(err))
	}
	if err := unix.Mknod(p, unix.S_IFBLK|0o600, int(unix.Mkdev(d.Major, d.Minor))); err != nil {
		if errors.Is(err, unix.EEXIST) && nodeIs(p, d) {
			return nil // udev made it meanwhile
		}
		return fmt.Errorf("create node %s (%s): %w", p, d, permission(err))
	}
	return nil
}

// removeNode removes /dev/mapper/NAME if it is d's node or a symlink (udev's,
// now dangling or about to be).
func removeNode(name string, d Dev) error {
	p := NodePath(name)
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return nil
	}
	isLink := st.Mode&unix.S_IFMT == unix.S_IFLNK
	isOurs := st.Mode&unix.S_IFMT == unix.S_IFBLK && unix.Major(st.Rdev) == d.Major && unix.Minor(st.Rdev) == d.Minor
	if !isLink && !isOurs {
		return nil
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove node %s: %w", p, permission(err))
	}
	return nil
}

// Encoding and decoding of the data area. These are pure and bounded: a
// malformed answer gives an error, never a panic.

// encodeTargets lays out t for DM_TABLE_LOAD: each dm_target_spec is followed
// by its NUL-terminated parameters padded to 8 bytes; next is the distance
// from this spec to the following one.
func encodeTargets(t Table) []byte {
	n := 0
	for _, tg := range t {
		n += sizeofDmTargetSpec + align8(len(tg.Params)+1)
	}
	b := make([]byte, n)
	off := 0
	for _, tg := range t {
		rec := sizeofDmTargetSpec + align8(len(tg.Params)+1)
		s := b[off : off+rec]
		binary.NativeEndian.PutUint64(s[offsetofSpecSector:], tg.Start)
		binary.NativeEndian.PutUint64(s[offsetofSpecLength:], tg.Length)
		binary.NativeEndian.PutUint32(s[offsetofSpecStatus:], 0)
		binary.NativeEndian.PutUint32(s[offsetofSpecNext:], uint32(rec))
		copy(s[offsetofSpecType:offsetofSpecType+maxTypeLen], tg.Type)
		copy(s[sizeofDmTargetSpec:], tg.Params)
		off += rec
	}
	return b
}

// decodeSpecs reads count dm_target_spec records of a DM_TABLE_STATUS
// answer. Unlike a load, each answer's next is an offset from the start of
// the data area.
func decodeSpecs(data []byte, count int) ([]TargetStatus, error) {
	if count < 0 || count > len(data)/sizeofDmTargetSpec {
		return nil, fmt.Errorf("decode target specs: %d targets cannot fit %d bytes", count, len(data))
	}
	out := make([]TargetStatus, 0, count)
	off := 0
	for i := 0; i < count; i++ {
		if off < 0 || off+sizeofDmTargetSpec > len(data) {
			return nil, fmt.Errorf("decode target specs: target %d at offset %d is outside the %d-byte answer", i, off, len(data))
		}
		s := data[off:]
		end := bytes.IndexByte(s[sizeofDmTargetSpec:], 0)
		if end < 0 {
			return nil, fmt.Errorf("decode target specs: target %d: text is not NUL-terminated", i)
		}
		out = append(out, TargetStatus{
			Target: Target{
				Start:  binary.NativeEndian.Uint64(s[offsetofSpecSector:]),
				Length: binary.NativeEndian.Uint64(s[offsetofSpecLength:]),
				Type:   cstring(s[offsetofSpecType:sizeofDmTargetSpec]),
			},
			Status: string(s[sizeofDmTargetSpec : sizeofDmTargetSpec+end]),
		})
		next := int(binary.NativeEndian.Uint32(s[offsetofSpecNext:]))
		if i < count-1 && next <= off {
			return nil, fmt.Errorf("decode target specs: target %d: next offset %d does not move past %d", i, next, off)
		}
		off = next
	}
	return out, nil
}

// decodeNameList walks the dm_name_list records of a DM_LIST_DEVICES answer.
func decodeNameList(data []byte) ([]Device, error) {
	if len(data) < offsetofDmNameListName || binary.NativeEndian.Uint64(data) == 0 {
		return nil, nil // no devices: the kernel writes dev 0 or nothing
	}
	var out []Device
	for off := 0; ; {
		if off+offsetofDmNameListName > len(data) {
			return nil, fmt.Errorf("decode device list: record at offset %d is outside the %d-byte answer", off, len(data))
		}
		rec := data[off:]
		dev := binary.NativeEndian.Uint64(rec)
		next := int(binary.NativeEndian.Uint32(rec[8:]))
		if next != 0 {
			if next < offsetofDmNameListName+1 || next > len(rec) {
				return nil, fmt.Errorf("decode device list: record at offset %d: next %d is out of bounds", off, next)
			}
			rec = rec[:next]
		}
		nameEnd := bytes.IndexByte(rec[offsetofDmNameListName:], 0)
		if nameEnd < 0 {
			return nil, fmt.Errorf("decode device list: record at offset %d: name is not NUL-terminated", off)
		}
		d := Device{
			Name: string(rec[offsetofDmNameListName : offsetofDmNameListName+nameEnd]),
			Dev:  Dev{Major: unix.Major(dev), Minor: unix.Minor(dev)},
		}
		// event_nr and flags follow the name at the next 8-byte boundary.
		if p := align8(offsetofDmNameListName + nameEnd + 1); p+8 <= len(rec) {
			if flags := binary.NativeEndian.Uint32(rec[p+4:]); flags&unix.DM_NAME_LIST_FLAG_HAS_UUID != 0 && p+8 < len(rec) {
				d.UUID = cstring(rec[p+8:])
			}
		}
		out = append(out, d)
		if next == 0 {
			return out, nil
		}
		off += next
	}
}

// decodeVersions walks the dm_target_versions records of a DM_LIST_VERSIONS
// or DM_GET_TARGET_VERSION answer.
func decodeVersions(data []byte) ([]TargetVersion, error) {
	var out []TargetVersion
	if len(data) == 0 {
		return nil, nil
	}
	for off := 0; ; {
		if off+sizeofDmTargetVersions > len(data) {
			return nil, fmt.Errorf("decode target versions: record at offset %d is outside the %d-byte answer", off, len(data))
		}
		rec := data[off:]
		next := int(binary.NativeEndian.Uint32(rec))
		if next != 0 {
			if next < sizeofDmTargetVersions+1 || next > len(rec) {
				return nil, fmt.Errorf("decode target versions: record at offset %d: next %d is out of bounds", off, next)
			}
			rec = rec[:next]
		}
		nameEnd := bytes.IndexByte(rec[sizeofDmTargetVersions:], 0)
		if nameEnd < 0 {
			return nil, fmt.Errorf("decode target versions: record at offset %d: name is not NUL-terminated", off)
		}
		out = append(out, TargetVersion{
			Name: string(rec[sizeofDmTargetVersions : sizeofDmTargetVersions+nameEnd]),
			Version: Version{
				binary.NativeEndian.Uint32(rec[4:]),
				binary.NativeEndian.Uint32(rec[8:]),
				binary.NativeEndian.Uint32(rec[12:]),
			},
		})
		if next == 0 {
			return out, nil
		}
		off += next
	}
}

// cstring is the text of b up to its first NUL.
func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

func align8(n int) int { return (n + 7) &^ 7 }
