// Package snapshot is the life cycle of a snapctl volume: one origin block
// device, the device-mapper stack snapctl builds over it, an exception store
// carved out of a file, and a persisted state record.
//
// A volume NAME is always used through /dev/mapper/NAME; snapctl swaps the
// table underneath. In checkpoint mode writes land on the origin and the
// snapshot keeps the old data (commit = drop, rollback = merge); in update
// mode writes land in the snapshot and the origin is untouched until the
// merge (commit = merge, rollback = drop). See the kernel's
// Documentation/admin-guide/device-mapper/snapshot.rst for the targets.
//
// Every operation that takes more than one kernel step records its intent
// in the state record before it acts (write-ahead). An operation killed at
// any point is finished or undone by running it again or by Activate:
// prepare is undone (nothing is lost: the origin still holds the data the
// user had), drop and merge roll forward, because the user already chose
// their outcome and every step of them is idempotent given the kernel's
// current tables.
//
// A volume prepared into an update group (package group) names its group
// in its record, and this package reads the group's record before it
// merges or drops the volume: a group member is committed or rolled back
// only as its group decided (see GroupGate in group.go).
package snapshot
