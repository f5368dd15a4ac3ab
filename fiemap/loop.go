package fiemap

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Loop is a loop device backing a store file: the fallback when the file's
// filesystem is mounted directly on a partition, whose blocks device-mapper
// cannot map (it claims mapped devices exclusively, and the filesystem holds
// the partition). Writes to the store then go through the filesystem: the
// file must not be immutable, and it must not live on the volume it stores.
type Loop struct {
	Path string // /dev/loopN
	Dev  string // "major:minor"
	f    *os.File
}

// Close releases snapctl's handle. The device stays attached while
// device-mapper holds it and detaches itself after that (autoclear).
func (l *Loop) Close() error { return l.f.Close() }

// AttachLoop finds the loop device already backing path, or attaches a new
// one with direct I/O. The caller must keep the Loop open until a
// device-mapper table that uses it is loaded.
func AttachLoop(path string) (*Loop, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	if l, err := FindLoop(abs); err != nil || l != nil {
		return l, err
	}
	file, err := os.OpenFile(abs, os.O_RDWR|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}
	defer file.Close()
	for try := 0; try < 5; try++ {
		n, err := loopGetFree()
		if err != nil {
			return nil, err
		}
		p := fmt.Sprintf("/dev/loop%d", n)
		lf, err := os.OpenFile(p, os.O_RDWR|syscall.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", p, err)
		}
		if err := loopConfigure(lf, file, abs); err != nil {
			lf.Close()
			if errors.Is(err, syscall.EBUSY) {
				continue // taken by someone else meanwhile
			}
			return nil, err
		}
		dev, err := blockDev(lf)
		if err != nil {
			lf.Close()
			return nil, err
		}
		return &Loop{Path: p, Dev: dev, f: lf}, nil
	}
	return nil, fmt.Errorf("attach a loop device to %s: every free device was taken meanwhile", abs)
}

// FindLoop returns the loop device backing path, opened, or nil.
func FindLoop(path string) (*Loop, error) {
	files, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		return nil, err
	}
	for _, bf := range files {
		b, err := os.ReadFile(bf)
		if err != nil || strings.TrimSpace(string(b)) != path {
			continue
		}
		name := filepath.Base(filepath.Dir(filepath.Dir(bf)))
		p := "/dev/" + name
		lf, err := os.OpenFile(p, os.O_RDWR|syscall.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", p, err)
		}
		dev, err := blockDev(lf)
		if err != nil {
			lf.Close()
			return nil, err
		}
		return &Loop{Path: p, Dev: dev, f: lf}, nil
	}
	return nil, nil
}

// DetachLoop detaches the loop device backing path, if any.
func DetachLoop(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	l, err := FindLoop(abs)
	if err != nil || l == nil {
		return err
	}
	defer l.Close()
	if err := loopClear(l.f); err != nil && !errors.Is(err, syscall.ENXIO) {
		return err
	}
	return nil
}
