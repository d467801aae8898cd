package conntrack

import (
	"encoding/binary"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/pkg/ctmark"
)

// entryMsg encodes a conntrack message payload as the kernel sends it.
func entryMsg(t *testing.T, mark, status uint32, proto, tcpState uint8) []byte {
	t.Helper()
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.Nested(ctaTupleOrig, func(ae *netlink.AttributeEncoder) error {
		ae.Nested(ctaTupleProto, func(ae *netlink.AttributeEncoder) error {
			ae.Uint8(ctaProtoNum, proto)
			ae.Uint16(2, 40000) // CTA_PROTO_SRC_PORT: ignored
			return nil
		})
		return nil
	})
	ae.Uint32(ctaStatus, status)
	if proto == unix.IPPROTO_TCP {
		ae.Nested(ctaProtoinfo, func(ae *netlink.AttributeEncoder) error {
			ae.Nested(ctaProtoinfoTCP, func(ae *netlink.AttributeEncoder) error {
				ae.Uint8(ctaProtoinfoTCPState, tcpState)
				return nil
			})
			return nil
		})
	}
	ae.Uint32(ctaMark, mark)
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte{unix.AF_INET, 0, 0, 0}, b...)
}

func TestDecodeEntry(t *testing.T) {
	for _, tc := range []struct {
		name        string
		msg         []byte
		want        entry
		established bool
	}{
		{"tcp established", entryMsg(t, 0xfd000001, 0xe, unix.IPPROTO_TCP, tcpConntrackEstablished),
			entry{mark: 0xfd000001, status: 0xe, proto: unix.IPPROTO_TCP, tcpState: 3}, true},
		{"tcp time_wait", entryMsg(t, 0xfd000001, 0xe, unix.IPPROTO_TCP, 7),
			entry{mark: 0xfd000001, status: 0xe, proto: unix.IPPROTO_TCP, tcpState: 7}, false},
		{"udp assured", entryMsg(t, 0xfd000002, ipsAssured|0x8, unix.IPPROTO_UDP, 0),
			entry{mark: 0xfd000002, status: ipsAssured | 0x8, proto: unix.IPPROTO_UDP}, true},
		{"udp unreplied", entryMsg(t, 0xfd000002, 0x8, unix.IPPROTO_UDP, 0),
			entry{mark: 0xfd000002, status: 0x8, proto: unix.IPPROTO_UDP}, false},
	} {
		got, ok := decodeEntry(tc.msg)
		if !ok || got != tc.want || got.established() != tc.established {
			t.Errorf("%s: decodeEntry = %+v, %v (established %v); want %+v, established %v", tc.name, got, ok, got.established(), tc.want, tc.established)
		}
	}
	if _, ok := decodeEntry([]byte{2, 0}); ok {
		t.Error("a short message decoded")
	}
	// Truncated attributes stop the walk without a panic.
	msg := entryMsg(t, 0xfd000001, 0, unix.IPPROTO_UDP, 0)
	for i := range msg {
		decodeEntry(msg[:i])
	}
}

func TestMarkFilterAssembles(t *testing.T) {
	for _, n := range []int{0, 1, 3, maxFilterMarks, maxFilterMarks + 1} {
		marks := make([]uint32, n)
		for i := range marks {
			marks[i] = 0xfd000000 | uint32(i+1)
		}
		prog, err := bpf.Assemble(markFilter(ctmark.Default, marks))
		if err != nil {
			t.Fatalf("%d marks: %v", n, err)
		}
		if len(prog) > 4096 {
			t.Errorf("%d marks: %d instructions, the kernel takes at most 4096", n, len(prog))
		}
	}
}
