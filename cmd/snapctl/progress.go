package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// copyProgress returns a progress callback for long copies (done and total
// bytes) that draws on stderr: a live bar on a terminal, otherwise a plain
// line at 0 % and at each further 10 % step reached, the last at 100 %.
func (a *app) copyProgress(verb string) func(done, total int64) {
	return newProgress(a.errOut, verb).update
}

type progress struct {
	mu    sync.Mutex
	w     io.Writer
	verb  string
	tty   bool
	start time.Time
	// lastStep is the 10 % step of the last line printed (0 to 10), -1
	// before the first; a step is printed once, and never one below it.
	lastStep int
}

func newProgress(w io.Writer, verb string) *progress {
	return &progress{w: w, verb: verb, tty: isTerminal(w), start: time.Now(), lastStep: -1}
}

func (p *progress) update(done, total int64) {
	if total <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	done = min(max(done, 0), total)
	pct := min(max(int(done*100/total), 0), 100)
	el := time.Since(p.start).Seconds()
	mbps := 0.0
	if el > 0 {
		mbps = float64(done) / el / 1e6
	}
	eta := "?"
	if done > 0 && done < total {
		eta = (time.Duration(el*float64(total-done)/float64(done)) * time.Second).Round(time.Second).String()
	} else if done >= total {
		eta = "0s"
	}
	if p.tty {
		bar := strings.Repeat("#", pct/5) + strings.Repeat(".", 20-pct/5)
		fmt.Fprintf(p.w, "\r%s [%s] %3d%% %7.1f MB/s ETA %-8s", p.verb, bar, pct, mbps, eta)
		if done >= total {
			fmt.Fprintln(p.w)
		}
		return
	}
	if step := pct / 10; step > p.lastStep {
		p.lastStep = step
		n, unit := sizeUnit(total)
		fmt.Fprintf(p.w, "%s: %d%% (%d of %d %s, %.1f MB/s)\n", p.verb, pct, done/n, total/n, unit, mbps)
	}
}

// sizeUnit is the unit progress lines count total bytes in: the largest of
// MiB, KiB and bytes in which total is at least 10, so that neither number
// is off by more than a tenth of the total (a merge of 400 KiB does not
// read "0 of 0 MiB").
func sizeUnit(total int64) (int64, string) {
	switch {
	case total >= 10<<20:
		return 1 << 20, "MiB"
	case total >= 10<<10:
		return 1 << 10, "KiB"
	}
	return 1, "bytes"
}

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
