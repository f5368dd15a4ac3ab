package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// DefaultDir holds the control sockets of running bow servers.
const DefaultDir = "/run/snapctl"

// DefaultSocket is the control socket a server of dev listens on unless
// told otherwise: DefaultDir/bow-<base name of dev>.sock.
func DefaultSocket(dev string) string {
	return filepath.Join(DefaultDir, "bow-"+filepath.Base(dev)+".sock")
}

// Sockets lists the default control sockets in dir (DefaultDir when
// empty), sorted: one per server started with the default, or a stale one
// a killed server left.
func Sockets(dir string) ([]string, error) {
	if dir == "" {
		dir = DefaultDir
	}
	socks, err := filepath.Glob(filepath.Join(dir, "bow-*.sock"))
	sort.Strings(socks)
	return socks, err
}

// AmbiguousError reports several servers where Locate was to find one.
type AmbiguousError struct {
	Sockets []string
}

func (e AmbiguousError) Error() string {
	return fmt.Sprintf("%d bow servers are running (%s): name one", len(e.Sockets), strings.Join(e.Sockets, ", "))
}

// Locate finds the control socket of the server of dev: its default
// socket, or with dev empty the one server running with a default socket.
// No server is NoServerError, several AmbiguousError.
func Locate(dev string) (string, error) {
	if dev != "" {
		return DefaultSocket(dev), nil
	}
	socks, err := Sockets("")
	switch {
	case err != nil:
		return "", err
	case len(socks) == 1:
		return socks[0], nil
	case len(socks) == 0:
		return "", NoServerError{Socket: filepath.Join(DefaultDir, "bow-*.sock"), Err: errors.New("no bow server is running")}
	}
	return "", AmbiguousError{Sockets: socks}
}

// dialTimeout bounds the connection to a server when ctx has no deadline.
const dialTimeout = 5 * time.Second

// Client talks to the server on a control socket.
type Client struct {
	Socket string
}

// Status asks the server for its status.
func (c Client) Status(ctx context.Context) (*Status, error) { return c.Call(ctx, OpStatus) }

// Checkpoint asks the server to take a checkpoint and returns its status
// after it.
func (c Client) Checkpoint(ctx context.Context) (*Status, error) { return c.Call(ctx, OpCheckpoint) }

// Commit asks the server to commit the checkpoint and returns its status
// after it.
func (c Client) Commit(ctx context.Context) (*Status, error) { return c.Call(ctx, OpCommit) }

// Call sends op and waits for the answer until ctx is done. When the
// server cannot be reached it returns NoServerError. When the server
// reports an error, Call returns it as a RemoteError, together with the
// status the server sent with it.
func (c Client) Call(ctx context.Context, op Op) (*Status, error) {
	d := net.Dialer{Timeout: dialTimeout}
	conn, err := d.DialContext(ctx, "unix", c.Socket)
	if err != nil {
		return nil, NoServerError{Socket: c.Socket, Err: err}
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	if _, err := conn.Write(marshalLine(request{Op: op})); err != nil {
		return nil, NoServerError{Socket: c.Socket, Err: err}
	}
	var resp response
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		if cerr := context.Cause(ctx); cerr != nil {
			err = errors.Join(cerr, err)
		}
		return nil, fmt.Errorf("read answer from bow server at %s: %w", c.Socket, err)
	}
	if resp.OK {
		return resp.Status, nil
	}
	w := resp.Error
	if w == nil {
		w = &wireError{Kind: KindOther, Message: "the server failed without a message"}
	}
	return resp.Status, RemoteError{Socket: c.Socket, Op: op, Kind: w.Kind, Msg: w.Message, Err: w.decode()}
}
