package ctmark

import (
	"strings"
	"testing"
)

func TestDefaultIsTodaysLayout(t *testing.T) {
	l := Default
	if l.ForID(1) != 0xfd000001 || l.ForID(0xffffff) != 0xfdffffff || l.MaxID() != 1<<24-1 || !l.Whole() {
		t.Errorf("default layout: ForID(1) %#x, ForID(max) %#x, MaxID %d, whole %v", l.ForID(1), l.ForID(0xffffff), l.MaxID(), l.Whole())
	}
	if _, err := l.Validate(); err != nil {
		t.Error(err)
	}
}

func TestLayoutIDs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		l      Layout
		id     uint32
		mark   uint32 // ForID(id)
		maxID  uint32
		idBits int
	}{
		{"default", Default, 0x123456, 0xfd123456, 1<<24 - 1, 24},
		{"ids above the tag", Layout{Tag: 0x00fd0000, TagMask: 0x00ff0000, Mask: 0xffff0000}, 0x38, 0x38fd0000, 255, 8},
		{"ids below the tag", Layout{Tag: 0x0d000000, TagMask: 0x0f000000, Mask: 0x0ffffff0}, 0xabcde, 0x0dabcde0, 1<<20 - 1, 20},
		{"one tag bit, one id bit", Layout{Tag: 0x80000000, TagMask: 0x80000000, Mask: 0xc0000000}, 1, 0xc0000000, 1, 1},
	} {
		l := tc.l
		if _, err := l.Validate(); err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got := l.ForID(tc.id); got != tc.mark {
			t.Errorf("%s: ForID(%#x) = %#x, want %#x", tc.name, tc.id, got, tc.mark)
		}
		if l.MaxID() != tc.maxID || l.IDBits() != tc.idBits {
			t.Errorf("%s: MaxID %d, IDBits %d; want %d, %d", tc.name, l.MaxID(), l.IDBits(), tc.maxID, tc.idBits)
		}
		// Another tool's bits outside the mask do not change the id.
		other := ^l.Mask & 0x5555beef
		if id, ok := l.ID(tc.mark | other); !ok || id != tc.id {
			t.Errorf("%s: ID(%#x) = %d, %v; want %d", tc.name, tc.mark|other, id, ok, tc.id)
		}
		if !l.Mine(tc.mark|other) || l.Mine(other) {
			t.Errorf("%s: Mine is wrong for %#x or %#x", tc.name, tc.mark|other, other)
		}
		if _, ok := l.ID(l.Tag | other); ok {
			t.Errorf("%s: the tag alone (id 0) carries an id", tc.name)
		}
		if _, ok := l.ID(tc.mark ^ l.TagMask); ok {
			t.Errorf("%s: another tag carries an id", tc.name)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		l       Layout
		key     string // "" valid
		message string
	}{
		{"default", Default, "", ""},
		{"16 bits", Layout{0x00fd0000, 0x00ff0000, 0xffff0000}, "", ""},
		{"tag mask 0", Layout{0, 0, 0xffffffff}, "ct_mark", "the mask is 0"},
		{"value outside mask", Layout{0xfd000001, 0xff000000, 0xffffffff}, "ct_mark", "bits outside the mask"},
		{"tag 0", Layout{0, 0xff000000, 0xffffffff}, "ct_mark", "means \"not marked\""},
		{"tag mask with a hole", Layout{0x81000000, 0xff0f0000, 0xffffffff}, "ct_mark", "not one run of contiguous bits"},
		{"mask without the tag", Layout{0xfd000000, 0xff000000, 0x00ffffff}, "ct_mask", "does not hold ct_mark's mask"},
		{"no id bits", Layout{0xfd000000, 0xff000000, 0xff000000}, "ct_mask", "leaves no bits for forward ids"},
		{"id bits on both sides", Layout{0x00fd0000, 0x00ff0000, 0xffffff00}, "ct_mask", "not one run of contiguous bits"},
		{"id bits with a hole", Layout{0xfd000000, 0xff000000, 0xff0f00ff}, "ct_mask", "not one run of contiguous bits"},
	} {
		key, err := tc.l.Validate()
		switch {
		case tc.key == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.key != "" && (err == nil || key != tc.key || !strings.Contains(err.Error(), tc.message)):
			t.Errorf("%s: Validate = %q, %v; want %s: ...%s...", tc.name, key, err, tc.key, tc.message)
		}
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in          string
		value, mask uint32
		err         string
	}{
		{"0xfd000000/0xff000000", 0xfd000000, 0xff000000, ""},
		{"0XFD/0xFF", 0xfd, 0xff, ""},
		{"16580608/16711680", 0x00fd0000, 0x00ff0000, ""},
		{" 0x1 / 0x1 ", 1, 1, ""},
		{"0xfd000000", 0, 0, "want VALUE/MASK"},
		{"0xfd000000/", 0, 0, "mask: \"\" is not a 32-bit number"},
		{"0x1ffffffff/0xff", 0, 0, "value: \"0x1ffffffff\" is not a 32-bit number"},
		{"fd/ff", 0, 0, "value: \"fd\" is not a 32-bit number"},
		{"-1/0xff", 0, 0, "is not a 32-bit number"},
	} {
		v, m, err := ParseMark(tc.in)
		switch {
		case tc.err == "" && (err != nil || v != tc.value || m != tc.mask):
			t.Errorf("ParseMark(%q) = %#x, %#x, %v; want %#x, %#x", tc.in, v, m, err, tc.value, tc.mask)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseMark(%q) error %v, want ...%s...", tc.in, err, tc.err)
		}
	}
}

func TestConnmark(t *testing.T) {
	if got := Default.Connmark(); got != "0xfd000000/0xff000000" {
		t.Errorf("Connmark = %q", got)
	}
}

func TestMaskWithIDBits(t *testing.T) {
	for _, tc := range []struct {
		l    Layout
		n    int
		want uint32
	}{
		{Default, 8, 0xffff0000},  // ids below the tag: the field grows down
		{Default, 24, 0xffffffff}, // as it is
		{Layout{Tag: 0x80000000, TagMask: 0x80000000, Mask: 0xc0000000}, 2, 0xe0000000},
		{Layout{Tag: 0x5, TagMask: 0xff, Mask: 0xffff}, 12, 0x000fffff}, // ids above the tag: up
	} {
		if got := tc.l.MaskWithIDBits(tc.n); got != tc.want {
			t.Errorf("%s with %d id bits: ct_mask %#08x, want %#08x", tc.l, tc.n, got, tc.want)
		} else if l := (Layout{Tag: tc.l.Tag, TagMask: tc.l.TagMask, Mask: got}); l.IDBits() != tc.n {
			t.Errorf("%s with %d id bits: ct_mask %#08x gives %d", tc.l, tc.n, got, l.IDBits())
		}
	}
}
