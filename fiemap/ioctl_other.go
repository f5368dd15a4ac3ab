//go:build !linux

package fiemap

import (
	"os"

	"github.com/snapctl/snapctl/internal/platform"
)

// Outside Linux every call into the kernel returns platform.ErrUnsupported;
// the extent model, flag checks and alignment rules still build and test.

const (
	oNoFollow = 0
	oCloExec  = 0
	oDirect   = 0
)

func isSymlinkLoop(error) bool { return false }

func fiemapCall(*os.File, *fiemapRequest, uint64) ([]rawExtent, error) {
	return nil, platform.ErrUnsupported
}
func getFlags(*os.File) (uint32, error)              { return 0, platform.ErrUnsupported }
func setFlags(*os.File, uint32) error                { return platform.ErrUnsupported }
func setPinFile(*os.File, bool) error                { return platform.ErrUnsupported }
func getPinFile(*os.File) (uint32, error)            { return 0, platform.ErrUnsupported }
func fsGetXattr(*os.File) (fsxattr, error)           { return fsxattr{}, platform.ErrUnsupported }
func fstatfs(*os.File) (uint64, uint64, error)       { return 0, 0, platform.ErrUnsupported }
func fstat(*os.File) (statInfo, error)               { return statInfo{}, platform.ErrUnsupported }
func lstat(string) (statInfo, error)                 { return statInfo{}, platform.ErrUnsupported }
func fallocate(*os.File, uint64) error               { return platform.ErrUnsupported }
func loopGetFree() (int, error)                      { return 0, platform.ErrUnsupported }
func loopConfigure(*os.File, *os.File, string) error { return platform.ErrUnsupported }
func loopClear(*os.File) error                       { return platform.ErrUnsupported }
func blockDev(*os.File) (string, error)              { return "", platform.ErrUnsupported }
