package merge

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/snapctl/snapctl/internal/atomicfile"
)

// identity names one store merging into one origin, so that a progress
// record is only ever applied to the merge it was written for. The valid
// flag is left out: invalidating the store after the merge keeps its
// identity, which lets a rerun see that the merge already finished.
type identity struct {
	ChunkSize  uint32 `json:"chunk_size"`
	Exceptions int    `json:"exceptions"`
	Table      string `json:"table_sha256"` // of the entries in table order
	StoreSize  int64  `json:"store_size"`
	OriginSize int64  `json:"origin_size"`
}

func identify(s *Store, originSize int64) identity {
	h := sha256.New()
	var b [entryLen]byte
	for _, e := range s.Exceptions {
		binary.LittleEndian.PutUint64(b[0:], e.Old)
		binary.LittleEndian.PutUint64(b[8:], e.New)
		h.Write(b[:])
	}
	return identity{
		ChunkSize:  s.Header.ChunkSize,
		Exceptions: len(s.Exceptions),
		Table:      hex.EncodeToString(h.Sum(nil)),
		StoreSize:  s.Size,
		OriginSize: originSize,
	}
}

// progressFormat is the version of the progress record's JSON. Format 2
// counted Done in store-chunk order; a record of another format is ignored,
// and the merge starts over, which is always safe.
const progressFormat = 3

// progress is the write-ahead record of an offline merge. Done counts the
// exceptions, in origin-chunk order, whose copies were durable on the
// origin when the record was written.
type progress struct {
	Format   int      `json:"format"`
	Store    identity `json:"store"`
	Done     int      `json:"done"`
	Total    int      `json:"total"`
	Complete bool     `json:"complete"`
}

// loadProgress reads the record at path. A missing record is (nil, nil). A
// record that does not parse is treated as missing too: starting over is
// always safe, because copying is idempotent.
func loadProgress(path string) (*progress, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read merge progress: %w", err)
	}
	var p progress
	if json.Unmarshal(b, &p) != nil || p.Format != progressFormat {
		return nil, nil
	}
	return &p, nil
}

// saveProgress replaces the record at path atomically and durably: temp
// file, fsync, rename, fsync of the directory.
func saveProgress(path string, p progress) error {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if err := atomicfile.Write(path, b, 0o600); err != nil {
		return fmt.Errorf("save merge progress: %w", err)
	}
	return nil
}
