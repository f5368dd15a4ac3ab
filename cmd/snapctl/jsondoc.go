package main

import (
	"github.com/snapctl/snapctl/bow"
	"github.com/snapctl/snapctl/snapshot"
)

// The JSON contract (docs/json.md): every document --json prints is an
// object that starts with "schema_version" (or, for `status` without NAME,
// an array of such objects). Commands print through printDoc, which takes
// only types that carry the field, so a new output cannot leave it out.

// schemaVersion is the version of the JSON contract. It goes up when a
// field is removed, renamed, changes type or changes meaning; adding a
// field does not change it.
const schemaVersion = 1

// schema is embedded first in every document type, so that its field is
// the first one printed.
type schema struct {
	SchemaVersion int `json:"schema_version"`
}

func (s *schema) setSchemaVersion() { s.SchemaVersion = schemaVersion }

// document is what --json prints: a type that carries schema_version.
type document interface{ setSchemaVersion() }

// printDoc sets d's schema_version to the current one and prints d as
// indented JSON on stdout.
func (a *app) printDoc(d document) error {
	d.setSchemaVersion()
	return a.printJSON(d)
}

// statusDoc is the volume object of `status NAME` and of the volume
// commands. snapshot.VolumeStatus has its own schema_version field; the CLI
// owns the contract, so it sets it.
type statusDoc struct{ *snapshot.VolumeStatus }

func (d statusDoc) setSchemaVersion() { d.SchemaVersion = schemaVersion }

// statusListDoc is `status` without NAME: an array of volume objects.
type statusListDoc []*snapshot.VolumeStatus

func (l statusListDoc) setSchemaVersion() {
	for _, s := range l {
		s.SchemaVersion = schemaVersion
	}
}

// detachedDoc is what a volume command prints for a volume that has no
// record any more (detach).
type detachedDoc struct {
	schema
	Name  string `json:"name"`
	Phase string `json:"phase"` // "detached"
}

// prepareDoc is prepare's plan.
type prepareDoc struct {
	schema
	*snapshot.Plan
}

// bowStatusDoc is what `bow status`, `bow checkpoint` and `bow commit`
// print: the server's answer, which travels over the control socket
// without schema_version, stamped by the CLI.
type bowStatusDoc struct {
	schema
	*serveStatus
}

// bowRestoreDoc is `bow restore --json`.
type bowRestoreDoc struct {
	schema
	bow.RestoreSummary
}

// bowInspectDoc is `bow inspect --json`.
type bowInspectDoc struct {
	schema
	bow.Info
}
