package vswitch

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// rateLog logs each kind of event at most once per interval, and says how
// many were suppressed in between: bad input can arrive once per frame.
type rateLog struct {
	log      *slog.Logger
	interval time.Duration
	mu       sync.Mutex
	last     map[string]time.Time
	skipped  map[string]int
}

func newRateLog(l *slog.Logger, interval time.Duration) *rateLog {
	return &rateLog{log: l, interval: interval, last: map[string]time.Time{}, skipped: map[string]int{}}
}

// warn logs msg under kind unless one was logged less than interval ago.
func (r *rateLog) warn(kind, msg string, attrs ...any) {
	if !r.log.Enabled(context.Background(), slog.LevelWarn) {
		return
	}
	now := time.Now()
	r.mu.Lock()
	if t, ok := r.last[kind]; ok && now.Sub(t) < r.interval {
		r.skipped[kind]++
		r.mu.Unlock()
		return
	}
	n := r.skipped[kind]
	r.last[kind] = now
	r.skipped[kind] = 0
	r.mu.Unlock()
	if n > 0 {
		attrs = append(attrs, "suppressed", n)
	}
	r.log.Warn(msg, attrs...)
}
