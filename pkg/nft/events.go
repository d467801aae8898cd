package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Change is one object added or deleted in a committed nftables batch, as
// the kernel announces it on NFNLGRP_NFTABLES.
type Change struct {
	Op     string `json:"op"`     // "add" or "delete"
	Object string `json:"object"` // table, chain, rule, set, element, object
	Family string `json:"family"` // ip, ip6, inet, ...
	Table  string `json:"table"`
	// Name is the chain of a rule, the set of an element, or the object's
	// own name (chain, set, object); "" for a table.
	Name   string `json:"name,omitempty"`
	Handle uint64 `json:"handle,omitempty"` // rules
	// Hook and PolicyDrop describe a base chain being added.
	Hook       string `json:"hook,omitempty"`
	PolicyDrop bool   `json:"policy_drop,omitempty"`
}

func (c Change) String() string {
	s := fmt.Sprintf("%s %s %s %s", c.Op, c.Object, c.Family, c.Table)
	switch c.Object {
	case "rule":
		s += fmt.Sprintf(" chain %s handle %d", c.Name, c.Handle)
	case "element":
		s += " set " + c.Name
	case "table":
	default:
		s += " " + c.Name
	}
	return s
}

// Commit is one committed batch (one ruleset generation) with the process
// that committed it, when the kernel reports it.
type Commit struct {
	Gen     uint32
	PID     uint32
	Comm    string
	Changes []Change
}

// FromThisProcess reports whether this process committed the batch. The
// kernel reports the committing thread's id (task_pid_nr), which for a Go
// program is any of its threads, so the thread list is consulted. Inside a
// pid namespace the kernel's id is not ours; then the command name, which
// threads share, decides.
func (c Commit) FromThisProcess() bool {
	if c.PID == 0 {
		return false
	}
	if int(c.PID) == os.Getpid() {
		return true
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", c.PID)); err == nil {
		return true
	}
	return c.Comm != "" && c.Comm == ownComm()
}

var ownComm = sync.OnceValue(func() string {
	b, _ := os.ReadFile("/proc/self/comm")
	return strings.TrimSpace(string(b))
})

// ErrEventsLost is returned by Events.Next when the kernel dropped events
// (the socket's receive buffer overflowed): the caller must check the
// ruleset as a whole.
var ErrEventsLost = errors.New("nftables events lost (receive buffer overflow)")

// Events reads the nftables change events of the Netlink backend's namespace.
//
// It decodes the netlink messages itself rather than use google/nftables'
// Monitor: in v0.3.0 the Monitor drops the table and set names of element
// events, so a deleted map element could not be told from one of another
// table, and it blocks on an unbuffered channel when the reader is slow.
// Only names, handles and a base chain's hook and policy are decoded.
type Events struct {
	conn    *netlink.Conn
	mu      sync.Mutex
	pending []Change
	closed  bool
}

// eventsBuffer is the receive buffer of the event socket: a full replace of
// a 100,000-element table is announced element by element.
const eventsBuffer = 32 << 20

// WatchEvents subscribes to the namespace's nftables events.
func (k *Netlink) WatchEvents() (*Events, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: k.NetNS})
	if err != nil {
		return nil, fmt.Errorf("open nftables event socket: %w", err)
	}
	if err := c.SetReadBuffer(eventsBuffer); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("set event socket buffer: %w", err)
	}
	if err := c.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("subscribe to nftables events: %w", err)
	}
	return &Events{conn: c}, nil
}

// Close ends the subscription; a blocked Next returns an error.
func (e *Events) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	return e.conn.Close()
}

// Next blocks until the next commit. After ErrEventsLost, the changes
// gathered so far are discarded and Next can be called again.
func (e *Events) Next() (Commit, error) {
	for {
		msgs, err := e.conn.Receive()
		if err != nil {
			if errors.Is(err, unix.ENOBUFS) {
				e.pending = nil
				return Commit{}, ErrEventsLost
			}
			return Commit{}, fmt.Errorf("read nftables events: %w", err)
		}
		for _, m := range msgs {
			if uint16(m.Header.Type)>>8 != unix.NFNL_SUBSYS_NFTABLES || len(m.Data) < 4 {
				continue
			}
			typ := int(uint16(m.Header.Type) & 0xff)
			if typ == unix.NFT_MSG_NEWGEN {
				c := decodeGen(m.Data[4:])
				c.Changes, e.pending = e.pending, nil
				return c, nil
			}
			if ch, ok := decodeChange(typ, m.Data[0], m.Data[4:]); ok {
				e.pending = append(e.pending, ch)
			}
		}
	}
}

func decodeGen(b []byte) Commit {
	var c Commit
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return c
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_GEN_ID:
			c.Gen = ad.Uint32()
		case unix.NFTA_GEN_PROC_PID:
			c.PID = ad.Uint32()
		case unix.NFTA_GEN_PROC_NAME:
			c.Comm = ad.String()
		}
	}
	return c
}

// decodeChange reads the names of one change message. Every object's table
// is attribute 1 (NFTA_*_TABLE / NFTA_TABLE_NAME).
func decodeChange(typ int, family byte, b []byte) (Change, bool) {
	var c Change
	var nameAttr, handleAttr uint16
	switch typ {
	case unix.NFT_MSG_NEWTABLE, unix.NFT_MSG_DELTABLE:
		c.Object = "table"
	case unix.NFT_MSG_NEWCHAIN, unix.NFT_MSG_DELCHAIN:
		c.Object, nameAttr = "chain", unix.NFTA_CHAIN_NAME
	case unix.NFT_MSG_NEWRULE, unix.NFT_MSG_DELRULE:
		c.Object, nameAttr, handleAttr = "rule", unix.NFTA_RULE_CHAIN, unix.NFTA_RULE_HANDLE
	case unix.NFT_MSG_NEWSET, unix.NFT_MSG_DELSET:
		c.Object, nameAttr = "set", unix.NFTA_SET_NAME
	case unix.NFT_MSG_NEWSETELEM, unix.NFT_MSG_DELSETELEM:
		c.Object, nameAttr = "element", unix.NFTA_SET_ELEM_LIST_SET
	case unix.NFT_MSG_NEWOBJ, unix.NFT_MSG_DELOBJ:
		c.Object, nameAttr = "object", unix.NFTA_OBJ_NAME
	default:
		return c, false
	}
	c.Op = "add"
	switch typ {
	case unix.NFT_MSG_DELTABLE, unix.NFT_MSG_DELCHAIN, unix.NFT_MSG_DELRULE, unix.NFT_MSG_DELSET,
		unix.NFT_MSG_DELSETELEM, unix.NFT_MSG_DELOBJ:
		c.Op = "delete"
	}
	c.Family = familyByte(family)
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return c, false
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch t := ad.Type(); {
		case t == 1:
			c.Table = ad.String()
		case nameAttr != 0 && t == nameAttr:
			c.Name = ad.String()
		case handleAttr != 0 && t == handleAttr:
			c.Handle = ad.Uint64()
		case c.Object == "chain" && t == unix.NFTA_CHAIN_HOOK:
			ad.Nested(func(nd *netlink.AttributeDecoder) error {
				for nd.Next() {
					if nd.Type() == unix.NFTA_HOOK_HOOKNUM {
						c.Hook = hookNames[nftables.ChainHook(nd.Uint32())]
					}
				}
				return nil
			})
		case c.Object == "chain" && t == unix.NFTA_CHAIN_POLICY:
			c.PolicyDrop = ad.Uint32() == 0 // NF_DROP
		}
	}
	return c, ad.Err() == nil
}

func familyByte(f byte) string {
	switch f {
	case unix.NFPROTO_IPV4:
		return "ip"
	case unix.NFPROTO_IPV6:
		return "ip6"
	case unix.NFPROTO_INET:
		return "inet"
	case unix.NFPROTO_ARP:
		return "arp"
	case unix.NFPROTO_BRIDGE:
		return "bridge"
	case unix.NFPROTO_NETDEV:
		return "netdev"
	}
	return fmt.Sprint(f)
}
