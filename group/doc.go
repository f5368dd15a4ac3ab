// Package group makes several snapctl volumes one update: an update group
// takes one decision, commit or roll back, for all its members, whatever
// their mode (a system volume in update mode, a userdata volume in
// checkpoint mode), and counts boots of the new version until someone says
// it works.
//
// Life cycle of a group G (its record is STATE/groups/G.json, written
// atomically under a flock on STATE/groups/G.lock, like volume records):
//
//	open      Join prepares volumes into G (snapshot.PrepareOptions.Group);
//	          members can be added until the group is sealed.
//	sealed    Seal: every member is prepared, its store valid and not
//	          overflowed; the update's writes are complete. Boot counting
//	          starts: each boot's Activate takes one try, durably, before
//	          any volume is assembled (at most once per boot: the kernel's
//	          boot_id is recorded with the try, since activate runs more
//	          than once per boot).
//	decided   MarkGood decides "commit", MarkBad "rollback", and a boot that
//	          finds no tries left decides "rollback" itself. The decision is
//	          written (fsync'd) before any member acts on it, and never
//	          changes afterwards.
//	done      every member carried the decision out: update members merge
//	          (commit) or are dropped (rollback); checkpoint members are
//	          dropped (commit) or merged back (rollback).
//
// Each member's step is idempotent (it is an ordinary snapshot commit or
// rollback, which finishes after a kill), so a kill or a power cut at any
// point ends, at the next Activate or the same command again, with every
// member committed or every member rolled back, never a mix. The members
// whose step is a merge go first (a merge can fail: an I/O error, a store
// the kernel invalidated), the drops last.
//
// The volume records carry their group's name (snapshot.Record.Group), and
// package snapshot itself reads the group's record before it merges or
// drops a member (snapshot.GroupGate): a member is committed or rolled back
// only as its group decided, an update-mode member of an unsealed group is
// never merged, and a member of a sealed, undecided group is not assembled
// in a boot that took no try. A library user cannot act on one member
// behind its group's back.
//
// MarkBad rolls every member back at once only when all of them can be
// rolled back now (none is open: a mounted filesystem's content would jump
// back); otherwise it records the decision and the next Activate, at boot
// before anything mounts them, carries it out on every member. Nothing is
// rolled back in part.
//
// The boot counting follows systemd's boot assessment: run MarkGood (the
// snapctl-mark-good@.service unit) after boot-complete.target, so a boot
// that did not reach it leaves the try used.
package group
