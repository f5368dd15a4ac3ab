package snapshot_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/snapctl/snapctl/snapshot"
)

// A Manager works on one state directory: one record per volume. Opening
// one, listing its volumes and asking about a volume it does not know
// touches no device.
func ExampleManager() {
	dir, err := os.MkdirTemp("", "snapctl-state")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	m, err := snapshot.New(filepath.Join(dir, "state"))
	if err != nil {
		log.Fatal(err)
	}
	names, err := m.Names()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("volumes:", len(names))

	err = m.Commit(context.Background(), "data")
	var unknown *snapshot.UnknownVolumeError
	if errors.As(err, &unknown) {
		fmt.Printf("commit: volume %q has no record; attach or prepare it first\n", unknown.Name)
	}
	// Output:
	// volumes: 0
	// commit: volume "data" has no record; attach or prepare it first
}

// Prepare refuses what it cannot do before it changes anything. A
// RefusedError says which request it refused (Kind), so a caller can tell
// its user what to do instead; a dry run changes nothing either way.
func ExampleManager_Prepare_refused() {
	dir, err := os.MkdirTemp("", "snapctl-state")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	m, err := snapshot.New(dir)
	if err != nil {
		log.Fatal(err)
	}

	_, err = m.Prepare(context.Background(), snapshot.PrepareOptions{
		Name:      "data",
		StorePath: "/data/.snapctl-store",
		DryRun:    true,
	})
	var refused *snapshot.RefusedError
	if errors.As(err, &refused) && refused.Kind == snapshot.RefusedNoOrigin {
		fmt.Println(err)
		fmt.Println("name the origin device in PrepareOptions.Origin, or Attach the volume first")
	}
	// Output:
	// prepare "data": the volume is not attached and no origin device was given
	// name the origin device in PrepareOptions.Origin, or Attach the volume first
}

// Every operation takes a context; one that has ended starts nothing.
func ExampleManager_Merge_cancelled() {
	dir, err := os.MkdirTemp("", "snapctl-state")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	m, err := snapshot.New(dir)
	if err != nil {
		log.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = m.Merge(ctx, "data", true)
	fmt.Println(errors.Is(err, context.Canceled))
	// Output:
	// true
}

// CheckName says which names a volume can have: its devices are NAME,
// NAME-cow, NAME-real, NAME-snap and NAME-base.
func ExampleCheckName() {
	for _, name := range []string{"data", "data-cow", "../etc"} {
		fmt.Println(name, snapshot.CheckName(name) == nil)
	}
	// Output:
	// data true
	// data-cow false
	// ../etc false
}

// A checkpoint around a risky change of a mounted filesystem: prepare a
// snapshot live, change things, then keep the change (Commit, cheap) or
// return to the earlier content (Rollback, a merge: the filesystem must be
// unmounted, or the rollback is scheduled for the next Activate at boot).
// It needs root and device-mapper, so it is compiled, not run.
func ExampleManager_Prepare_checkpoint() {
	ctx := context.Background()
	m, err := snapshot.New("/var/lib/snapctl")
	if err != nil {
		log.Fatal(err)
	}
	m.Command = "my-updater" // named to other snapctl runs that find the volume busy

	// /dev/sdb1 is mounted through /dev/mapper/data (Attach made it so);
	// the store file lives on that filesystem, sized to its free space.
	plan, err := m.Prepare(ctx, snapshot.PrepareOptions{
		Name:      "data",
		Origin:    "/dev/sdb1",
		StorePath: "/data/.snapctl-store",
		Mode:      snapshot.Checkpoint,
	})
	if err != nil {
		log.Fatal(err) // nothing is left half-done: Prepare undoes itself
	}
	fmt.Printf("store of %d bytes in %d extents\n", plan.StoreBytes, plan.Extents)

	if changeWorked() {
		err = m.Commit(ctx, "data")
	} else {
		// The filesystem is still mounted: roll back at the next boot.
		err = m.Rollback(ctx, "data", snapshot.RollbackOptions{AtNextActivate: true})
	}
	var intr *snapshot.InterruptedError
	if errors.As(err, &intr) {
		// Cut short (killed, power cut): Activate finishes or undoes it.
		err = m.Activate(ctx, snapshot.ActivateOptions{Wait: true}, "data")
	}
	if err != nil {
		log.Fatal(err)
	}
}

// An update written into a snapshot, A/B style: the origin is untouched
// until Commit merges the update into it, live, with progress; a timeout
// ends the wait, not the merge, which Merge or Activate finishes later.
// It needs root and device-mapper, so it is compiled, not run.
func ExampleManager_Commit_update() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	m, err := snapshot.New("/var/lib/snapctl")
	if err != nil {
		log.Fatal(err)
	}
	m.Progress = func(p snapshot.MergeProgress) {
		fmt.Printf("%s: %d of %d sectors left\n", p.Volume, p.Remaining, p.Total)
	}

	_, err = m.Prepare(ctx, snapshot.PrepareOptions{
		Name:      "system",
		Origin:    "/dev/sda3",
		StorePath: "/data/ota.cow",
		Mode:      snapshot.Update,
		Bytes:     512 << 20,
		Overflow:  snapshot.OverflowFail, // a full store fails writes, the snapshot stays valid
	})
	if err != nil {
		log.Fatal(err)
	}
	// ... write the new image into /dev/mapper/system, boot it, check it ...

	if bootWasGood() {
		err = m.Commit(ctx, "system") // merge into /dev/sda3
	} else {
		err = m.Rollback(ctx, "system", snapshot.RollbackOptions{}) // drop the update
	}
	if errors.Is(err, context.DeadlineExceeded) {
		log.Print("the merge goes on in the kernel; Activate with Wait finishes it")
		return
	}
	if err != nil {
		log.Fatal(err)
	}
}

func changeWorked() bool { return true }
func bootWasGood() bool  { return true }
