package strictjson

import (
	"errors"
	"testing"
)

func TestDecode(t *testing.T) {
	type rec struct {
		A int `json:"a"`
	}
	for _, tc := range []struct {
		in   string
		ok   bool
		want int
	}{
		{`{"a":1}`, true, 1},
		{"{\"a\":2}\n", true, 2},
		{`{"a":1,"b":2}`, false, 0},
		{`{"a":1}{"a":2}`, false, 0},
		{`{"a":1`, false, 0},
		{``, false, 0},
	} {
		var r rec
		err := Decode([]byte(tc.in), &r)
		if (err == nil) != tc.ok || (tc.ok && r.A != tc.want) {
			t.Errorf("Decode(%q) = %v, a=%d; want ok=%v, a=%d", tc.in, err, r.A, tc.ok, tc.want)
		}
	}
	var r rec
	if err := Decode([]byte(`{"a":1} {}`), &r); !errors.Is(err, ErrTrailing) {
		t.Errorf("trailing data: got %v, want ErrTrailing", err)
	}
}
