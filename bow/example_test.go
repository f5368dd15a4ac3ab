package bow_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/snapctl/snapctl/bow"
)

// Checkpoint an image file, overwrite it, and restore it: the data at the
// checkpoint comes back. No kernel is involved: the engine runs on the
// file directly (package bow/serve gives it to the kernel as /dev/nbdN).
func Example() {
	dir, _ := os.MkdirTemp("", "bow")
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "disk.img")
	os.WriteFile(img, make([]byte, 1<<20), 0o600)

	dev, err := bow.OpenFile(img)
	if err != nil {
		fmt.Println(err)
		return
	}
	e, err := bow.Open(dev, bow.Options{BlockSize: 4096})
	if err != nil {
		fmt.Println(err)
		return
	}
	// Trim state: the data, then what is free (as fstrim tells it).
	e.WriteAt(bytes.Repeat([]byte("old data "), 1000), 64<<10)
	e.Discard(512<<10, 512<<10)

	if err := e.Checkpoint(context.Background()); err != nil {
		fmt.Println(err)
		return
	}
	// Overwrites of data that existed at the checkpoint are backed up
	// into the free space first.
	e.WriteAt(bytes.Repeat([]byte("NEW DATA "), 1000), 64<<10)
	buf := make([]byte, 8)
	e.ReadAt(buf, 64<<10)
	fmt.Printf("after the change: %q, %d bytes backed up\n", buf, e.Status().BackedUpBytes)
	e.Close()

	// Offline: copy the backups home.
	sum, err := bow.Restore(context.Background(), dev, bow.RestoreOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	dev.ReadAt(buf, 64<<10)
	fmt.Printf("restored %d entries: %q\n", sum.Entries, buf)
	dev.Close()
	// Output:
	// after the change: "NEW DATA", 16384 bytes backed up
	// restored 2 entries: "old data"
}
