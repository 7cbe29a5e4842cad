package vswitch

import (
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// macTable maps (VLAN, MAC) to the port the address was last seen on.
// Lookups and refreshes take only the read lock; new entries, aging and
// port removal take the write lock. It holds at most max entries: when it
// is full, new addresses are not learned (their frames are flooded) until
// old ones age out.
type macTable struct {
	mu      sync.RWMutex
	m       map[uint64]*macEntry
	max     int
	refused atomic.Uint64
}

type macEntry struct {
	port atomic.Pointer[port]
	seen atomic.Int64 // unix nanoseconds, from the switch's coarse clock
}

func newMACTable(max int) *macTable {
	return &macTable{m: make(map[uint64]*macEntry), max: max}
}

// learn records that key was seen on p at now. It reports false when the
// table is full and key is new.
func (t *macTable) learn(key uint64, p *port, now int64) bool {
	t.mu.RLock()
	e := t.m[key]
	t.mu.RUnlock()
	if e != nil {
		if e.port.Load() != p {
			e.port.Store(p)
		}
		if e.seen.Load() != now {
			e.seen.Store(now)
		}
		return true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if e = t.m[key]; e == nil {
		if len(t.m) >= t.max {
			t.refused.Add(1)
			return false
		}
		e = new(macEntry)
		t.m[key] = e
	}
	e.port.Store(p)
	e.seen.Store(now)
	return true
}

// lookup returns the port for key, or nil when it is unknown or older
// than age (age 0: entries never expire).
func (t *macTable) lookup(key uint64, now int64, age time.Duration) *port {
	t.mu.RLock()
	e := t.m[key]
	t.mu.RUnlock()
	if e == nil {
		return nil
	}
	if age > 0 && now-e.seen.Load() > int64(age) {
		return nil
	}
	return e.port.Load()
}

// expire removes entries not seen for longer than age, and returns how
// many it removed.
func (t *macTable) expire(now int64, age time.Duration) int {
	if age <= 0 {
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for k, e := range t.m {
		if now-e.seen.Load() > int64(age) {
			delete(t.m, k)
			n++
		}
	}
	return n
}

// forget removes every entry that points to p.
func (t *macTable) forget(p *port) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, e := range t.m {
		if e.port.Load() == p {
			delete(t.m, k)
		}
	}
}

func (t *macTable) len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.m)
}

// MACEntry is one learned address.
type MACEntry struct {
	MAC  string        `json:"mac"`
	VLAN int           `json:"vlan"`
	Port int           `json:"port"`
	Age  time.Duration `json:"age_ns"`
}

func (t *macTable) entries(now int64) []MACEntry {
	t.mu.RLock()
	out := make([]MACEntry, 0, len(t.m))
	for k, e := range t.m {
		p := e.port.Load()
		if p == nil {
			continue
		}
		mac := net.HardwareAddr{byte(k >> 40), byte(k >> 32), byte(k >> 24), byte(k >> 16), byte(k >> 8), byte(k)}
		out = append(out, MACEntry{MAC: mac.String(), VLAN: int(k >> 48), Port: p.id, Age: time.Duration(max(0, now-e.seen.Load()))})
	}
	t.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].VLAN != out[j].VLAN {
			return out[i].VLAN < out[j].VLAN
		}
		return out[i].MAC < out[j].MAC
	})
	return out
}
