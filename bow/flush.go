package bow

import (
	"sync"
	"sync/atomic"
)

// flusher shares device flushes between concurrent callers. A caller needs
// a flush that starts after it called; if one is already running it waits
// for that one and then for the next, which serves everybody who arrived
// meanwhile. A failed flush is sticky: written data may be lost, so every
// later flush reports the failure too.
type flusher struct {
	mu      sync.Mutex
	cond    sync.Cond
	running bool
	started uint64
	done    uint64
	err     error
	count   atomic.Uint64
}

func (f *flusher) flush(dev Device) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cond.L == nil {
		f.cond.L = &f.mu
	}
	target := f.started + 1
	for f.done < target && f.err == nil {
		if f.running {
			f.cond.Wait()
			continue
		}
		f.running = true
		f.started++
		gen := f.started
		f.mu.Unlock()
		err := dev.Flush()
		f.mu.Lock()
		f.running = false
		f.done = gen
		f.count.Add(1)
		if err != nil {
			f.err = err
		}
		f.cond.Broadcast()
	}
	return f.err
}
