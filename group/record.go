package group

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/snapctl/snapctl/internal/atomicfile"
	"github.com/snapctl/snapctl/internal/strictjson"
	"github.com/snapctl/snapctl/snapshot"
)

// FormatVersion is the version of the group record's JSON form.
const FormatVersion = 1

// MaxTries is the most boot tries a group can be sealed with.
const MaxTries = 100

// Record is the persisted state of one update group.
type Record struct {
	Format  int      `json:"format"`
	Name    string   `json:"name"`
	Members []string `json:"members"`
	// Sealed says the update's writes are complete (Seal); boot counting
	// runs from then on.
	Sealed bool `json:"sealed"`
	// Tries is the number of boot tries Seal gave; TriesLeft how many are
	// left.
	Tries     int `json:"tries,omitempty"`
	TriesLeft int `json:"tries_left"`
	// TryBoot is the kernel's boot_id of the boot that took the last try
	// (or sealed the group): a boot takes at most one try.
	TryBoot string `json:"try_boot,omitempty"`
	// Decision is "", snapshot.GroupCommit or snapshot.GroupRollback;
	// once set it never changes.
	Decision  string `json:"decision,omitempty"`
	DecidedBy string `json:"decided_by,omitempty"`
	// Done says every member carried the decision out.
	Done bool `json:"done,omitempty"`
	// Step is the step of the operation under way that was about to run
	// (write-ahead); Command the command that started it.
	Step    string           `json:"step,omitempty"`
	Command string           `json:"command,omitempty"`
	History []snapshot.Event `json:"history,omitempty"`
}

func (r *Record) event(name, detail string) {
	r.History = append(r.History, snapshot.Event{Time: time.Now().UTC(), Event: name, Detail: detail})
	if len(r.History) > 100 {
		r.History = r.History[len(r.History)-100:]
	}
}

func (r *Record) check(name string) error {
	if r.Format != FormatVersion {
		return fmt.Errorf("format %d, this snapctl reads format %d", r.Format, FormatVersion)
	}
	if r.Name != name {
		return fmt.Errorf("record names group %q, file is for %q", r.Name, name)
	}
	seen := map[string]bool{}
	for _, m := range r.Members {
		if err := snapshot.CheckName(m); err != nil {
			return fmt.Errorf("member: %w", err)
		}
		if seen[m] {
			return fmt.Errorf("member %q is listed twice", m)
		}
		seen[m] = true
	}
	switch r.Decision {
	case "", snapshot.GroupCommit, snapshot.GroupRollback:
	default:
		return fmt.Errorf("unknown decision %q", r.Decision)
	}
	if r.Done && r.Decision == "" {
		return errors.New("done without a decision")
	}
	if r.Sealed {
		if r.Tries < 1 || r.Tries > MaxTries || r.TriesLeft < 0 || r.TriesLeft > r.Tries {
			return fmt.Errorf("tries %d, tries left %d: want 1 <= tries <= %d and 0 <= tries left <= tries", r.Tries, r.TriesLeft, MaxTries)
		}
		if r.TryBoot == "" {
			return errors.New("sealed without the boot that sealed it")
		}
		if len(r.Members) == 0 {
			return errors.New("sealed without members")
		}
	} else {
		if r.Tries != 0 || r.TriesLeft != 0 {
			return fmt.Errorf("tries %d, tries left %d before the group is sealed", r.Tries, r.TriesLeft)
		}
		if r.Decision == snapshot.GroupCommit {
			return errors.New("decided commit without being sealed")
		}
	}
	return nil
}

// CorruptRecordError is a group record that cannot be trusted. snapctl
// never guesses a group's decision.
type CorruptRecordError struct {
	Path string
	Err  error
}

func (e *CorruptRecordError) Error() string {
	return fmt.Sprintf("update group record %s is unreadable or corrupt: %v", e.Path, e.Err)
}
func (e *CorruptRecordError) Unwrap() error { return e.Err }

// UnknownGroupError is a group with no record.
type UnknownGroupError struct{ Name, Dir string }

func (e *UnknownGroupError) Error() string {
	return fmt.Sprintf("update group %q is unknown (no record in %s)", e.Name, e.Dir)
}

// BusyError is a group another snapctl process is working on right now.
type BusyError struct {
	Group  string
	Holder string
}

func (e *BusyError) Error() string {
	if e.Holder == "" {
		return fmt.Sprintf("update group %q is busy: another snapctl is working on it", e.Group)
	}
	return fmt.Sprintf("update group %q is busy: %s is working on it", e.Group, e.Holder)
}

// RefusedError is a group operation that does not apply to the group's
// state (or to its members' state) now. Nothing was changed.
type RefusedError struct {
	Group  string
	Op     string
	Reason string
	// Kind says why, so that a front end can name what to do instead.
	Kind RefusalKind
}

// RefusalKind says why a group operation was refused, for the CLI's hint.
type RefusalKind int

const (
	RefusedNameTaken  RefusalKind = iota + 1 // a volume has the group's name (or the reverse)
	RefusedOtherGroup                        // the volume is in another group not finished
	RefusedSealed                            // members join only before the seal
	RefusedUnsealed                          // mark-good of an open group
	RefusedDecided                           // the group already decided otherwise
	RefusedEmpty                             // seal of a group without members
	RefusedMember                            // a member is not fit (not prepared, store unusable, not active)
	RefusedTries                             // --tries out of range
)

func (e *RefusedError) Error() string {
	return fmt.Sprintf("%s %q: %s", e.Op, e.Group, e.Reason)
}

// recordPath and lockPath of group name in state directory dir.
func recordPath(dir, name string) string { return snapshot.GroupPath(dir, name) }
func lockPath(dir, name string) string {
	return filepath.Join(snapshot.GroupsDir(dir), name+".lock")
}

// readRecord loads and checks a group's record.
func readRecord(dir, name string) (*Record, error) {
	p := recordPath(dir, name)
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, &UnknownGroupError{Name: name, Dir: snapshot.GroupsDir(dir)}
	}
	if err != nil {
		return nil, fmt.Errorf("read update group record %s: %w", p, err)
	}
	return parseRecord(p, name, b)
}

// parseRecord decodes a record strictly and checks its invariants.
func parseRecord(path, name string, b []byte) (*Record, error) {
	var r Record
	if err := strictjson.Decode(b, &r); err != nil {
		return nil, &CorruptRecordError{Path: path, Err: err}
	}
	if err := r.check(name); err != nil {
		return nil, &CorruptRecordError{Path: path, Err: err}
	}
	return &r, nil
}

// writeRecord replaces the record atomically.
func writeRecord(dir string, r *Record) error {
	r.Format = FormatVersion
	if r.Members == nil {
		r.Members = []string{}
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(recordPath(dir, r.Name), append(b, '\n'), 0o600)
}

// lock is an exclusive flock on a group's lock file; the holder writes its
// pid and command line into it so that others can name it.
type lock struct{ f *os.File }

func lockGroup(dir, name, command string) (*lock, error) {
	if err := os.MkdirAll(snapshot.GroupsDir(dir), 0o700); err != nil {
		return nil, fmt.Errorf("lock update group %q: %w", name, err)
	}
	p := lockPath(dir, name)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock update group %q: %w", name, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(p)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &BusyError{Group: name, Holder: strings.TrimSpace(string(holder))}
		}
		return nil, fmt.Errorf("lock update group %q: %w", name, err)
	}
	if err := f.Truncate(0); err == nil {
		fmt.Fprintf(f, "pid %d: %s\n", os.Getpid(), command)
	}
	return &lock{f: f}, nil
}

func (l *lock) unlock() {
	l.f.Truncate(0)
	syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	l.f.Close()
}

// names lists the groups with a record, sorted.
func names(dir string) ([]string, error) {
	ents, err := os.ReadDir(snapshot.GroupsDir(dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list update groups in %s: %w", snapshot.GroupsDir(dir), err)
	}
	var out []string
	for _, e := range ents {
		if n, ok := strings.CutSuffix(e.Name(), ".json"); ok && !strings.HasPrefix(n, ".") {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out, nil
}
