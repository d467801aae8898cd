package doctor

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// legacyInfo is what doctor needs of an iptables-legacy table.
type legacyInfo struct {
	rules       int  // entries beyond the built-in chains' policies
	forwardDrop bool // the FORWARD chain's policy is DROP
}

// readLegacy asks the legacy iptables code for a table's entries, as
// iptables-legacy-save does (getsockopt IPT_SO_GET_INFO, IPT_SO_GET_ENTRIES).
// No Go library speaks this old interface; only the table's size and the
// FORWARD policy are decoded. It is called only for tables listed in
// /proc/net/ip_tables_names, since asking for a table creates it.
func readLegacy(family, table string) (legacyInfo, error) {
	af, level, targetOffset := unix.AF_INET, unix.SOL_IP, 88 // offsetof(struct ipt_entry, target_offset)
	if family == "ip6" {
		af, level, targetOffset = unix.AF_INET6, unix.SOL_IPV6, 140 // struct ip6t_entry
	}
	fd, err := unix.Socket(af, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return legacyInfo{}, fmt.Errorf("open raw socket: %w", err)
	}
	defer unix.Close(fd)
	// struct ipt_getinfo: name[32], valid_hooks, hook_entry[5], underflow[5], num_entries, size.
	info := make([]byte, 84)
	copy(info, table)
	if err := getsockopt(fd, level, 64 /* IPT_SO_GET_INFO */, info); err != nil {
		return legacyInfo{}, fmt.Errorf("get info of table %s: %w", table, err)
	}
	u32 := func(b []byte, off int) uint32 { return binary.NativeEndian.Uint32(b[off:]) }
	validHooks, numEntries, size := u32(info, 32), int(u32(info, 76)), u32(info, 80)
	hooks := 0
	for h := 0; h < 5; h++ {
		if validHooks&(1<<h) != 0 {
			hooks++
		}
	}
	out := legacyInfo{rules: max(numEntries-hooks-1, 0)} // policies and the final error entry
	const forward = unix.NF_INET_FORWARD
	if validHooks&(1<<forward) == 0 {
		return out, nil
	}
	// struct ipt_get_entries: name[32], size, then the entries 8-byte aligned.
	const head = 40
	entries := make([]byte, head+int(size))
	copy(entries, table)
	binary.NativeEndian.PutUint32(entries[32:], size)
	if err := getsockopt(fd, level, 65 /* IPT_SO_GET_ENTRIES */, entries); err != nil {
		return legacyInfo{}, fmt.Errorf("get entries of table %s: %w", table, err)
	}
	policy := head + int(u32(info, 56+4*forward)) // underflow[NF_INET_FORWARD]
	if policy+targetOffset+2 > len(entries) {
		return out, nil
	}
	target := policy + int(binary.NativeEndian.Uint16(entries[policy+targetOffset:]))
	// struct xt_standard_target: a 32-byte header, then the verdict; a
	// policy DROP is -NF_DROP-1 = -1.
	if target+36 <= len(entries) {
		out.forwardDrop = int32(u32(entries, target+32)) == -1
	}
	return out, nil
}

func getsockopt(fd, level, opt int, buf []byte) error {
	n := uint32(len(buf))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}
