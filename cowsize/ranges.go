package cowsize

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"slices"
	"strings"
)

// Range is the byte range [Offset, Offset+Length) of the origin that an
// update writes. Offset+Length never exceeds MaxBytes in a Range that
// ParseRanges returns.
type Range struct {
	Offset, Length uint64
}

// RangeLineError reports a malformed line of a change list; Line counts from 1.
type RangeLineError struct {
	Line int
	Err  error
}

func (e RangeLineError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }
func (e RangeLineError) Unwrap() error { return e.Err }

// maxLine bounds one line of a change list.
const maxLine = 1 << 20

// ParseRanges reads a change list: one "offset length" pair per line, each
// number decimal bytes with an optional binary suffix (see ParseBytes).
// Everything from a '#' to the end of the line is a comment; blank lines
// are skipped. Ranges may overlap and come in any order. A zero length is
// allowed and touches nothing. A malformed, negative or too large number, a
// line that is not exactly two numbers, or a range ending past MaxBytes
// fails with RangeLineError naming the line. An empty list is valid: the
// update changes nothing.
func ParseRanges(r io.Reader) ([]Range, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	var out []Range
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if i := strings.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		f := strings.Fields(text)
		if len(f) == 0 {
			continue
		}
		rg, err := parseRange(f)
		if err != nil {
			return nil, RangeLineError{Line: line, Err: err}
		}
		out = append(out, rg)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, RangeLineError{Line: line + 1, Err: fmt.Errorf("line longer than %d bytes", maxLine)}
		}
		return nil, fmt.Errorf("read line %d: %w", line+1, err)
	}
	return out, nil
}

func parseRange(f []string) (Range, error) {
	if len(f) != 2 {
		return Range{}, fmt.Errorf("want two numbers \"OFFSET LENGTH\", got %d", len(f))
	}
	off, err := ParseBytes(f[0])
	if err != nil {
		return Range{}, fmt.Errorf("offset: %w", err)
	}
	n, err := ParseBytes(f[1])
	if err != nil {
		return Range{}, fmt.Errorf("length: %w", err)
	}
	if n > MaxBytes-off {
		return Range{}, TooLargeError{What: fmt.Sprintf("range at offset %d of length %d", off, n)}
	}
	return Range{Offset: off, Length: n}, nil
}

// ParseBytes parses a byte count: decimal digits with an optional binary
// suffix K, M, G or T (also KiB, MiB, GiB, TiB; any case), where 1K = 1024.
// Negative numbers, other forms and values past MaxBytes are refused.
func ParseBytes(s string) (uint64, error) {
	digits := strings.TrimLeft(s, "0123456789")
	num, suffix := s[:len(s)-len(digits)], digits
	if strings.HasPrefix(s, "-") {
		return 0, fmt.Errorf("%q is negative", s)
	}
	if num == "" {
		return 0, fmt.Errorf("%q is not a number: want decimal bytes with an optional K, M, G or T suffix", s)
	}
	var shift uint
	switch strings.ToLower(suffix) {
	case "":
	case "k", "kib":
		shift = 10
	case "m", "mib":
		shift = 20
	case "g", "gib":
		shift = 30
	case "t", "tib":
		shift = 40
	default:
		return 0, fmt.Errorf("%q has an unknown suffix %q: want K, M, G or T (binary)", s, suffix)
	}
	var v uint64
	for i := 0; i < len(num); i++ {
		hi, lo := bits.Mul64(v, 10)
		lo, carry := bits.Add64(lo, uint64(num[i]-'0'), 0)
		if hi != 0 || carry != 0 || lo > MaxBytes {
			return 0, TooLargeError{What: fmt.Sprintf("%q", s)}
		}
		v = lo
	}
	if v > MaxBytes>>shift {
		return 0, TooLargeError{What: fmt.Sprintf("%q", s)}
	}
	return v << shift, nil
}

// Touched returns the number of distinct chunks of chunkBytes that the
// ranges write, counting partially written chunks at both ends of a range.
// It sorts a copy of the chunk spans and merges them: O(n log n).
func Touched(ranges []Range, chunkBytes uint32) (uint64, error) {
	if err := CheckChunk(uint64(chunkBytes)); err != nil {
		return 0, err
	}
	c := uint64(chunkBytes)
	type span struct{ first, last uint64 } // inclusive chunk indexes
	spans := make([]span, 0, len(ranges))
	for _, r := range ranges {
		if r.Offset > MaxBytes || r.Length > MaxBytes-r.Offset {
			return 0, TooLargeError{What: fmt.Sprintf("range at offset %d of length %d", r.Offset, r.Length)}
		}
		if r.Length == 0 {
			continue
		}
		spans = append(spans, span{r.Offset / c, (r.Offset + r.Length - 1) / c})
	}
	slices.SortFunc(spans, func(a, b span) int {
		switch {
		case a.first < b.first:
			return -1
		case a.first > b.first:
			return 1
		}
		return 0
	})
	var n uint64
	for i := 0; i < len(spans); {
		cur := spans[i]
		for i++; i < len(spans) && spans[i].first <= cur.last+1; i++ {
			cur.last = max(cur.last, spans[i].last)
		}
		n += cur.last - cur.first + 1
	}
	return n, nil
}

// ForRanges returns the store for the change list read from r (see
// ParseRanges for its format).
func ForRanges(r io.Reader, chunkBytes uint32) (Size, error) {
	if err := CheckChunk(uint64(chunkBytes)); err != nil {
		return Size{}, err
	}
	ranges, err := ParseRanges(r)
	if err != nil {
		return Size{}, err
	}
	n, err := Touched(ranges, chunkBytes)
	if err != nil {
		return Size{}, err
	}
	return ForChunks(n, chunkBytes)
}
