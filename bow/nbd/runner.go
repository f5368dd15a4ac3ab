package nbd

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
)

// Why NBD_DO_IT runs in a process of its own.
//
// NBD_DO_IT blocks until the connection ends. When the thread that issued
// it receives a fatal signal, the kernel shuts the connection's socket down,
// and to do so it takes the socket's send lock. Under a write load that lock
// is held by a kernel worker blocked in a send to the server's end of the
// socket pair, whose buffer is full because the server no longer reads it.
// If that end belongs to the same process, it is closed only when the
// process's last thread exits, and that thread is the one waiting for the
// lock: after SIGKILL the process never dies (seen on Linux 6.1, the stack
// ending in sock_shutdown, mutex_lock). With NBD_DO_IT in a helper process
// the server's socket closes as soon as the server dies, the blocked send
// fails, and the helper's NBD_DO_IT returns because the connection is gone.

// DeviceFD is the file descriptor on which a runner (BindOptions.Runner)
// finds the NBD device.
const DeviceFD = 3

// RunDevice is the body of the helper process named by BindOptions.Runner:
// it runs NBD_DO_IT on the NBD device open as file descriptor DeviceFD and
// returns when the device's connection has ended, nil after a clean
// disconnect. It ignores the signals that stop a server (SIGINT, SIGTERM,
// SIGHUP): a terminal's Ctrl-C reaches the whole process group, and the
// server, not the helper, decides how the device stops; a signal here would
// make the kernel cut the connection under the server's clean disconnect.
func RunDevice() error {
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE)
	f := os.NewFile(DeviceFD, "nbd device")
	defer f.Close()
	reason, err := checkDevice(int(f.Fd()))
	if err == nil && reason != "" {
		err = errors.New(reason)
	}
	if err != nil {
		return fmt.Errorf("run NBD device: file descriptor %d: %w (the process that binds the device starts this helper; it is not run by hand)", DeviceFD, err)
	}
	err = doIt(int(f.Fd()))
	// The connection has ended. Requests the server took but never
	// answered (it was killed) would wait for it forever: the device has
	// no request timeout by default. NBD_CLEAR_SOCK fails them, so that the
	// filesystem sees I/O errors instead of hanging; after a clean
	// disconnect there are none, and the server clears the device too.
	if cerr := clearSock(int(f.Fd())); cerr != nil && err == nil {
		err = fmt.Errorf("NBD_CLEAR_SOCK: %w", cerr)
	} else if err != nil {
		err = fmt.Errorf("NBD_DO_IT: %w", err)
	}
	return err
}

// runner is a started helper process.
type runner struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
}

// startRunner starts argv with a duplicate of the device descriptor fd as
// its file descriptor DeviceFD.
func startRunner(argv []string, fd int, path string) (*runner, error) {
	dup, err := dupFD(fd)
	if err != nil {
		return nil, fmt.Errorf("duplicate the descriptor of %s: %w", path, err)
	}
	f := os.NewFile(uintptr(dup), path)
	defer f.Close() // the child has its own copy
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.ExtraFiles = []*os.File{f}
	r := &runner{cmd: cmd, stderr: &bytes.Buffer{}}
	cmd.Stderr = r.stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", strings.Join(argv, " "), err)
	}
	return r, nil
}

// wait waits for the helper to exit: nil after a clean disconnect, else its
// error message.
func (r *runner) wait() error {
	err := r.cmd.Wait()
	if err == nil {
		return nil
	}
	if msg := strings.TrimSpace(r.stderr.String()); msg != "" {
		return fmt.Errorf("helper %d: %s (%w)", r.cmd.Process.Pid, msg, err)
	}
	return fmt.Errorf("helper %d: %w", r.cmd.Process.Pid, err)
}
