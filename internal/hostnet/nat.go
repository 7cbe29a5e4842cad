package hostnet

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// NATTable is the nftables table (family ip) that holds umlkit's NAT rules;
// nothing else of the host's rule set is touched.
const NATTable = "umlkit"

const natTag = "umlkit nat "

// NATRule is one masquerade rule: traffic from From leaving through Out
// (any interface when empty) gets the host's address.
type NATRule struct {
	From string `json:"from"`
	Out  string `json:"out,omitempty"`
}

func natTagFor(from *net.IPNet, out string) []byte {
	return []byte(natTag + from.String() + " " + out)
}

func parseTag(b []byte) (NATRule, bool) {
	s, ok := strings.CutPrefix(string(b), natTag)
	if !ok {
		return NATRule{}, false
	}
	from, out, _ := strings.Cut(s, " ")
	return NATRule{From: from, Out: out}, true
}

func nftConn() (*nftables.Conn, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return c, nil
}

func nftErr(op string, err error) error {
	if errors.Is(err, unix.EPERM) || strings.Contains(err.Error(), "operation not permitted") {
		return fmt.Errorf("%s: %w", op, ErrPermission)
	}
	return fmt.Errorf("%s: %w", op, err)
}

func natChains(c *nftables.Conn) (*nftables.Table, *nftables.Chain, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, nil, nftErr("list nftables tables", err)
	}
	for _, t := range tables {
		if t.Name != NATTable {
			continue
		}
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
		if err != nil {
			return nil, nil, nftErr("list chains of "+NATTable, err)
		}
		for _, ch := range chains {
			if ch.Table.Name == NATTable && ch.Name == "postrouting" {
				return t, ch, nil
			}
		}
		return t, nil, nil
	}
	return nil, nil, nil
}

// ListNAT returns umlkit's masquerade rules.
func ListNAT() ([]NATRule, error) {
	c, err := nftConn()
	if err != nil {
		return nil, err
	}
	t, ch, err := natChains(c)
	if err != nil || ch == nil {
		return nil, err
	}
	rules, err := c.GetRules(t, ch)
	if err != nil {
		return nil, nftErr("list rules", err)
	}
	var out []NATRule
	for _, r := range rules {
		if nr, ok := parseTag(r.UserData); ok {
			out = append(out, nr)
		}
	}
	return out, nil
}

// EnableNAT turns on IPv4 forwarding and masquerades traffic from `from`
// leaving through out (any interface when empty), in umlkit's own nftables
// table. Enabling a rule that exists already does nothing.
func EnableNAT(from *net.IPNet, out string) error {
	from = &net.IPNet{IP: from.IP.Mask(from.Mask).To4(), Mask: from.Mask}
	if from.IP == nil || len(from.Mask) != net.IPv4len {
		return fmt.Errorf("nat: %s is not an IPv4 network", from)
	}
	if out != "" {
		if err := ValidName(out); err != nil {
			return fmt.Errorf("nat: %w", err)
		}
	}
	existing, err := ListNAT()
	if err != nil {
		return err
	}
	for _, r := range existing {
		if r.From == from.String() && r.Out == out {
			return setSysctl("net/ipv4/ip_forward", "1")
		}
	}
	c, err := nftConn()
	if err != nil {
		return err
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: NATTable})
	ch := c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	exprs := []expr.Any{
		// ip saddr & mask == network
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: from.Mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: from.IP},
	}
	if out != "" {
		name := make([]byte, unix.IFNAMSIZ)
		copy(name, out)
		exprs = append(exprs,
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name})
	}
	exprs = append(exprs, &expr.Masq{})
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprs, UserData: natTagFor(from, out)})
	if err := c.Flush(); err != nil {
		return nftErr("add masquerade for "+from.String(), err)
	}
	return setSysctl("net/ipv4/ip_forward", "1")
}

// DisableNAT removes the masquerade rule for from and out; when no rule is
// left, umlkit's table goes too. Removing a rule that is not there is not
// an error. Forwarding is left as it is: other things on the host may
// need it.
func DisableNAT(from *net.IPNet, out string) error {
	from = &net.IPNet{IP: from.IP.Mask(from.Mask).To4(), Mask: from.Mask}
	c, err := nftConn()
	if err != nil {
		return err
	}
	t, ch, err := natChains(c)
	if err != nil || t == nil {
		return err
	}
	left := 0
	if ch != nil {
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return nftErr("list rules", err)
		}
		tag := natTagFor(from, out)
		for _, r := range rules {
			if bytes.Equal(r.UserData, tag) {
				if err := c.DelRule(r); err != nil {
					return nftErr("delete masquerade for "+from.String(), err)
				}
				continue
			}
			left++
		}
	}
	if left == 0 {
		c.DelTable(t)
	}
	if err := c.Flush(); err != nil {
		return nftErr("delete masquerade for "+from.String(), err)
	}
	return nil
}

// IPForwarding reports whether the host forwards IPv4.
func IPForwarding() (bool, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		return false, err
	}
	return strings.TrimSpace(string(b)) == "1", nil
}
