package bow

import (
	"fmt"
	"strconv"
	"strings"
)

// State is the engine's phase. It only ever moves one step forward.
type State int32

const (
	// StateTrim: discards mark blocks free (they are not passed down);
	// writes make the blocks they touch in-use again.
	StateTrim State = iota
	// StateCheckpoint: block 0 holds the log; overwriting data that existed
	// at the checkpoint first backs it up into free space.
	StateCheckpoint
	// StateCommitted: block 0 is the filesystem's again; pure pass-through.
	StateCommitted
)

var stateNames = [...]string{"trim", "checkpoint", "committed"}

func (s State) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", int32(s))
}

// MarshalText encodes the state by name.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText accepts what ParseState accepts.
func (s *State) UnmarshalText(b []byte) error {
	v, err := ParseState(string(b))
	if err == nil {
		*s = v
	}
	return err
}

// ParseState accepts a state name ("trim", "checkpoint", "committed") or
// dm-bow's number for it ("0", "1", "2").
func ParseState(s string) (State, error) {
	for i, n := range stateNames {
		if strings.EqualFold(s, n) || s == strconv.Itoa(i) {
			return State(i), nil
		}
	}
	return 0, fmt.Errorf("parse bow state %q: want trim, checkpoint or committed", s)
}

// FullPolicy says what a write does when backups run out of free space.
type FullPolicy int

const (
	// FullFail fails the write with ENOSPC; the checkpoint stays intact.
	FullFail FullPolicy = iota
	// FullCommit commits the checkpoint and lets the write through.
	FullCommit
)

var policyNames = [...]string{"fail", "commit"}

func (p FullPolicy) String() string {
	if p >= 0 && int(p) < len(policyNames) {
		return policyNames[p]
	}
	return fmt.Sprintf("policy(%d)", int(p))
}

// MarshalText encodes the policy by name.
func (p FullPolicy) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText accepts what ParseFullPolicy accepts.
func (p *FullPolicy) UnmarshalText(b []byte) error {
	v, err := ParseFullPolicy(string(b))
	if err == nil {
		*p = v
	}
	return err
}

// ParseFullPolicy accepts "fail" or "commit".
func ParseFullPolicy(s string) (FullPolicy, error) {
	for i, n := range policyNames {
		if strings.EqualFold(s, n) {
			return FullPolicy(i), nil
		}
	}
	return 0, fmt.Errorf("parse full policy %q: want fail or commit", s)
}
