// Package platform is snapctl's one gate to the operating system beyond
// the Go standard library: the raw ioctl(2) system call that the
// kernel-facing files of dmtable, fiemap, bow and bow/nbd build on.
//
// Each of those packages keeps its kernel ABI (struct layouts, ioctl
// numbers, fd-level calls named for the ioctl) in one file built for Linux
// only, and a stub of the same calls for every other system that returns
// ErrUnsupported. The rest of each package (parsers, table rendering, the
// COW size formula, the store format reader, the bow engine and its log
// over an io.ReaderAt/WriterAt) is plain Go and builds and tests anywhere,
// as cilium/ebpf keeps golang.org/x/sys/unix behind its internal/unix.
// TestGate holds those packages to it: only their *_linux.go files import
// unsafe or golang.org/x/sys/unix.
package platform
