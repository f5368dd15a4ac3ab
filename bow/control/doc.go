// Package control steers a running bow server (package bow/serve) over its
// unix control socket: take a checkpoint, commit it, read its status.
//
// # Protocol
//
// One request and one answer per connection, each a line of JSON. The
// request names an operation:
//
//	{"op":"checkpoint"}
//
// The answer carries the server's status after the operation and, when it
// failed, the error:
//
//	{"ok":false,"status":{...},"error":{"kind":"no_space","message":"back up on ...: no space left on device","device":"/dev/sdb","needed":8192,"free":0,"errno":28}}
//
// The error's kind names the typed error of package bow it stands for
// (KindTransition for bow.TransitionError, KindNoSpace, KindBroken,
// KindClosed, KindBadRequest) with the fields that type carries, and
// errno keeps the system error number, so that Client returns an error
// that errors.As and errors.Is see as the server's own: a
// RemoteError wrapping a bow.TransitionError, a bow.NoSpaceError (and
// through it ENOSPC), and so on. What a program makes of an error is its
// business: the CLI turns these into exit codes and hints on its side.
//
// The socket is created with mode 0600: whoever may steer the device is
// whoever may open the socket.
package control
