package vswitch

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// The management protocol: the client sends one JSON request line on a
// Unix stream socket; the switch answers with one JSON response line and
// closes, except for "capture", where a pcap stream follows the response
// until the client closes the connection.
type mgmtRequest struct {
	Op    string `json:"op"` // ports, macs, stats, vlan, hub, disconnect, capture
	Port  int    `json:"port,omitempty"`
	VLAN  int    `json:"vlan,omitempty"`
	Trunk []int  `json:"trunk,omitempty"`
	On    bool   `json:"on,omitempty"`
	Snap  int    `json:"snaplen,omitempty"`
}

type mgmtResponse struct {
	Error string     `json:"error,omitempty"`
	Ports []PortInfo `json:"ports,omitempty"`
	MACs  []MACEntry `json:"macs,omitempty"`
	Stats *Stats     `json:"stats,omitempty"`
}

// ListenManagement serves the management protocol on path (mode 0600
// unless o says otherwise). Client talks to it. A hub mode changed through
// it is kept in PATH.state, so that a switch started again with the same
// Config.Hub (after a crash or for an upgrade) comes back in the mode it
// was left in; started with another Config.Hub, the new setting wins.
func (s *Switch) ListenManagement(path string, o ListenOptions) error {
	ln, err := listenUnix("unix", path, o)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.stateFile = path + ".state"
	s.mu.Unlock()
	s.restoreState()
	if err := s.addCloser(ln); err != nil {
		ln.Close()
		return err
	}
	ok := s.goroutine(func() {
		s.acceptLoop(ln, "mgmt", func(c *net.UnixConn) {
			if !s.goroutine(func() { s.serveManagement(c) }) {
				c.Close()
			}
		})
	})
	if !ok {
		ln.Close()
		return ErrClosed
	}
	return nil
}

func (s *Switch) serveManagement(c *net.UnixConn) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReaderSize(c, 4096).ReadSlice('\n')
	if err != nil {
		s.warn.warn("mgmt", "management client sent no request", "err", err)
		return
	}
	var req mgmtRequest
	var resp mgmtResponse
	if err := json.Unmarshal(line, &req); err != nil {
		resp.Error = fmt.Sprintf("bad request: %v", err)
	} else {
		switch req.Op {
		case "ports":
			resp.Ports = s.Ports()
		case "macs":
			resp.MACs = s.MACs()
		case "stats":
			st := s.Stats()
			resp.Stats = &st
		case "vlan":
			err = s.SetVLAN(req.Port, req.VLAN, req.Trunk)
		case "hub":
			s.SetHub(req.On)
			s.saveState()
		case "disconnect":
			err = s.Disconnect(req.Port)
		case "capture":
			s.serveCapture(c, req)
			return
		default:
			err = fmt.Errorf("unknown operation %q", req.Op)
		}
		if err != nil {
			resp.Error = err.Error()
		}
	}
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	json.NewEncoder(c).Encode(&resp)
}

func (s *Switch) serveCapture(c *net.UnixConn, req mgmtRequest) {
	c.SetDeadline(time.Time{})
	if req.Port != 0 {
		if _, err := s.port(req.Port); err != nil {
			json.NewEncoder(c).Encode(&mgmtResponse{Error: err.Error()})
			return
		}
	}
	if err := json.NewEncoder(c).Encode(&mgmtResponse{}); err != nil {
		return
	}
	cp, err := s.Capture(c, req.Port, req.Snap)
	if err != nil {
		return
	}
	// The client ends the capture by closing; it sends nothing else.
	gone := make(chan struct{})
	go func() {
		io.Copy(io.Discard, c)
		close(gone)
	}()
	select {
	case <-gone:
	case <-cp.Done():
	case <-s.done:
	}
	cp.Close()
	c.Close()
	<-gone
}

// Client talks to a switch's management socket.
type Client struct {
	Path string
}

func (cl *Client) call(req mgmtRequest) (*mgmtResponse, error) {
	c, err := net.DialTimeout("unix", cl.Path, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("switch management socket %s: %w (is `umlkit switch` running?)", cl.Path, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := json.NewEncoder(c).Encode(&req); err != nil {
		return nil, fmt.Errorf("switch %s: %w", cl.Path, err)
	}
	var resp mgmtResponse
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		return nil, fmt.Errorf("switch %s: read answer: %w", cl.Path, err)
	}
	if resp.Error != "" {
		return nil, fmt.Errorf("switch %s: %s", cl.Path, resp.Error)
	}
	return &resp, nil
}

// Ports returns the switch's ports.
func (cl *Client) Ports() ([]PortInfo, error) {
	r, err := cl.call(mgmtRequest{Op: "ports"})
	if err != nil {
		return nil, err
	}
	return r.Ports, nil
}

// MACs returns the switch's learned addresses.
func (cl *Client) MACs() ([]MACEntry, error) {
	r, err := cl.call(mgmtRequest{Op: "macs"})
	if err != nil {
		return nil, err
	}
	return r.MACs, nil
}

// Stats returns the switch's totals.
func (cl *Client) Stats() (Stats, error) {
	r, err := cl.call(mgmtRequest{Op: "stats"})
	if err != nil {
		return Stats{}, err
	}
	if r.Stats == nil {
		return Stats{}, fmt.Errorf("switch %s: answer without stats", cl.Path)
	}
	return *r.Stats, nil
}

// SetVLAN sets a port's untagged VLAN and trunk VLANs.
func (cl *Client) SetVLAN(port, vlan int, trunk []int) error {
	_, err := cl.call(mgmtRequest{Op: "vlan", Port: port, VLAN: vlan, Trunk: trunk})
	return err
}

// SetHub turns hub mode on or off.
func (cl *Client) SetHub(on bool) error {
	_, err := cl.call(mgmtRequest{Op: "hub", On: on})
	return err
}

// Disconnect closes a port.
func (cl *Client) Disconnect(port int) error {
	_, err := cl.call(mgmtRequest{Op: "disconnect", Port: port})
	return err
}

// Capture copies the pcap stream of port (0: all ports) to w until stop
// is closed, the switch goes away, or writing to w fails. It returns nil
// when stop ended it.
func (cl *Client) Capture(w io.Writer, port, snaplen int, stop <-chan struct{}) error {
	c, err := net.DialTimeout("unix", cl.Path, 5*time.Second)
	if err != nil {
		return fmt.Errorf("switch management socket %s: %w (is `umlkit switch` running?)", cl.Path, err)
	}
	defer c.Close()
	if err := json.NewEncoder(c).Encode(&mgmtRequest{Op: "capture", Port: port, Snap: snaplen}); err != nil {
		return fmt.Errorf("switch %s: %w", cl.Path, err)
	}
	br := bufio.NewReader(c)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("switch %s: read answer: %w", cl.Path, err)
	}
	var resp mgmtResponse
	if err := json.Unmarshal(line, &resp); err != nil {
		return fmt.Errorf("switch %s: bad answer: %w", cl.Path, err)
	}
	if resp.Error != "" {
		return fmt.Errorf("switch %s: %s", cl.Path, resp.Error)
	}
	done := make(chan error, 1)
	go func() { done <- copyPcap(w, br) }()
	select {
	case <-stop:
		c.Close()
		<-done
		return nil
	case err := <-done:
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return errors.New("switch closed the capture")
		}
		return err
	}
}

// copyPcap copies a pcap stream record by record, so that w only ever
// holds whole records however the stream ends.
func copyPcap(w io.Writer, r io.Reader) error {
	buf := make([]byte, 64<<10)
	if _, err := io.ReadFull(r, buf[:24]); err != nil {
		return err
	}
	if _, err := w.Write(buf[:24]); err != nil {
		return err
	}
	for {
		if _, err := io.ReadFull(r, buf[:16]); err != nil {
			return err
		}
		n := int(binary.LittleEndian.Uint32(buf[8:]))
		if n > len(buf)-16 {
			return fmt.Errorf("pcap record of %d bytes", n)
		}
		if _, err := io.ReadFull(r, buf[16:16+n]); err != nil {
			return err
		}
		if _, err := w.Write(buf[:16+n]); err != nil {
			return err
		}
	}
}

// switchState is what a restarted switch takes back from PATH.state.
type switchState struct {
	Configured bool `json:"configured_hub"` // Config.Hub when it was saved
	Hub        bool `json:"hub"`
}

func (s *Switch) saveState() {
	s.mu.Lock()
	path := s.stateFile
	s.mu.Unlock()
	if path == "" {
		return
	}
	b, _ := json.Marshal(switchState{Configured: s.cfg.Hub, Hub: s.Hub()})
	tmp := path + ".tmp"
	err := os.WriteFile(tmp, append(b, '\n'), 0o600)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		s.warn.warn("state", "cannot save the switch's state: a restarted switch will start in its configured mode", "file", path, "err", err)
	}
}

func (s *Switch) restoreState() {
	s.mu.Lock()
	path := s.stateFile
	s.mu.Unlock()
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	var st switchState
	if err := json.Unmarshal(b, &st); err != nil {
		s.warn.warn("state", "switch state unreadable: starting in the configured mode", "file", path, "err", err)
		return
	}
	if st.Configured == s.cfg.Hub && st.Hub != s.Hub() {
		s.SetHub(st.Hub)
		s.log.Info("mode restored", "hub", st.Hub, "file", path)
	}
}
