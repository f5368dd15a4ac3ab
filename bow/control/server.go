package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Handler carries out what clients ask. Its methods are called from many
// goroutines at once.
type Handler interface {
	Status() *Status
	Checkpoint(ctx context.Context) error
	Commit(ctx context.Context) error
}

// requestTimeout bounds one request.
const requestTimeout = 5 * time.Minute

// Listener serves a control socket.
type Listener struct {
	l      net.Listener
	path   string
	cancel context.CancelFunc
	once   sync.Once
	wg     sync.WaitGroup
}

// Listen creates the control socket at path (mode 0600, its directory
// created if missing), replacing a stale one that nobody answers on, and
// serves h on it until Close. A socket a live server answers on is
// SocketBusyError.
func Listen(path string, h Handler) (*Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create control socket directory %s: %w", filepath.Dir(path), err)
	}
	if err := ClearStale(path); err != nil {
		return nil, err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restrict control socket %s: %w", path, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Listener{l: l, path: path, cancel: cancel}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				defer conn.Close()
				serveConn(ctx, conn, h)
			}()
		}
	}()
	return c, nil
}

// serveConn answers one request.
func serveConn(ctx context.Context, conn net.Conn, h Handler) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	conn.SetDeadline(time.Now().Add(requestTimeout))
	var resp response
	line, err := bufio.NewReader(io.LimitReader(conn, 4096)).ReadBytes('\n')
	var req request
	if err != nil {
		resp = response{Error: encodeError(BadRequestError{Reason: fmt.Sprintf("read request: %v", err)})}
	} else if err := json.Unmarshal(line, &req); err != nil {
		resp = response{Error: encodeError(BadRequestError{Reason: fmt.Sprintf("parse request: %v", err)})}
	} else {
		resp = handle(ctx, h, req.Op)
	}
	conn.Write(marshalLine(resp))
}

// handle carries out op.
func handle(ctx context.Context, h Handler, op Op) response {
	var err error
	switch op {
	case OpStatus:
	case OpCheckpoint:
		err = h.Checkpoint(ctx)
	case OpCommit:
		err = h.Commit(ctx)
	default:
		err = BadRequestError{Reason: fmt.Sprintf("unknown operation %q", op)}
	}
	if err != nil {
		return response{Error: encodeError(err), Status: h.Status()}
	}
	return response{OK: true, Status: h.Status()}
}

// Path returns the socket's path.
func (c *Listener) Path() string { return c.path }

// Close stops accepting, waits for the requests being answered and removes
// the socket.
func (c *Listener) Close() error {
	c.once.Do(func() {
		c.l.Close() // removes the socket file too
		c.wg.Wait()
		c.cancel()
		os.Remove(c.path)
	})
	return nil
}

// ClearStale removes a unix socket at path that nobody answers on, as a
// killed server leaves behind. One that answers is SocketBusyError.
func ClearStale(path string) error {
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		conn.Close()
		return SocketBusyError{Socket: path}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}
