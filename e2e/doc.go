// Package e2e holds snapctl's end-to-end tests. They boot a real Linux
// kernel (user-mode Linux, Debian's user-mode-linux package) with the host's
// root file system mounted over hostfs and disk image files attached as
// /dev/ubda, /dev/ubdb, ..., load the device-mapper, NBD and loop modules,
// and run the test binary itself as root inside the guest. Every flow that
// touches the kernel (tables, snapshots, merges, FIEMAP, NBD) is proven here.
//
// The tests are behind the build tag e2e: `go test -tags e2e ./e2e/`. They
// never skip: a missing linux.uml or C compiler fails the run.
package e2e
