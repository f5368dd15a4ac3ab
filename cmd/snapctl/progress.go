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
// bytes) that draws on stderr: a live bar on a terminal, a plain line per
// 10 % otherwise. Inputs under 64 MiB draw nothing but the final line.
func (a *app) copyProgress(verb string) func(done, total int64) {
	return newProgress(a.errOut, verb).update
}

type progress struct {
	mu      sync.Mutex
	w       io.Writer
	verb    string
	tty     bool
	start   time.Time
	lastPct int
}

func newProgress(w io.Writer, verb string) *progress {
	return &progress{w: w, verb: verb, tty: isTerminal(w), start: time.Now(), lastPct: -1}
}

func (p *progress) update(done, total int64) {
	if total <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	pct := int(done * 100 / total)
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
	if pct/10 != p.lastPct/10 || (done >= total && p.lastPct != 100) {
		p.lastPct = pct
		fmt.Fprintf(p.w, "%s: %d%% (%d of %d MiB, %.1f MB/s)\n", p.verb, pct, done>>20, total>>20, mbps)
	}
}

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
