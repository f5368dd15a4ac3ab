package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"syscall"

	"github.com/snapctl/snapctl/bow"
	"github.com/snapctl/snapctl/bow/nbd"
)

// Op is an operation a client asks of the server.
type Op string

const (
	OpStatus     Op = "status"     // report the status; change nothing
	OpCheckpoint Op = "checkpoint" // move from trim to checkpoint state
	OpCommit     Op = "commit"     // move from checkpoint to committed state
)

// Status is what a server reports: the engine's status and the server's.
type Status struct {
	bow.Status
	NBD       string    `json:"nbd,omitempty"`    // the kernel device served, /dev/nbdN
	Listen    string    `json:"listen,omitempty"` // the NBD address served, unix:PATH or tcp:HOST:PORT
	PID       int       `json:"pid"`
	StatePath string    `json:"state_path,omitempty"` // where a checkpoint's range map is saved
	Server    nbd.Stats `json:"server"`
}

// request is a client's line.
type request struct {
	Op Op `json:"op"`
}

// response is the server's line.
type response struct {
	OK     bool       `json:"ok"`
	Status *Status    `json:"status,omitempty"`
	Error  *wireError `json:"error,omitempty"`
}

// Kind names the kind of error a server reports.
type Kind string

const (
	KindOther      Kind = "other"       // any other error; errno may say more
	KindTransition Kind = "transition"  // bow.TransitionError
	KindNoSpace    Kind = "no_space"    // bow.NoSpaceError
	KindBroken     Kind = "broken"      // bow.BrokenError
	KindClosed     Kind = "closed"      // bow.ErrClosed: the server is stopping
	KindBadRequest Kind = "bad_request" // BadRequestError
)

// wireError is an error as it travels.
type wireError struct {
	Kind    Kind   `json:"kind"`
	Message string `json:"message"`
	Errno   int    `json:"errno,omitempty"`
	Device  string `json:"device,omitempty"`
	// transition
	From *bow.State `json:"from,omitempty"`
	To   *bow.State `json:"to,omitempty"`
	// no_space
	Needed int64 `json:"needed,omitempty"`
	Free   int64 `json:"free,omitempty"`
	// broken
	Cause string `json:"cause,omitempty"`
	// bad_request
	Reason string `json:"reason,omitempty"`
}

// encodeError describes err for the wire.
func encodeError(err error) *wireError {
	w := &wireError{Kind: KindOther, Message: err.Error()}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		w.Errno = int(errno)
	}
	var (
		tr bow.TransitionError
		ns bow.NoSpaceError
		br bow.BrokenError
		bq BadRequestError
	)
	switch {
	case errors.As(err, &tr):
		w.Kind, w.From, w.To = KindTransition, &tr.From, &tr.To
	case errors.As(err, &ns):
		w.Kind, w.Device, w.Needed, w.Free = KindNoSpace, ns.Device, ns.Needed, ns.Free
	case errors.As(err, &br):
		w.Kind, w.Device = KindBroken, br.Device
		if br.Cause != nil {
			w.Cause = br.Cause.Error()
		}
	case errors.Is(err, bow.ErrClosed):
		w.Kind = KindClosed
	case errors.As(err, &bq):
		w.Kind, w.Reason = KindBadRequest, bq.Reason
	}
	return w
}

// decode rebuilds the typed error w stands for.
func (w *wireError) decode() error {
	var errno error
	if w.Errno != 0 {
		errno = syscall.Errno(w.Errno)
	}
	switch w.Kind {
	case KindTransition:
		if w.From != nil && w.To != nil {
			return bow.TransitionError{From: *w.From, To: *w.To}
		}
	case KindNoSpace:
		return bow.NoSpaceError{Device: w.Device, Needed: w.Needed, Free: w.Free}
	case KindBroken:
		var cause error = causeError{msg: w.Cause, errno: errno}
		return bow.BrokenError{Device: w.Device, Cause: cause}
	case KindClosed:
		return bow.ErrClosed
	case KindBadRequest:
		return BadRequestError{Reason: w.Reason}
	}
	return errno // nil when there is nothing more to say
}

// causeError is the cause of a remote BrokenError: its message, and its
// errno.
type causeError struct {
	msg   string
	errno error
}

func (e causeError) Error() string { return e.msg }
func (e causeError) Unwrap() error { return e.errno }

// RemoteError is an error the server reported. Its message is the
// server's; it wraps the typed error the server's error was (a
// bow.TransitionError, bow.NoSpaceError, bow.BrokenError, bow.ErrClosed,
// BadRequestError, or a syscall.Errno), so errors.As and errors.Is see
// through it.
type RemoteError struct {
	Socket string
	Op     Op
	Kind   Kind
	Msg    string
	Err    error // nil when the kind carries nothing more
}

func (e RemoteError) Error() string { return e.Msg }
func (e RemoteError) Unwrap() error { return e.Err }

// BadRequestError is the server's answer to a request it cannot read or
// an operation it does not know (a client newer than the server).
type BadRequestError struct {
	Reason string
}

func (e BadRequestError) Error() string { return "control: " + e.Reason }

// NoServerError reports a control socket nobody answers on.
type NoServerError struct {
	Socket string
	Err    error
}

func (e NoServerError) Error() string {
	return fmt.Sprintf("contact bow server at %s: %v", e.Socket, e.Err)
}

func (e NoServerError) Unwrap() error { return e.Err }

// SocketBusyError reports a control socket a running server answers on.
type SocketBusyError struct{ Socket string }

func (e SocketBusyError) Error() string {
	return fmt.Sprintf("listen on %s: another bow server answers there", e.Socket)
}

func marshalLine(v any) []byte {
	b, _ := json.Marshal(v)
	return append(b, '\n')
}
