package group

import (
	"context"

	"github.com/snapctl/snapctl/snapshot"
)

// States of a group as Status reports them.
const (
	StateOpen        = "open"         // members can join; not sealed
	StateSealed      = "sealed"       // boot counting; no decision yet
	StateCommitting  = "committing"   // decided commit, not every member done
	StateRollingBack = "rolling-back" // decided rollback, not every member done
	StateCommitted   = "committed"
	StateRolledBack  = "rolled-back"
)

// Status is what `snapctl status GROUP` reports about a group.
type Status struct {
	SchemaVersion int    `json:"schema_version"`
	Name          string `json:"name"`
	State         string `json:"state"`
	Sealed        bool   `json:"sealed"`
	Tries         int    `json:"tries"`
	TriesLeft     int    `json:"tries_left"`
	Decision      string `json:"decision,omitempty"`
	DecidedBy     string `json:"decided_by,omitempty"`
	// Step and Command name an operation under way or cut short.
	Step    string           `json:"step,omitempty"`
	Command string           `json:"command,omitempty"`
	Members []MemberStatus   `json:"members"`
	History []snapshot.Event `json:"history,omitempty"`
}

// MemberStatus is one member of a group as its volume record says now.
type MemberStatus struct {
	Name string `json:"name"`
	// Mode and Phase are the volume's; Phase is "unknown" for a member
	// without a volume record.
	Mode  snapshot.Mode `json:"mode,omitempty"`
	Phase string        `json:"phase"`
	// StoreState is the kernel's state of the member's store ("active",
	// "invalid", "overflow", ...), when its devices are there.
	StoreState string `json:"store_state,omitempty"`
	// Pending says the member has yet to carry out the group's decision.
	Pending bool `json:"pending,omitempty"`
}

// Status reads a group's record and its members' records without taking
// any lock, so it works while an operation runs.
func (g *Manager) Status(ctx context.Context, name string) (*Status, error) {
	if err := snapshot.CheckName(name); err != nil {
		return nil, err
	}
	r, err := readRecord(g.Dir, name)
	if err != nil {
		return nil, err
	}
	s := &Status{SchemaVersion: 1, Name: name, Sealed: r.Sealed, Tries: r.Tries, TriesLeft: r.TriesLeft,
		Decision: r.Decision, DecidedBy: r.DecidedBy, Step: r.Step, Command: r.Command, History: r.History, Members: []MemberStatus{}}
	switch {
	case r.Done && r.Decision == snapshot.GroupCommit:
		s.State = StateCommitted
	case r.Done:
		s.State = StateRolledBack
	case r.Decision == snapshot.GroupCommit:
		s.State = StateCommitting
	case r.Decision == snapshot.GroupRollback:
		s.State = StateRollingBack
	case r.Sealed:
		s.State = StateSealed
	default:
		s.State = StateOpen
	}
	o := &open{ctx: ctx, g: g, rec: r}
	ms, err := o.members()
	if err != nil {
		return nil, err
	}
	for _, m := range ms {
		ms := MemberStatus{Name: m.name, Phase: "unknown"}
		if m.st != nil {
			ms.Mode, ms.Phase = m.st.Mode, string(m.st.Phase)
			if m.st.Usage != nil {
				ms.StoreState = m.st.Usage.State.String()
			}
			ms.Pending = r.Decision != "" && m.in(name)
		}
		s.Members = append(s.Members, ms)
	}
	return s, nil
}
