package vswitch

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Defaults for Config fields left zero.
const (
	DefaultMaxPorts     = 1024
	DefaultMACTableSize = 16384
	DefaultMACAge       = 300 * time.Second
	DefaultQueueLen     = 512
	DefaultMaxFrame     = 9216
	DefaultBatch        = 16
	DefaultVLAN         = 1
)

// Errors callers branch on.
var (
	// ErrClosed is returned by Attach and the transports after Close.
	ErrClosed = errors.New("switch closed")
	// ErrFull is returned by Attach when the switch has MaxPorts ports.
	ErrFull = errors.New("switch has no free port")
	// ErrNoPort is returned for a port number that is not connected.
	ErrNoPort = errors.New("no such port")
	// ErrInUse is returned by the listeners when another process answers
	// on the socket path.
	ErrInUse = errors.New("socket in use by a running process")
)

// Config configures a Switch. Zero fields take the defaults above.
type Config struct {
	// Hub sends every frame to every other port of its VLAN, without
	// learning.
	Hub bool
	// MaxPorts bounds the number of connected ports.
	MaxPorts int
	// MACTableSize bounds the learned addresses; when the table is full,
	// new addresses are flooded until old ones age out.
	MACTableSize int
	// MACAge is how long an address is remembered after its last frame;
	// negative means forever.
	MACAge time.Duration
	// QueueLen is each port's output queue, in frames.
	QueueLen int
	// MaxFrame is the largest untagged frame carried, in bytes (without
	// FCS); larger frames are dropped and counted.
	MaxFrame int
	// Batch is how many frames a port receives or sends per system call.
	Batch int
	// HandshakeTimeout bounds how long a daemon-protocol client may take
	// to send its request; zero means 5 seconds.
	HandshakeTimeout time.Duration
	// Logger receives port events and rate-limited warnings; nil discards.
	Logger *slog.Logger
}

func (c *Config) fill() {
	if c.MaxPorts <= 0 {
		c.MaxPorts = DefaultMaxPorts
	}
	if c.MACTableSize <= 0 {
		c.MACTableSize = DefaultMACTableSize
	}
	if c.MACAge == 0 {
		c.MACAge = DefaultMACAge
	}
	if c.QueueLen <= 1 {
		c.QueueLen = DefaultQueueLen
	}
	if c.MaxFrame <= 0 {
		c.MaxFrame = DefaultMaxFrame
	}
	if c.MaxFrame < ethHeaderLen {
		c.MaxFrame = ethHeaderLen
	}
	if c.Batch <= 0 {
		c.Batch = DefaultBatch
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Switch forwards Ethernet frames between its ports. Its methods are safe
// for concurrent use.
type Switch struct {
	cfg  Config
	log  *slog.Logger
	warn *rateLog
	hub  atomic.Bool
	pool *framePool
	macs *macTable
	now  atomic.Int64 // coarse clock, unix nanoseconds

	mu        sync.Mutex
	byID      map[int]*port
	closers   []io.Closer
	closed    bool
	active    atomic.Pointer[[]*port]
	captures  atomic.Pointer[[]*Capture]
	floodDrop atomic.Uint64
	keeper    *keeperClient // UseKeeper
	kept      []keptConn    // what the keeper held, not yet taken back
	stateFile string        // ListenManagement's PATH.state

	done chan struct{}
	wg   sync.WaitGroup
}

// New returns a running switch with no ports. Close stops it.
func New(cfg Config) *Switch {
	cfg.fill()
	s := &Switch{
		cfg:  cfg,
		log:  cfg.Logger,
		warn: newRateLog(cfg.Logger, 10*time.Second),
		pool: newFramePool(cfg.MaxFrame + vlanTagLen),
		macs: newMACTable(cfg.MACTableSize),
		byID: map[int]*port{},
		done: make(chan struct{}),
	}
	s.hub.Store(cfg.Hub)
	s.now.Store(time.Now().UnixNano())
	s.active.Store(&[]*port{})
	s.wg.Go(s.clock)
	return s
}

// clock keeps the coarse time the hot path reads, and ages the MAC table.
func (s *Switch) clock() {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-s.done:
			return
		case now := <-t.C:
			s.now.Store(now.UnixNano())
			if i%4 == 0 {
				s.macs.expire(now.UnixNano(), s.cfg.MACAge)
			}
		}
	}
}

// Close disconnects every port, closes the listeners the transports
// added, and waits for every goroutine of the switch to end. It is
// idempotent and returns nil.
func (s *Switch) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.wg.Wait()
		return nil
	}
	s.closed = true
	closers := s.closers
	s.closers = nil
	ports := make([]*port, 0, len(s.byID))
	for _, p := range s.byID {
		ports = append(ports, p)
	}
	s.mu.Unlock()
	close(s.done)
	for _, c := range closers {
		c.Close()
	}
	for _, p := range ports {
		p.close("switch closed")
	}
	s.wg.Wait()
	for _, c := range s.stopCaptures() {
		c.Close()
	}
	return nil
}

// addCloser registers a listener that Close closes. It fails after Close.
func (s *Switch) addCloser(c io.Closer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.closers = append(s.closers, c)
	return nil
}

// removeCloser forgets a listener closed early.
func (s *Switch) removeCloser(c io.Closer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, x := range s.closers {
		if x == c {
			s.closers = append(s.closers[:i], s.closers[i+1:]...)
			return
		}
	}
}

// goroutine runs f as a goroutine Close waits for, unless the switch is
// closed already.
func (s *Switch) goroutine(f func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Go(f)
	return true
}

// PacketConn is a connected packet socket: SOCK_SEQPACKET, or SOCK_DGRAM
// connected to its peer. *net.UnixConn and *os.File (of a socket) are
// PacketConns.
type PacketConn interface {
	syscall.Conn
	io.Closer
}

// PortOptions describes a port being attached.
type PortOptions struct {
	// Kind names the transport in views ("bess", "daemon", ...).
	Kind string
	// Peer describes the other end in views and logs.
	Peer string
	// VLAN is the port's untagged (access or native) VLAN; 0 means 1.
	VLAN int
	// Trunk lists VLANs the port carries tagged.
	Trunk []int
	// ID asks for a port number; 0 picks the lowest free one.
	ID int
	// OnClose runs once, after the port is disconnected for any reason.
	OnClose func()
	// OnVLAN runs after SetVLAN changed the port's VLANs, so that its
	// transport can keep them across a restart of the switch.
	OnVLAN func(port, vlan int, trunk []int)
	// closeWhenGone ends the port when sends find no peer: a restored
	// daemon port has no control connection to tell it.
	closeWhenGone bool
}

// Attach adds a port that carries one Ethernet frame per packet over c,
// and starts forwarding. The switch owns c from then on and closes it when
// the port goes away: when the peer closes it (a zero-length read on
// SOCK_SEQPACKET), on a bad frame, on Disconnect, or on Close. It returns
// the port number.
func (s *Switch) Attach(c PacketConn, opts PortOptions) (int, error) {
	p, err := s.attach(c, opts)
	if err != nil {
		return 0, err
	}
	return p.id, nil
}

func (s *Switch) attach(c PacketConn, opts PortOptions) (*port, error) {
	p, err := s.newPort(c, opts)
	if err != nil {
		c.Close()
		return nil, err
	}
	if err := s.start(p, opts); err != nil {
		return nil, err
	}
	return p, nil
}

// start numbers p, adds it to the switch and starts its goroutines; on
// failure it releases p.
func (s *Switch) start(p *port, opts PortOptions) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		p.release()
		return ErrClosed
	}
	if len(s.byID) >= s.cfg.MaxPorts {
		s.mu.Unlock()
		p.release()
		return fmt.Errorf("attach %s port %s: %w (%d ports)", opts.Kind, opts.Peer, ErrFull, s.cfg.MaxPorts)
	}
	id := opts.ID
	if id <= 0 || id > s.cfg.MaxPorts || s.byID[id] != nil {
		for id = 1; s.byID[id] != nil; id++ {
		}
	}
	p.id = id
	s.byID[id] = p
	s.publish()
	s.wg.Add(2)
	s.mu.Unlock()
	go p.readLoop()
	go p.writeLoop()
	s.log.Info("port connected", "port", id, "kind", p.kind, "peer", p.peer)
	return nil
}

// publish rebuilds the flood list; s.mu must be held.
func (s *Switch) publish() {
	ids := make([]int, 0, len(s.byID))
	for id := range s.byID {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	l := make([]*port, len(ids))
	for i, id := range ids {
		l[i] = s.byID[id]
	}
	s.active.Store(&l)
}

func (s *Switch) removePort(p *port) {
	s.mu.Lock()
	if s.byID[p.id] == p {
		delete(s.byID, p.id)
		s.publish()
	}
	s.mu.Unlock()
	s.macs.forget(p)
}

// input decides where one frame that arrived on p goes, and adds those
// decisions to p.outs for p.flush. It returns false when the frame is so
// malformed that the port must be closed.
func (s *Switch) input(p *port, f *frame) bool {
	b := f.buf[:f.n]
	if f.n < ethHeaderLen {
		p.rxDrops.Add(1)
		s.warn.warn("runt", "frame shorter than an Ethernet header: closing the port", "port", p.id, "peer", p.peer, "len", f.n)
		return false
	}
	vid, tagged, ok := parseVLAN(b)
	if !ok {
		p.rxDrops.Add(1)
		s.warn.warn("runt", "802.1Q frame shorter than its header: closing the port", "port", p.id, "peer", p.peer, "len", f.n)
		return false
	}
	pv := uint16(p.vlan.Load())
	if !tagged || vid == 0 {
		vid = pv
	} else if vid != pv && !p.trunkHas(vid) {
		p.rxDrops.Add(1)
		s.warn.warn("vlan", "tagged frame for a VLAN the port does not carry: dropped", "port", p.id, "vlan", vid)
		return true
	}
	if !tagged && f.n > s.cfg.MaxFrame {
		p.rxDrops.Add(1)
		s.warn.warn("oversize", "frame larger than the switch's maximum: dropped", "port", p.id, "len", f.n, "max", s.cfg.MaxFrame)
		return true
	}
	f.vid, f.tagged = vid, tagged
	f.tag = [4]byte{0x81, 0x00, byte(vid >> 8), byte(vid)}
	p.rxFrames.Add(1)
	p.rxBytes.Add(uint64(f.n))
	if cs := s.captures.Load(); cs != nil {
		for _, c := range *cs {
			c.offer(p.id, f)
		}
	}
	now := s.now.Load()
	hub := s.hub.Load()
	if !hub && b[6]&1 == 0 {
		if !s.macs.learn(macKey(vid, b[6:12]), p, now) {
			s.warn.warn("mac-full", "MAC table full: flooding unknown addresses", "size", s.cfg.MACTableSize)
		}
	}
	if !hub && b[0]&1 == 0 {
		if q := s.macs.lookup(macKey(vid, b[0:6]), now, s.cfg.MACAge); q != nil && !q.closed.Load() {
			if q != p {
				f.flood = false
				p.outs = append(p.outs, out{q: q, f: f})
			}
			return true
		}
	}
	f.flood = true
	for _, q := range *s.active.Load() {
		if q != p && q.member(vid) {
			p.outs = append(p.outs, out{q: q, f: f})
		}
	}
	return true
}

// enqueue puts f on q's queue for q's writer, or drops it when the queue
// is full; flooded frames may use only half of the queue.
func (s *Switch) enqueue(q *port, f *frame) {
	limit := cap(q.q)
	if f.flood {
		limit /= 2
	}
	if len(q.q) >= limit || q.closed.Load() {
		q.txDrops.Add(1)
		return
	}
	f.refs.Add(1)
	q.pending.Add(1)
	select {
	case q.q <- f:
	default:
		f.refs.Add(-1) // the caller still holds a reference
		q.pending.Add(-1)
		q.txDrops.Add(1)
	}
}

// Hub reports whether the switch is in hub mode.
func (s *Switch) Hub() bool { return s.hub.Load() }

// SetHub turns hub mode on or off.
func (s *Switch) SetHub(on bool) {
	s.hub.Store(on)
	s.log.Info("mode changed", "hub", on)
}

func (s *Switch) port(id int) (*port, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.byID[id]
	if p == nil {
		return nil, fmt.Errorf("port %d: %w", id, ErrNoPort)
	}
	return p, nil
}

// SetVLAN sets port id's untagged VLAN (1-4094) and the VLANs it carries
// tagged (trunk, may be empty).
func (s *Switch) SetVLAN(id, vlan int, trunk []int) error {
	if err := checkVLANs(vlan, trunk); err != nil {
		return fmt.Errorf("port %d: %w", id, err)
	}
	p, err := s.port(id)
	if err != nil {
		return err
	}
	p.setVLAN(vlan, trunk)
	s.macs.forget(p)
	s.log.Info("port vlan changed", "port", id, "vlan", vlan, "trunk", trunk)
	if p.onVLAN != nil {
		p.onVLAN(id, vlan, trunk)
	}
	return nil
}

func checkVLANs(vlan int, trunk []int) error {
	if vlan < 1 || vlan > 4094 {
		return fmt.Errorf("vlan %d out of range 1-4094", vlan)
	}
	for _, v := range trunk {
		if v < 1 || v > 4094 {
			return fmt.Errorf("trunk vlan %d out of range 1-4094", v)
		}
	}
	return nil
}

// Disconnect closes port id.
func (s *Switch) Disconnect(id int) error {
	p, err := s.port(id)
	if err != nil {
		return err
	}
	p.close("disconnected by request")
	return nil
}

// PortInfo is a port's state and counters.
type PortInfo struct {
	ID       int    `json:"id"`
	Kind     string `json:"kind"`
	Peer     string `json:"peer"`
	VLAN     int    `json:"vlan"`
	Trunk    []int  `json:"trunk,omitempty"`
	Queued   int    `json:"queued"`
	RxFrames uint64 `json:"rx_frames"`
	RxBytes  uint64 `json:"rx_bytes"`
	RxDrops  uint64 `json:"rx_drops"`
	TxFrames uint64 `json:"tx_frames"`
	TxBytes  uint64 `json:"tx_bytes"`
	TxDrops  uint64 `json:"tx_drops"`
}

// Ports returns the connected ports, by number.
func (s *Switch) Ports() []PortInfo {
	l := *s.active.Load()
	out := make([]PortInfo, 0, len(l))
	for _, p := range l {
		out = append(out, p.info())
	}
	return out
}

// MACs returns the learned addresses, by VLAN and address.
func (s *Switch) MACs() []MACEntry { return s.macs.entries(s.now.Load()) }

// Stats is the switch's totals.
type Stats struct {
	PID          int    `json:"pid"` // the switch's process
	Hub          bool   `json:"hub"`
	Ports        int    `json:"ports"`
	MACs         int    `json:"macs"`
	MACTableSize int    `json:"mac_table_size"`
	MACRefused   uint64 `json:"mac_refused"`
	RxFrames     uint64 `json:"rx_frames"`
	RxBytes      uint64 `json:"rx_bytes"`
	RxDrops      uint64 `json:"rx_drops"`
	TxFrames     uint64 `json:"tx_frames"`
	TxBytes      uint64 `json:"tx_bytes"`
	TxDrops      uint64 `json:"tx_drops"`
}

// Stats sums the counters of the connected ports.
func (s *Switch) Stats() Stats {
	st := Stats{PID: os.Getpid(), Hub: s.Hub(), MACs: s.macs.len(), MACTableSize: s.cfg.MACTableSize, MACRefused: s.macs.refused.Load()}
	for _, p := range s.Ports() {
		st.Ports++
		st.RxFrames += p.RxFrames
		st.RxBytes += p.RxBytes
		st.RxDrops += p.RxDrops
		st.TxFrames += p.TxFrames
		st.TxBytes += p.TxBytes
		st.TxDrops += p.TxDrops
	}
	return st
}

// expireNow ages the MAC table as of now (tests use it with a fake time).
func (s *Switch) expireNow(now time.Time) int { return s.macs.expire(now.UnixNano(), s.cfg.MACAge) }
