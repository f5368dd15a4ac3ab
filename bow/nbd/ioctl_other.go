//go:build !linux

package nbd

import (
	"errors"
	"os"
)

var errNoNBD = errors.New("the kernel NBD client is Linux only")

func setBlockSize(fd int, bs int64) error { return errNoNBD }
func setSizeBlocks(fd int, n int64) error { return errNoNBD }
func setFlags(fd int, flags uint16) error { return errNoNBD }
func setTimeout(fd int, sec int64) error  { return errNoNBD }
func setSock(fd, sock int) error          { return errNoNBD }
func clearSock(fd int) error              { return errNoNBD }
func disconnect(fd int) error             { return errNoNBD }
func doIt(fd int) error                   { return errNoNBD }
func openDevice(path string) (int, error) { return -1, errNoNBD }
func closeFD(fd int) error                { return errNoNBD }
func syncFD(fd int) error                 { return errNoNBD }
func dupFD(fd int) (int, error)           { return -1, errNoNBD }
func checkDevice(fd int) (string, error)  { return "", errNoNBD }
func socketPair() (int, *os.File, error)  { return -1, nil, errNoNBD }

// Harden does nothing outside Linux.
func Harden() error { return errNoNBD }
