package bow

import "testing"

func TestSmoke(t *testing.T) {
	for _, bs := range []int64{512, 4096} {
		const blocks = 64
		size := blocks * bs
		mem := NewMemFrom(pattern(size, 1))
		e, err := Open(mem, Options{BlockSize: bs})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Discard(32*bs, 32*bs); err != nil {
			t.Fatal(err)
		}
		if err := e.Checkpoint(); err != nil {
			t.Fatal(err)
		}
		ck := readAll(t, e, size)
		for i := 0; i < 20; i++ {
			if _, err := e.WriteAt(pattern(bs+7, uint64(i+10)), int64(i)*bs+3); err != nil {
				t.Fatal(err)
			}
		}
		checkMap(t, e)
		t.Logf("bs %d: %+v", bs, e.Status())
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		info, err := Inspect(mem)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("info %+v", info)
		if _, err := Restore(mem, RestoreOptions{}); err != nil {
			t.Fatal(err)
		}
		got := mem.Bytes()
		if blk := diffBlocks(got, ck, bs, func(b int64) bool { return b < 32 }); blk >= 0 {
			t.Fatalf("bs %d: block %d differs after restore", bs, blk)
		}
	}
}
