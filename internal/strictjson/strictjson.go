// Package strictjson decodes snapctl's own records (volume and update-group
// state) strictly: a record is either exactly what snapctl wrote or it is
// corrupt, and snapctl never guesses what a damaged record meant.
package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
)

// ErrTrailing is returned for data after the one JSON value.
var ErrTrailing = errors.New("trailing data after the record")

// Decode decodes the single JSON value in b into v, refusing fields v does
// not have and anything after the value.
func Decode(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return ErrTrailing
	}
	return nil
}
