package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The balance map of a family: key ct mark . th dport . slot (intervals on
// the slot), data backend address . port. One element per backend that is
// up and per original port (a port range forward maps every backend the
// same way, 1:1 ranges included).
//
// Registers: the key is built in NFT_REG32_00 (mark), _01 (port) and _02
// (slot); jhash reads the source address from NFT_REG_2 (NFT_REG32_04..07),
// clear of the key. The slot is converted to big endian because interval
// keys compare bytewise; the mark stays in host order like every other
// mark key of the table.

// balanceSeed seeds jhash for balance = "source": any constant does, one
// for the whole table so that a reload keeps every client on its backend.
const balanceSeed = 0xfd0d

// BalanceSet returns the balance map of a family for table t.
func BalanceSet(t *nftables.Table, name string, v6 bool) (*nftables.Set, error) {
	key, err := nftables.ConcatSetType(nftables.TypeMark, nftables.TypeInetService, nftables.TypeInteger)
	if err != nil {
		return nil, fmt.Errorf("balance map key: %w", err)
	}
	addr := nftables.TypeIPAddr
	if v6 {
		addr = nftables.TypeIP6Addr
	}
	data, err := nftables.ConcatSetType(addr, nftables.TypeInetService)
	if err != nil {
		return nil, fmt.Errorf("balance map data: %w", err)
	}
	return &nftables.Set{Table: t, Name: name, KeyType: key, DataType: data, IsMap: true,
		Concatenation: true, Interval: true, KeyByteOrder: binaryutil.BigEndian}, nil
}

// BalanceDNAT returns the expressions of
//
//	dnat ip to ct mark . th dport . numgen random mod SlotSpace map @set
//
// or, with source, "jhash ip saddr mod SlotSpace" instead of numgen. A
// connection whose mark has no element (a forward with one backend) does
// not match, and the rule's later statements are not reached.
func BalanceDNAT(set *nftables.Set, v6, source bool) []expr.Any {
	out := []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: unix.NFT_REG32_00},
		&expr.Payload{DestRegister: unix.NFT_REG32_01, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
	if source {
		off, n := uint32(12), uint32(4)
		if v6 {
			off, n = 8, 16
		}
		out = append(out,
			&expr.Payload{DestRegister: unix.NFT_REG_2, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
			&expr.Hash{SourceRegister: unix.NFT_REG_2, DestRegister: unix.NFT_REG32_02, Length: n,
				Modulus: SlotSpace, Seed: balanceSeed, Type: expr.HashTypeJenkins})
	} else {
		out = append(out, &expr.Numgen{Register: unix.NFT_REG32_02, Modulus: SlotSpace, Type: unix.NFT_NG_RANDOM})
	}
	family, addrLen := uint32(unix.NFPROTO_IPV4), uint32(4)
	if v6 {
		family, addrLen = unix.NFPROTO_IPV6, 16
	}
	return append(out,
		&expr.Byteorder{SourceRegister: unix.NFT_REG32_02, DestRegister: unix.NFT_REG32_02, Op: expr.ByteorderHton, Len: 4, Size: 4},
		&expr.Lookup{SourceRegister: unix.NFT_REG_1, DestRegister: unix.NFT_REG_1, IsDestRegSet: true, SetName: set.Name, SetID: set.ID},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: family, RegAddrMin: unix.NFT_REG_1,
			RegProtoMin: unix.NFT_REG32_00 + addrLen/4, Specified: true},
	)
}

// BalanceElements returns the balance map elements of one forward and one
// original port: each slot range to its backend.
func BalanceElements(mark uint32, dport uint16, ranges []SlotRange, backends []netip.AddrPort) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, len(ranges))
	for _, r := range ranges {
		b := backends[r.Backend]
		out = append(out, nftables.SetElement{
			Key:    balanceKey(mark, dport, r.Lo),
			KeyEnd: balanceKey(mark, dport, r.Hi),
			Val:    append(binary.BigEndian.AppendUint16(b.Addr().AsSlice(), b.Port()), 0, 0),
		})
	}
	return out
}

func balanceKey(mark uint32, dport uint16, slot uint32) []byte {
	k := binary.NativeEndian.AppendUint32(nil, mark)
	k = binary.BigEndian.AppendUint16(k, dport)
	k = append(k, 0, 0)
	return binary.BigEndian.AppendUint32(k, slot)
}
