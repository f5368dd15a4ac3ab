package serve_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/snapctl/snapctl/bow/control"
	"github.com/snapctl/snapctl/bow/serve"
)

// Serve an image file to NBD clients on a unix socket, take a checkpoint
// over the control socket as another program would, and stop: the clean
// stop saves the checkpoint's range map, so serving the image again
// resumes it. With NBD set instead of Listen, the kernel serves the same
// device as /dev/nbdN.
func Example() {
	dir, _ := os.MkdirTemp("", "bow")
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "disk.img")
	os.WriteFile(img, make([]byte, 1<<20), 0o600)

	ctx := context.Background()
	s, err := serve.Start(ctx, serve.Config{
		Device:    img,
		Listen:    "unix:" + filepath.Join(dir, "nbd.sock"),
		Control:   filepath.Join(dir, "ctl.sock"),
		StatePath: filepath.Join(dir, "disk.map"),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	// A filesystem would discard its free blocks (fstrim); here the upper
	// half of the device is free.
	s.Engine().Trim(512<<10, 512<<10)

	c := control.Client{Socket: s.Control()}
	st, err := c.Checkpoint(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("state:", st.State, "free for backups:", st.FreeBytes)
	if _, err := c.Checkpoint(ctx); err != nil {
		fmt.Println("again:", err)
	}
	res, err := s.Stop(ctx)
	fmt.Println("stopped in state", res.State, "map saved:", err == nil && res.StatePath != "")
	// Output:
	// state: checkpoint free for backups: 516096
	// again: change bow state from checkpoint to checkpoint: only committed is allowed next
	// stopped in state checkpoint map saved: true
}
