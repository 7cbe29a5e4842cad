package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/umlkit/umlkit/internal/hostdirs"
	"github.com/umlkit/umlkit/internal/hostnet"
)

// Bridged nodes need the host to forward IPv4. A lab that finds forwarding
// off turns it on (hostnet.EnableNAT does) and says so in its state dir;
// when its last bridged node is gone, it turns forwarding off again unless
// umlkit's NAT table still has rules (another lab's bridged nodes, or
// umlkit net nat). In that case it leaves a hand-off note for the network
// namespace in the runtime dir, and whichever lab later finds the table
// empty turns forwarding off.

const forwardSysctl = "/proc/sys/net/ipv4/ip_forward"

// forwardClaimPath records that this lab turned forwarding on.
func (l *Lab) forwardClaimPath() string { return filepath.Join(l.StateDir(), "ip_forward") }

// handoffPath is the hand-off note of the calling thread's network
// namespace: forwarding is per namespace.
func handoffPath() (string, error) {
	link, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		return "", fmt.Errorf("network namespace: %w", err)
	}
	ino := strings.TrimSuffix(strings.TrimPrefix(link, "net:["), "]")
	return filepath.Join(hostdirs.Runtime(), "ip_forward."+ino), nil
}

// claimForwarding is called before a bridged node's NAT rule goes in:
// when forwarding is off, the lab records that it is about to turn it on.
// It returns whether it did. Forwarding found on with a hand-off note but
// no rule in umlkit's NAT table means the note is stale (its last user
// went without lab down, or umlkit net nat --remove took the last rule)
// and forwarding is on for someone else now: the note goes, so that no
// lab turns that off.
func (l *Lab) claimForwarding() (bool, error) {
	on, err := hostnet.IPForwarding()
	if err != nil {
		return false, fmt.Errorf("read net.ipv4.ip_forward: %w", err)
	}
	if on {
		hp, err := handoffPath()
		if err != nil {
			return false, err
		}
		if _, err := os.Stat(hp); err != nil {
			return false, nil
		}
		rules, err := hostnet.ListNAT()
		if err != nil || len(rules) > 0 {
			return false, err
		}
		return false, removeIfExists(hp)
	}
	note := "net.ipv4.ip_forward was 0; umlkit lab up turned it on for the lab's bridged nodes, and lab down turns it off again\n"
	if err := os.WriteFile(l.forwardClaimPath(), []byte(note), 0o644); err != nil {
		return false, fmt.Errorf("lab %s: record that it turns forwarding on: %w", l.Dir, err)
	}
	return true, nil
}

// forwardPlan is what becomes of forwarding once a lab needs it no more.
type forwardPlan struct {
	TurnOff  bool // write 0 and drop the claim and the hand-off note
	HandOver bool // leave forwarding on and the duty in the hand-off note
}

// planForwarding decides from whether this lab turned forwarding on
// (own), whether a lab that went down earlier left the duty to turn it off
// (handoff), and how many rules umlkit's NAT table still holds.
func planForwarding(own, handoff bool, rulesLeft int) forwardPlan {
	switch {
	case !own && !handoff:
		return forwardPlan{}
	case rulesLeft > 0:
		return forwardPlan{HandOver: true}
	default:
		return forwardPlan{TurnOff: true}
	}
}

// usesBridges reports whether the lab has bridged nodes or turned
// forwarding on (for a node lab.conf no longer makes bridged).
func (l *Lab) usesBridges() bool {
	for _, n := range l.Nodes {
		if n.Bridged {
			return true
		}
	}
	_, err := os.Stat(l.forwardClaimPath())
	return err == nil
}

// releaseForwarding turns forwarding off when this lab (or a lab before
// it, through the hand-off note) turned it on and nothing in umlkit's NAT
// table needs it any more. It returns a line for the user, or "".
func (l *Lab) releaseForwarding() (string, error) {
	_, err := os.Stat(l.forwardClaimPath())
	own := err == nil
	hp, err := handoffPath()
	if err != nil {
		return "", err
	}
	_, err = os.Stat(hp)
	handoff := err == nil
	if !own && !handoff {
		return "", nil
	}
	rules, err := hostnet.ListNAT()
	if err != nil {
		return "", err
	}
	p := planForwarding(own, handoff, len(rules))
	switch {
	case p.TurnOff:
		if err := os.WriteFile(forwardSysctl, []byte("0"), 0); err != nil {
			return "", fmt.Errorf("turn net.ipv4.ip_forward off again: %w", err)
		}
		err := errors.Join(removeIfExists(l.forwardClaimPath()), removeIfExists(hp))
		return "host: net.ipv4.ip_forward off again (umlkit turned it on for bridged nodes)", err
	case p.HandOver && own:
		if err := os.MkdirAll(filepath.Dir(hp), 0o755); err != nil {
			return "", err
		}
		note := fmt.Sprintf("net.ipv4.ip_forward was 0 before umlkit lab up %s turned it on; the last lab down turns it off\n", l.Dir)
		if err := os.WriteFile(hp, []byte(note), 0o644); err != nil {
			return "", fmt.Errorf("leave the forwarding hand-off note %s: %w", hp, err)
		}
		return fmt.Sprintf("host: net.ipv4.ip_forward stays on: umlkit's NAT table still has %d rule(s) (another lab's bridged nodes, or umlkit net nat); the last lab down turns it off", len(rules)),
			removeIfExists(l.forwardClaimPath())
	}
	return "", nil
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
