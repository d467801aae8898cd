package config

import (
	"errors"
	"fmt"
	"github.com/fwdd/fwdd/pkg/ctmark"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func defaultConfig() Config {
	return Config{
		Path:      "fwdd.toml",
		Daemon:    Daemon{Table: "fwdd", OnStop: OnStopFlush, LogLevel: "info", ForwardPolicy: ForwardAccept, CtMark: ctmark.Default},
		Sysctl:    Sysctl{IPForward: true, RPFilter: RPFilterKeep},
		Conntrack: Conntrack{WarnPercent: 80, CriticalPercent: 95},
	}
}

func withForwards(fs ...Forward) *Config {
	c := defaultConfig()
	for i := range fs {
		fs[i].File = c.Path
	}
	c.Forwards = fs
	return &c
}

var (
	ip   = netip.MustParseAddr
	cidr = netip.MustParsePrefix
)

// netip types have unexported fields; compare them with ==.
var cmpOpts = cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})

func port(lo, hi uint16) PortRange { return PortRange{lo, hi} }

// parseGoodTests are valid files and what they parse to. block_test.go also
// checks the block-wise decoding against them.
func parseGoodTests() []parseGoodTest {
	return []parseGoodTest{
		{
			name: "empty",
			in:   "",
			want: withForwards(),
		},
		{
			name: "sections",
			in: `
[daemon]
table = "nat-fwd"
on_stop = "keep"
log_level = "debug"
metrics = "[::1]:9650"
forward_policy = "drop"
[sysctl]
ip_forward = false
rp_filter = "loose"
conntrack_max = 262144
[conntrack]
warn_percent = 50
critical_percent = 100
`,
			want: &Config{
				Path:      "fwdd.toml",
				Daemon:    Daemon{Table: "nat-fwd", OnStop: OnStopKeep, LogLevel: "debug", Metrics: "[::1]:9650", ForwardPolicy: ForwardDrop, CtMark: ctmark.Default},
				Sysctl:    Sysctl{IPForward: false, RPFilter: RPFilterLoose, ConntrackMax: 262144},
				Conntrack: Conntrack{WarnPercent: 50, CriticalPercent: 100},
			},
		},
		{
			name: "metrics any address",
			in:   "[daemon]\nmetrics = \":9650\"\n",
			want: func() *Config {
				c := withForwards()
				c.Daemon.Metrics = ":9650"
				c.Warnings = []Problem{{Path: "fwdd.toml", Line: 2, Where: "daemon", Field: "metrics",
					Msg: `":9650" is not a loopback address: /metrics has no authentication, so anyone who can reach it reads every forward's name, backend and traffic; listen on 127.0.0.1 or [::1], or restrict who can connect`}}
				return c
			}(),
		},
		{
			name: "forward defaults",
			in: `
[[forward]]
name = "web"
port = 80
to = "192.168.1.50:8080"
`,
			want: withForwards(Forward{
				Name: "web", Line: 2, Protos: []Proto{TCP}, Port: port(80, 80),
				To: ip("192.168.1.50"), ToPort: port(8080, 8080),
			}),
		},
		{
			name: "every key",
			in: `[[forward]]
name = "lab-ssh"
proto = "udp"
port = "2222"
address = "10.0.0.1"
to = "192.168.1.10:22"
interface = "eth0.100"
sources = ["203.0.113.0/24", "198.51.100.7", "10.0.0.0/8"]
snat = "192.168.1.1"
log = true
`,
			want: withForwards(Forward{
				Name: "lab-ssh", Line: 1, Protos: []Proto{UDP}, Port: port(2222, 2222),
				Address: ip("10.0.0.1"), To: ip("192.168.1.10"), ToPort: port(22, 22),
				Interface: "eth0.100",
				Sources:   []netip.Prefix{cidr("10.0.0.0/8"), cidr("198.51.100.7/32"), cidr("203.0.113.0/24")},
				SNAT:      SNAT{Kind: SNATFixed, Addr: ip("192.168.1.1")},
				Log:       true,
			}),
		},
		{
			name: "both protos sorted, snat none, keep port",
			in: `[[forward]]
name = "dns"
proto = ["udp", "tcp"]
port = 53
to = "192.168.1.53"
snat = "none"
`,
			want: withForwards(Forward{
				Name: "dns", Line: 1, Protos: []Proto{TCP, UDP}, Port: port(53, 53),
				To: ip("192.168.1.53"), SNAT: SNAT{Kind: SNATNone},
			}),
		},
		{
			name: "ranges",
			in: `[[forward]]
name = "one-to-one"
port = "8000-8009"
to = "10.0.0.1:9000-9009"
[[forward]]
name = "many-to-one"
port = "7000-7099"
to = "10.0.0.1:7000"
[[forward]]
name = "keep-ports"
port = "6000-6001"
to = "10.0.0.1"
[[forward]]
name = "range-of-one"
port = "5000-5000"
to = "10.0.0.1:5000-5000"
`,
			want: withForwards(
				Forward{Name: "one-to-one", Line: 1, Protos: []Proto{TCP}, Port: port(8000, 8009), To: ip("10.0.0.1"), ToPort: port(9000, 9009)},
				Forward{Name: "many-to-one", Line: 5, Protos: []Proto{TCP}, Port: port(7000, 7099), To: ip("10.0.0.1"), ToPort: port(7000, 7000)},
				Forward{Name: "keep-ports", Line: 9, Protos: []Proto{TCP}, Port: port(6000, 6001), To: ip("10.0.0.1")},
				Forward{Name: "range-of-one", Line: 13, Protos: []Proto{TCP}, Port: port(5000, 5000), To: ip("10.0.0.1"), ToPort: port(5000, 5000)},
			),
		},
		{
			name: "ipv6 forms",
			in: `[[forward]]
name = "bare"
port = 1
to = "2001:db8::1"
[[forward]]
name = "brackets"
port = 2
to = "[2001:db8::2]"
[[forward]]
name = "port"
port = 3
address = "2001:db8::ff"
to = "[2001:db8::3]:8443"
sources = ["2001:db8:ffff::/48", "fd00::1"]
snat = "2001:db8::fe"
[[forward]]
name = "range"
port = "10-11"
to = "[2001:db8::4]:20-21"
`,
			want: withForwards(
				Forward{Name: "bare", Line: 1, Protos: []Proto{TCP}, Port: port(1, 1), To: ip("2001:db8::1")},
				Forward{Name: "brackets", Line: 5, Protos: []Proto{TCP}, Port: port(2, 2), To: ip("2001:db8::2")},
				Forward{
					Name: "port", Line: 9, Protos: []Proto{TCP}, Port: port(3, 3), Address: ip("2001:db8::ff"),
					To: ip("2001:db8::3"), ToPort: port(8443, 8443),
					Sources: []netip.Prefix{cidr("2001:db8:ffff::/48"), cidr("fd00::1/128")},
					SNAT:    SNAT{Kind: SNATFixed, Addr: ip("2001:db8::fe")},
				},
				Forward{Name: "range", Line: 16, Protos: []Proto{TCP}, Port: port(10, 11), To: ip("2001:db8::4"), ToPort: port(20, 21)},
			),
		},
		{
			name: "no overlaps",
			in: `# not overlapping, each for its own reason
[[forward]]
name = "a"
port = "80-89"
to = "10.0.0.1"
[[forward]]
name = "adjacent-ports"
port = "90-99"
to = "10.0.0.1"
[[forward]]
name = "other-proto"
proto = "udp"
port = 80
to = "10.0.0.1"
[[forward]]
name = "other-family"
port = 80
to = "2001:db8::1"
[[forward]]
name = "addr-1"
port = 443
address = "10.0.0.1"
to = "10.1.0.1"
[[forward]]
name = "addr-2"
port = 443
address = "10.0.0.2"
to = "10.1.0.2"
[[forward]]
name = "if-1"
port = 22
interface = "eth0"
to = "10.1.0.1"
[[forward]]
name = "if-2"
port = 22
interface = "eth1"
to = "10.1.0.2"
[[forward]]
name = "src-1"
port = 25
sources = ["10.0.0.0/9", "192.168.0.0/24"]
to = "10.1.0.1"
[[forward]]
name = "src-2"
port = 25
sources = ["10.128.0.0/9", "192.168.1.0/24"]
to = "10.1.0.2"
`,
			want: withForwards(
				Forward{Name: "a", Line: 2, Protos: []Proto{TCP}, Port: port(80, 89), To: ip("10.0.0.1")},
				Forward{Name: "adjacent-ports", Line: 6, Protos: []Proto{TCP}, Port: port(90, 99), To: ip("10.0.0.1")},
				Forward{Name: "other-proto", Line: 10, Protos: []Proto{UDP}, Port: port(80, 80), To: ip("10.0.0.1")},
				Forward{Name: "other-family", Line: 15, Protos: []Proto{TCP}, Port: port(80, 80), To: ip("2001:db8::1")},
				Forward{Name: "addr-1", Line: 19, Protos: []Proto{TCP}, Port: port(443, 443), Address: ip("10.0.0.1"), To: ip("10.1.0.1")},
				Forward{Name: "addr-2", Line: 24, Protos: []Proto{TCP}, Port: port(443, 443), Address: ip("10.0.0.2"), To: ip("10.1.0.2")},
				Forward{Name: "if-1", Line: 29, Protos: []Proto{TCP}, Port: port(22, 22), Interface: "eth0", To: ip("10.1.0.1")},
				Forward{Name: "if-2", Line: 34, Protos: []Proto{TCP}, Port: port(22, 22), Interface: "eth1", To: ip("10.1.0.2")},
				Forward{Name: "src-1", Line: 39, Protos: []Proto{TCP}, Port: port(25, 25), Sources: []netip.Prefix{cidr("10.0.0.0/9"), cidr("192.168.0.0/24")}, To: ip("10.1.0.1")},
				Forward{Name: "src-2", Line: 44, Protos: []Proto{TCP}, Port: port(25, 25), Sources: []netip.Prefix{cidr("10.128.0.0/9"), cidr("192.168.1.0/24")}, To: ip("10.1.0.2")},
			),
		},
		{
			name: "inline array of forwards has no lines",
			in:   `forward = [{name = "a", port = 1, to = "10.0.0.1"}]`,
			want: withForwards(Forward{Name: "a", Protos: []Proto{TCP}, Port: port(1, 1), To: ip("10.0.0.1")}),
		},
	}
}

type parseGoodTest struct {
	name string
	in   string
	want *Config
}

func TestParseGood(t *testing.T) {
	tests := parseGoodTests()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse("fwdd.toml", []byte(tt.in))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if diff := cmp.Diff(withOneBackend(tt.want), got, cmpOpts); diff != "" {
				t.Errorf("Parse (-want +got):\n%s", diff)
			}
		})
	}
}

// parseBadTests are invalid files and what their errors must say.
func parseBadTests() []parseBadTest {
	fwd := func(lines ...string) string {
		return "[[forward]]\n" + strings.Join(lines, "\n") + "\n"
	}
	web := func(extra ...string) string {
		return fwd(append([]string{`name = "web"`, `port = 80`, `to = "10.0.0.1"`}, extra...)...)
	}
	return []parseBadTest{
		// Syntax and structure.
		{"syntax", "[daemon]\ntable = \n", []string{"fwdd.toml:2: invalid TOML: "}},
		{"single [forward]", "[forward]\nname = \"a\"\n", []string{"fwdd.toml:1: [forward] must be written [[forward]]"}},
		{"daemon not a table", "daemon = 1\n", []string{"fwdd.toml:1: daemon: must be a table ([daemon]), not an integer"}},
		{"daemon array of tables", "\n[[daemon]]\n", []string{"fwdd.toml:2: daemon: must be a table ([daemon]), not an array of tables"}},
		{"forward string", "forward = \"x\"\n", []string{"fwdd.toml:1: forward: must be an array of tables ([[forward]]), not a string"}},
		{"unknown top key", "\nbogus = 1\n", []string{`fwdd.toml:2: unknown key "bogus"; allowed: daemon, sysctl, conntrack, forward`}},
		{"unknown escaped key", "\n\"a\\\"b\" = 1\n", []string{`fwdd.toml:2: unknown key "a\"b"`}},
		{"unknown section", "[dameon]\ntable = \"x\"\n", []string{`fwdd.toml:1: unknown key "dameon"`}},
		{"unknown daemon key", "[daemon]\ntable = \"x\"\ntabel = \"y\"\n", []string{`fwdd.toml:3: daemon: unknown key "tabel"; allowed: table, on_stop, log_level, metrics`}},
		{"unknown sub-table", "[daemon]\n[daemon.extra]\na = 1\n", []string{`fwdd.toml:2: daemon: unknown key "extra"`}},
		{
			"unknown forward key in two forwards",
			web(`prot = "tcp"`) + fwd(`name = "b"`, `port = 81`, `to = "10.0.0.1"`, `prot = "udp"`),
			[]string{
				`fwdd.toml:5: forward "web": unknown key "prot"; allowed: name, proto, port, address, to, backend, balance, health, on_change, interface, sources, snat, log`,
				`fwdd.toml:10: forward "b": unknown key "prot"`,
			},
		},
		{"unknown dotted forward key", web(`x.y = 1`), []string{`fwdd.toml:5: forward "web": unknown key "x"`}},

		// [daemon]
		{"table name", "[daemon]\ntable = \"1abc\"\n", []string{`fwdd.toml:2: daemon: table: "1abc" is not a valid table name; must be 1-32 letters`}},
		{"table too long", "[daemon]\ntable = \"" + strings.Repeat("a", 33) + "\"\n", []string{"is not a valid table name"}},
		{"table type", "[daemon]\ntable = 5\n", []string{"fwdd.toml:2: daemon: table: must be a string, not an integer"}},
		{"on_stop", "[daemon]\n\non_stop = \"maybe\"\n", []string{`fwdd.toml:3: daemon: on_stop: "maybe" is not allowed; must be "flush" or "keep"`}},
		{"forward_policy", "[daemon]\nforward_policy = \"reject\"\n", []string{`fwdd.toml:2: daemon: forward_policy: "reject" is not allowed; must be "accept" or "drop"`}},
		{"log_level", "[daemon]\nlog_level = \"trace\"\n", []string{`daemon: log_level: "trace" is not allowed; must be "debug", "info", "warn" or "error"`}},
		{"metrics no port", "[daemon]\nmetrics = \"localhost\"\n", []string{`daemon: metrics: "localhost": missing port in address; must be "" (off) or host:port`}},
		{"metrics named port", "[daemon]\nmetrics = \":http\"\n", []string{`metrics: ":http": port "http" is not a number between 1 and 65535`}},
		{"metrics port 0", "[daemon]\nmetrics = \":0\"\n", []string{`port "0" is not a number between 1 and 65535`}},
		// [daemon] ct_mark, ct_mask
		{"ct_mark without mask", "[daemon]\nct_mark = \"0xfd000000\"\n", []string{`fwdd.toml:2: daemon: ct_mark: "0xfd000000": want VALUE/MASK, e.g. "0xfd000000/0xff000000"; must be VALUE/MASK in hex or decimal`}},
		{"ct_mark not a number", "[daemon]\nct_mark = \"0xfd/ff\"\n", []string{`fwdd.toml:2: daemon: ct_mark: "0xfd/ff": mask: "ff" is not a 32-bit number (hex with 0x, or decimal)`}},
		{"ct_mark type", "[daemon]\nct_mark = 0xfd000000\n", []string{`fwdd.toml:2: daemon: ct_mark: must be a string, not an integer`}},
		{"ct_mark value outside mask", "[daemon]\n\nct_mark = \"0xfd000001/0xff000000\"\n", []string{`fwdd.toml:3: daemon: ct_mark: the value 0xfd000001 has bits outside the mask 0xff000000; allowed: ct_mark = "VALUE/MASK"`}},
		{"ct_mark tag 0", "[daemon]\nct_mark = \"0/0xff000000\"\n", []string{`fwdd.toml:2: daemon: ct_mark: the value is 0, but a ct mark of 0 means "not marked"`}},
		{"ct_mark mask not contiguous", "[daemon]\nct_mark = \"0x81000000/0x81000000\"\n", []string{`daemon: ct_mark: the mask 0x81000000 is not one run of contiguous bits`}},
		{"ct_mask without the tag", "[daemon]\nct_mark = \"0xfd000000/0xff000000\"\nct_mask = 0x00ffffff\n", []string{`fwdd.toml:3: daemon: ct_mask: 0x00ffffff does not hold ct_mark's mask 0xff000000`}},
		{"ct_mask tag only", "[daemon]\nct_mask = 0xff000000\n", []string{`fwdd.toml:2: daemon: ct_mask: 0xff000000 leaves no bits for forward ids`}},
		{"ct_mask id bits split", "[daemon]\nct_mark = \"0x00fd0000/0x00ff0000\"\nct_mask = 0xffffff00\n", []string{`fwdd.toml:3: daemon: ct_mask: the id bits of 0xffffff00 (0xff00ff00: ct_mask without ct_mark's mask) are not one run of contiguous bits`}},
		{"ct_mask too wide", "[daemon]\nct_mask = 0x1ffffffff\n", []string{`fwdd.toml:2: daemon: ct_mask: 8589934591 is out of range; must be a 32-bit mask`}},
		{"ct_mask type", "[daemon]\nct_mask = true\n", []string{`fwdd.toml:2: daemon: ct_mask: must be a 32-bit mask (an integer such as 0xffff0000), not a boolean`}},
		{
			"ct_mask too narrow for the forwards",
			"[daemon]\nct_mark = \"0x80000000/0x80000000\"\nct_mask = 0xc0000000\n" + web() + fwd(`name = "b"`, `port = 81`, `to = "10.0.0.1"`),
			[]string{`fwdd.toml:3: daemon: ct_mask: 0xc0000000 leaves 1 bits for forward ids (at most 1 forwards), but there are 2 forwards; they need at least 2 id bits: widen ct_mask (e.g. 0xe0000000) or use fewer forwards`},
		},

		// [sysctl] and [conntrack]
		{"ip_forward type", "[sysctl]\nip_forward = \"yes\"\n", []string{"fwdd.toml:2: sysctl: ip_forward: must be true or false, not a string"}},
		{"rp_filter", "[sysctl]\nrp_filter = \"strict\"\n", []string{`sysctl: rp_filter: "strict" is not allowed; must be "keep", "loose" or "off"`}},
		{"conntrack_max negative", "[sysctl]\nconntrack_max = -1\n", []string{"sysctl: conntrack_max: -1 is out of range; must be between 0 and 2147483647"}},
		{"conntrack_buckets too big", "[sysctl]\nconntrack_buckets = 2000000000\n", []string{"sysctl: conntrack_buckets: 2000000000 is out of range; must be between 0 and 1073741824"}},
		{"warn range", "[conntrack]\nwarn_percent = 0\n", []string{"fwdd.toml:2: conntrack: warn_percent: 0 is out of range; must be between 1 and 100"}},
		{"critical range", "[conntrack]\ncritical_percent = 101\n", []string{"conntrack: critical_percent: 101 is out of range; must be between 1 and 100"}},
		{"critical float", "[conntrack]\ncritical_percent = 90.5\n", []string{"critical_percent: must be an integer between 1 and 100, not a float"}},
		{"critical <= warn", "[conntrack]\nwarn_percent = 90\ncritical_percent = 90\n", []string{"fwdd.toml:3: conntrack: critical_percent: 90 must be greater than warn_percent (90)"}},

		// name
		{"name missing", fwd(`port = 80`, `to = "10.0.0.1"`), []string{"fwdd.toml:1: forward #1: name: required"}},
		{"name empty", fwd(`name = ""`, `port = 80`, `to = "10.0.0.1"`), []string{"fwdd.toml:2: forward #1: name: required"}},
		{"name invalid", fwd(`name = "Web"`, `port = 80`, `to = "10.0.0.1"`), []string{`fwdd.toml:2: forward "Web": name: "Web" is not a valid name`}},
		{"name too long", fwd(`name = "`+strings.Repeat("a", 33)+`"`, `port = 80`, `to = "10.0.0.1"`), []string{"is not a valid name"}},
		{"name type", fwd(`name = 1`, `port = 80`, `to = "10.0.0.1"`), []string{"fwdd.toml:2: forward #1: name: must be a string, not an integer"}},
		{"name table", fwd(`name = {a = 1}`, `port = 80`, `to = "10.0.0.1"`), []string{"forward #1: name: must be a string, not a table"}},
		{
			"name duplicate",
			web() + fwd(`name = "web"`, `port = 81`, `to = "10.0.0.1"`),
			[]string{`fwdd.toml:6: forward "web": name: "web" is already used by the forward on line 1; names must be unique`},
		},

		// proto
		{"proto unknown", web(`proto = "sctp"`), []string{`fwdd.toml:5: forward "web": proto: "sctp" is not allowed; must be "tcp" or "udp"`}},
		{"proto upper", web(`proto = "TCP"`), []string{`proto: "TCP" is not allowed`}},
		{"proto type", web(`proto = 6`), []string{`proto: must be "tcp", "udp" or an array of them, not an integer`}},
		{"proto empty array", web(`proto = []`), []string{`proto: empty`}},
		{"proto duplicate", web(`proto = ["tcp", "tcp"]`), []string{`proto: "tcp" is listed twice`}},
		{"proto array element type", web(`proto = ["tcp", 17]`), []string{`proto: array elements must be "tcp" or "udp", not an integer`}},

		// port
		{"port missing", fwd(`name = "web"`, `to = "10.0.0.1"`), []string{`fwdd.toml:1: forward "web": port: required; must be 1-65535 or a range "lo-hi"`}},
		{"port out of range", fwd(`name = "web"`, `port = 70000`, `to = "10.0.0.1"`), []string{`fwdd.toml:3: forward "web": port: 70000 is out of range; must be 1-65535 or a range "lo-hi"`}},
		{"port zero", fwd(`name = "web"`, `port = 0`, `to = "10.0.0.1"`), []string{`port: 0 is out of range`}},
		{"port string out of range", fwd(`name = "web"`, `port = "80-70000"`, `to = "10.0.0.1"`), []string{`port: 70000 is out of range`}},
		{"port backwards", fwd(`name = "web"`, `port = "90-80"`, `to = "10.0.0.1"`), []string{`port: range "90-80" is backwards (90 > 80)`}},
		{"port garbage", fwd(`name = "web"`, `port = "http"`, `to = "10.0.0.1"`), []string{`port: "http" is not a port or port range; must be 1-65535`}},
		{"port spaces", fwd(`name = "web"`, `port = "80 - 90"`, `to = "10.0.0.1"`), []string{`"80 - 90" is not a port or port range`}},
		{"port float", fwd(`name = "web"`, `port = 80.0`, `to = "10.0.0.1"`), []string{`port: must be an integer or a string "lo-hi", not a float`}},
		{"port array", fwd(`name = "web"`, `port = [80, 81]`, `to = "10.0.0.1"`), []string{`port: must be an integer or a string "lo-hi", not an array`}},

		// to
		{"to missing", fwd(`name = "web"`, `port = 80`), []string{`fwdd.toml:1: forward "web": to: required; must be "IP", "IP:port"`}},
		{"to type", fwd(`name = "web"`, `port = 80`, `to = 5`), []string{`fwdd.toml:4: forward "web": to: must be a string or a list of strings, not an integer`}},
		{"to hostname", fwd(`name = "web"`, `port = 80`, `to = "backend:80"`), []string{`to: "backend" is not an IP address; must be "IP", "IP:port"`}},
		{"to bad port", fwd(`name = "web"`, `port = 80`, `to = "10.0.0.1:http"`), []string{`to: port: "http" is not a port or port range`}},
		{"to port 0", fwd(`name = "web"`, `port = 80`, `to = "10.0.0.1:0"`), []string{`to: port: 0 is out of range`}},
		{"to empty port", fwd(`name = "web"`, `port = 80`, `to = "10.0.0.1:"`), []string{`to: port: "" is not a port`}},
		{"to ipv6 port without brackets", fwd(`name = "web"`, `port = 80`, `to = "2001:db8::1:80:x"`), []string{`to: "2001:db8::1:80:x" is not an IP address`}},
		{"to brackets ipv4", fwd(`name = "web"`, `port = 80`, `to = "[10.0.0.1]:80"`), []string{`to: "[10.0.0.1]:80": brackets are only for IPv6 addresses; write 10.0.0.1:80`}},
		{"to unclosed bracket", fwd(`name = "web"`, `port = 80`, `to = "[2001:db8::1:80"`), []string{`has no closing ']'`}},
		{"to junk after bracket", fwd(`name = "web"`, `port = 80`, `to = "[2001:db8::1]80"`), []string{`unexpected "80" after ']'`}},
		{"to zone", fwd(`name = "web"`, `port = 80`, `to = "[fe80::1%eth0]:80"`), []string{`zones are not allowed`}},
		{"to unspecified", fwd(`name = "web"`, `port = 80`, `to = "0.0.0.0:80"`), []string{`to: 0.0.0.0 is the unspecified address`}},
		{"to unspecified v6", fwd(`name = "web"`, `port = 80`, `to = "::"`), []string{`to: :: is the unspecified address`}},
		{"to multicast", fwd(`name = "web"`, `port = 80`, `to = "224.0.0.1"`), []string{`to: 224.0.0.1 is a multicast address`}},
		{"to multicast v6", fwd(`name = "web"`, `port = 80`, `to = "[ff02::1]:80"`), []string{`to: ff02::1 is a multicast address`}},
		{"to broadcast", fwd(`name = "web"`, `port = 80`, `to = "255.255.255.255"`), []string{`to: 255.255.255.255 is the broadcast address`}},
		{"to mapped", fwd(`name = "web"`, `port = 80`, `to = "[::ffff:10.0.0.1]:80"`), []string{`to: "::ffff:10.0.0.1" is an IPv4-mapped IPv6 address; write the IPv4 address 10.0.0.1 instead`}},
		{"to mapped bare", fwd(`name = "web"`, `port = 80`, `to = "::ffff:10.0.0.1"`), []string{`is an IPv4-mapped IPv6 address`}},
		{
			"range lengths differ",
			fwd(`name = "web"`, `port = "10000-10009"`, `to = "10.0.0.1:20000-20004"`),
			[]string{`fwdd.toml:4: forward "web": to: port range 10000-10009 has 10 ports but to range 20000-20004 has 5; they must be equal, or to must be a single port`},
		},
		{"single port to range", fwd(`name = "web"`, `port = 80`, `to = "10.0.0.1:80-81"`), []string{`to: a single port (80) cannot be sent to a port range (80-81)`}},
		{"to range backwards", fwd(`name = "web"`, `port = "1-2"`, `to = "10.0.0.1:9-8"`), []string{`to: port: range "9-8" is backwards`}},

		// address
		{"address family", web(`address = "2001:db8::1"`), []string{`fwdd.toml:5: forward "web": address: 2001:db8::1 is IPv6 but to (10.0.0.1) is IPv4; they must be the same family`}},
		{"address invalid", web(`address = "10.0.0.0/8"`), []string{`address: "10.0.0.0/8" is not an IP address`}},
		{"address unspecified", web(`address = "0.0.0.0"`), []string{`address: 0.0.0.0 is the unspecified address; use "" to match any local address`}},
		{"address mapped", web(`address = "::ffff:1.2.3.4"`), []string{`address: "::ffff:1.2.3.4" is an IPv4-mapped IPv6 address; write the IPv4 address 1.2.3.4 instead`}},
		{"address type", web(`address = ["10.0.0.1"]`), []string{`address: must be a string, not an array`}},

		// interface
		{"interface too long", web(`interface = "abcdefghijklmnop"`), []string{`interface: "abcdefghijklmnop" is not a valid interface name: longer than 15 bytes`}},
		{"interface slash", web(`interface = "eth/0"`), []string{`interface: "eth/0" is not a valid interface name: '/' is not allowed`}},
		{"interface colon", web(`interface = "eth0:1"`), []string{`':' is not allowed`}},
		{"interface space", web(`interface = "eth 0"`), []string{`whitespace and control characters are not allowed`}},
		{"interface dot", web(`interface = ".."`), []string{`"." and ".." are not allowed`}},

		// sources
		{"sources type", web(`sources = "10.0.0.0/8"`), []string{`fwdd.toml:5: forward "web": sources: must be an array of CIDRs or IPs`}},
		{"sources element type", web(`sources = [10]`), []string{`sources: elements must be strings, not an integer`}},
		{"sources bad cidr", web(`sources = ["10.0.0.0/33"]`), []string{`sources: "10.0.0.0/33" is not a CIDR`}},
		{"sources bad ip", web(`sources = ["office"]`), []string{`sources: "office" is not an IP address; must be a CIDR or an IP`}},
		{"sources family", web(`sources = ["2001:db8::/32"]`), []string{`sources: 2001:db8::/32 is IPv6 but to (10.0.0.1) is IPv4; they must be the same family`}},
		{"sources duplicate", web(`sources = ["10.0.0.0/8", "10.0.0.0/8"]`), []string{`sources: 10.0.0.0/8 is listed twice`}},
		{"sources duplicate ip", web(`sources = ["10.0.0.1", "10.0.0.1/32"]`), []string{`sources: 10.0.0.1/32 is listed twice`}},
		{"sources nested", web(`sources = ["10.1.0.0/16", "10.0.0.0/8"]`), []string{`sources: 10.1.0.0/16 overlaps 10.0.0.0/8; list each address once`}},
		{"sources mapped", web(`sources = ["::ffff:10.0.0.0/104"]`), []string{`is an IPv4-mapped IPv6 prefix`}},
		{"sources mapped ip", web(`sources = ["::ffff:10.0.0.1"]`), []string{`is an IPv4-mapped IPv6 address`}},
		{"sources zone", web(`sources = ["fe80::1%eth0"]`), []string{`zones are not allowed`}},

		// snat
		{"snat word", web(`snat = "masq"`), []string{`fwdd.toml:5: forward "web": snat: "masq" is not an IP address; must be "masquerade", "none" or an IP address`}},
		{"snat family", web(`snat = "2001:db8::1"`), []string{`snat: 2001:db8::1 is IPv6 but to (10.0.0.1) is IPv4; they must be the same family`}},
		{"snat unspecified", web(`snat = "0.0.0.0"`), []string{`snat: 0.0.0.0 cannot be a source address`}},
		{"snat mapped", web(`snat = "::ffff:10.0.0.1"`), []string{`snat: "::ffff:10.0.0.1" is an IPv4-mapped IPv6 address`}},
		{"snat type", web(`snat = false`), []string{`snat: must be a string, not a boolean`}},

		// log
		{"log type", web(`log = "yes"`), []string{`fwdd.toml:5: forward "web": log: must be true or false, not a string`}},

		// overlaps
		{
			"same port any local",
			web() + "\n" + fwd(`name = "b"`, `port = 80`, `to = "10.0.0.2"`),
			[]string{`fwdd.toml:6: forward "b": overlaps forward "web" (line 1): both match tcp port 80 on any local address`},
		},
		{
			"port ranges intersect",
			fwd(`name = "a"`, `port = "8000-8010"`, `to = "10.0.0.1"`) + fwd(`name = "b"`, `port = "8005-8020"`, `to = "10.0.0.2"`),
			[]string{`fwdd.toml:5: forward "b": overlaps forward "a" (line 1): both match tcp ports 8005-8010 on any local address`},
		},
		{
			"range contains single",
			fwd(`name = "a"`, `port = "1-1000"`, `to = "10.0.0.1"`) + fwd(`name = "b"`, `port = 443`, `to = "10.0.0.2"`),
			[]string{`both match tcp port 443 on any local address`},
		},
		{
			"local and specific address",
			fwd(`name = "a"`, `port = 80`, `address = "10.0.0.1"`, `to = "10.0.0.9"`) + fwd(`name = "b"`, `port = 80`, `to = "10.0.0.2"`),
			[]string{`fwdd.toml:6: forward "b": overlaps forward "a" (line 1): both match tcp port 80 on 10.0.0.1`},
		},
		{
			"same specific address",
			fwd(`name = "a"`, `port = 80`, `address = "10.0.0.1"`, `to = "10.0.0.9"`) + fwd(`name = "b"`, `port = 80`, `address = "10.0.0.1"`, `to = "10.0.0.2"`),
			[]string{`forward "b": overlaps forward "a" (line 1): both match tcp port 80 on 10.0.0.1`},
		},
		{
			"protos intersect",
			fwd(`name = "a"`, `proto = ["tcp", "udp"]`, `port = 53`, `to = "10.0.0.1"`) + fwd(`name = "b"`, `proto = "udp"`, `port = 53`, `to = "10.0.0.2"`),
			[]string{`forward "b": overlaps forward "a" (line 1): both match udp port 53 on any local address`},
		},
		{
			"both protos reported once",
			fwd(`name = "a"`, `proto = ["tcp", "udp"]`, `port = 53`, `to = "10.0.0.1"`) + fwd(`name = "b"`, `proto = ["udp", "tcp"]`, `port = 53`, `to = "10.0.0.2"`),
			[]string{`forward "b": overlaps forward "a" (line 1): both match tcp and udp port 53 on any local address`},
		},
		{
			"interface and any",
			fwd(`name = "a"`, `port = 22`, `interface = "eth0"`, `to = "10.0.0.1"`) + fwd(`name = "b"`, `port = 22`, `to = "10.0.0.2"`),
			[]string{`forward "b": overlaps forward "a" (line 1): both match tcp port 22 on any local address arriving on eth0`},
		},
		{
			"sources overlap",
			fwd(`name = "a"`, `port = 25`, `sources = ["10.0.0.0/8"]`, `to = "10.0.0.1"`) + fwd(`name = "b"`, `port = 25`, `sources = ["192.168.0.0/16", "10.20.0.0/16"]`, `to = "10.0.0.2"`),
			[]string{`forward "b": overlaps forward "a" (line 1): both match tcp port 25 on any local address from 10.20.0.0/16`},
		},
		{
			"sources and any",
			fwd(`name = "a"`, `port = 25`, `to = "10.0.0.1"`) + fwd(`name = "b"`, `port = 25`, `sources = ["10.0.0.0/8"]`, `to = "10.0.0.2"`),
			[]string{`both match tcp port 25 on any local address from 10.0.0.0/8`},
		},
		{
			"ipv6 overlap",
			fwd(`name = "a"`, `port = 443`, `to = "2001:db8::1"`) + fwd(`name = "b"`, `port = 443`, `address = "2001:db8::ff"`, `to = "[2001:db8::2]:443"`),
			[]string{`forward "b": overlaps forward "a" (line 1): both match tcp port 443 on 2001:db8::ff`},
		},
		{
			"three identical report twice",
			web() + fwd(`name = "b"`, `port = 80`, `to = "10.0.0.1"`) + fwd(`name = "c"`, `port = 80`, `to = "10.0.0.1"`),
			[]string{`fwdd.toml:5: forward "b": overlaps forward "web" (line 1)`, `fwdd.toml:9: forward "c": overlaps forward`},
		},

		// budget
		{
			"element budget",
			func() string {
				var b strings.Builder
				for i := range 31 {
					b.WriteString(fwd(`name = "f`+strconv.Itoa(i)+`"`,
						`proto = ["tcp", "udp"]`, `port = "1-65535"`, `address = "10.0.0.`+strconv.Itoa(i+1)+`"`, `to = "10.1.0.1"`))
				}
				return b.String()
			}(),
			[]string{`fwdd.toml:37: forward "f6": forwards compile to 8126433 nftables elements; one batch carries at most 1600000`},
		},
		{
			// Mapped to one port, a range is still an element per port in
			// the mark and the dnat map (and three counters per forward).
			"element budget: ranges to one port",
			func() string {
				var b strings.Builder
				for i := range 7 {
					b.WriteString(fwd(`name = "f`+strconv.Itoa(i)+`"`,
						`proto = ["tcp", "udp"]`, `port = "1-65535"`, `address = "10.0.0.`+strconv.Itoa(i+1)+`"`, `to = "10.1.0.1:80"`))
				}
				return b.String()
			}(),
			[]string{`fwdd.toml:37: forward "f6": forwards compile to 1835001 nftables elements; one batch carries at most 1600000`},
		},

		// Keys are exact and lower case.
		{"key case in a forward", fwd(`name = "web"`, `Port = 80`, `to = "10.0.0.1"`), []string{
			`fwdd.toml:1: forward "web": port: required`,
			`fwdd.toml:3: forward "web": unknown key "Port" (keys are lower case: port); allowed: name, proto, port,`,
		}},
		{"two spellings of a key", web(`PORT = 81`), []string{`fwdd.toml:5: forward "web": unknown key "PORT" (keys are lower case: port)`}},
		{"section case", "[Daemon]\ntable = \"x\"\n", []string{`fwdd.toml:1: unknown key "Daemon" (keys are lower case: daemon); allowed: daemon, sysctl, conntrack, forward`}},
		{"forward case", "[[Forward]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\n", []string{`fwdd.toml:1: unknown key "Forward" (keys are lower case: forward)`}},
		{"table case", "[daemon]\nTABLE = \"other\"\n", []string{`fwdd.toml:2: daemon: unknown key "TABLE" (keys are lower case: table)`}},

		// Backends and sources that cannot work.
		{"to loopback", fwd(`name = "web"`, `port = 80`, `to = "127.0.0.1:8080"`), []string{
			`fwdd.toml:4: forward "web": to: 127.0.0.1 is a loopback address: packets from other hosts DNATed to it are dropped unless route_localnet=1, which opens every service bound to loopback to the network (CVE-2020-8558); for a service on this host, let it listen on the address clients connect to, or forward to another address of this host`,
		}},
		{"to loopback net", fwd(`name = "web"`, `port = 80`, `to = "127.1.2.3"`), []string{`to: 127.1.2.3 is a loopback address`}},
		{"to loopback v6", fwd(`name = "web"`, `port = 80`, `to = "[::1]:80"`), []string{`to: ::1 is a loopback address`}},
		{"to link-local", fwd(`name = "web"`, `port = 80`, `to = "[fe80::1]:80"`), []string{`to: fe80::1 is an IPv6 link-local address, usable only with an interface, which fwdd has no way to give; the backend must be a unicast address of another host`}},
		{"to port-like last group", fwd(`name = "web"`, `port = 80`, `to = "fd00::2:8080"`), []string{`fwdd.toml:4: forward "web": to: "fd00::2:8080" is ambiguous: its last group looks like a port; write "[fd00::2]:8080" for port 8080, or "[fd00::2:8080]" to keep the original port`}},
		{"snat loopback", web(`snat = "127.0.0.1"`), []string{`fwdd.toml:5: forward "web": snat: 127.0.0.1 cannot be a source address: 127.0.0.1 is a loopback address; must be "masquerade", "none" or a unicast IP address of this host`}},
		{"snat multicast", web(`snat = "239.1.1.1"`), []string{`snat: 239.1.1.1 cannot be a source address: 239.1.1.1 is a multicast address`}},
		{"snat broadcast", web(`snat = "255.255.255.255"`), []string{`snat: 255.255.255.255 cannot be a source address: 255.255.255.255 is the broadcast address`}},
		{"snat link-local", fwd(`name = "web"`, `port = 80`, `to = "fd00::1"`, `snat = "fe80::1"`), []string{`snat: fe80::1 cannot be a source address: fe80::1 is an IPv6 link-local address`}},
		{"sources host bits", web(`sources = ["10.0.1.5/24"]`), []string{`fwdd.toml:5: forward "web": sources: 10.0.1.5/24 has host bits set; write 10.0.1.0/24 (an allow-list must never be wider than written)`}},
		{"sources host bits v6", fwd(`name = "web"`, `port = 80`, `to = "fd00::1"`, `sources = ["fd00::1/64"]`), []string{`sources: fd00::1/64 has host bits set; write fd00::/64`}},

		// Interface names nft and the kernel both read back unchanged.
		{"interface wildcard", web(`interface = "eth*"`), []string{`fwdd.toml:5: forward "web": interface: "eth*" is not a valid interface name: wildcards ('*') are not supported; an interface name is 1-15 printable ASCII characters other than '/', ':', '"', '\' and '*'`}},
		{"interface quote", web(`interface = 'x";drop#'`), []string{`interface: "x\";drop#" is not a valid interface name: '"' is not allowed; an interface name is 1-15 printable ASCII`}},
		{"interface not ascii", web(`interface = "eth\u00e9"`), []string{`only ASCII characters are allowed`}},
		{"interface backslash", web(`interface = 'a\b'`), []string{`'\\' is not allowed`}},

		// metrics
		{"metrics host", "[daemon]\nmetrics = \"not a host:9641\"\n", []string{`fwdd.toml:2: daemon: metrics: "not a host:9641": host "not a host" is not an IP address (or localhost); must be "" (off) or host:port`}},

		// Messages name the line, in fwdd's words.
		{"newline quoted by the library", "a = 0b\n", []string{`fwdd.toml:1: invalid TOML: not a binary number: '0b\n'`}},
		{"unclosed array header", "[[forward]\nname = \"a\"\n", []string{`fwdd.toml:1: invalid TOML: the header is not closed: write [[name]], e.g. [[forward]]`}},
		{"unclosed header", "a = 1\n[daemon\ntable = \"x\"\n", []string{`fwdd.toml:2: invalid TOML: the header is not closed: write [name], e.g. [daemon]`}},
		{"top-level forward key", "\nforward.name = \"a\"\n", []string{`fwdd.toml:2: forward: must be an array of tables, not a table: write [[forward]] on a line of its own, then its keys`}},
		{"key twice", "[daemon]\ntable = \"a\"\ntable = \"b\"\n", []string{`fwdd.toml:3: invalid TOML: daemon.table is defined twice; each key may appear once in a table`}},
		{"inline forwards not tables", "forward = [1]\n", []string{`fwdd.toml:1: forward: must be an array of tables ([[forward]]), not an array of integer`}},

		// every problem, not just the first
		{
			"all problems",
			"[daemon]\non_stop = \"maybe\"\n" + fwd(`name = "a"`, `port = 0`, `to = "10.0.0.1"`, `snat = "x"`) + fwd(`port = 1`),
			[]string{
				`fwdd.toml:2: daemon: on_stop: "maybe" is not allowed`,
				`fwdd.toml:5: forward "a": port: 0 is out of range`,
				`fwdd.toml:7: forward "a": snat: "x" is not an IP address`,
				`fwdd.toml:8: forward #2: name: required`,
				`fwdd.toml:8: forward #2: to: required`,
			},
		},
	}
}

type parseBadTest struct {
	name    string
	in      string
	wantErr []string
}

func TestParseBad(t *testing.T) {
	tests := parseBadTests()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse("fwdd.toml", []byte(tt.in))
			if err == nil {
				t.Fatalf("Parse succeeded, want errors %q; got %+v", tt.wantErr, got)
			}
			if got != nil {
				t.Errorf("Parse returned a config with an error")
			}
			var errs *Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error %T is not *Errors: %v", err, err)
			}
			msg := err.Error()
			for _, want := range tt.wantErr {
				if !strings.Contains(msg, want) {
					t.Errorf("error does not contain %q:\n%s", want, msg)
				}
			}
			if len(*errs) < len(tt.wantErr) {
				t.Errorf("got %d problems, want at least %d:\n%s", len(*errs), len(tt.wantErr), msg)
			}
			for _, e := range *errs {
				if strings.Contains(e.Error(), "\n") {
					t.Errorf("problem spans lines: %q", e)
				}
			}
		})
	}
}

func TestParseWarnings(t *testing.T) {
	for _, tt := range []struct{ metrics, want string }{
		{"127.0.0.1:9641", ""},
		{"[::1]:9641", ""},
		{"localhost:9641", ""},
		{"0.0.0.0:9641", `fwdd.toml:2: daemon: metrics: "0.0.0.0:9641" is not a loopback address: /metrics has no authentication`},
		{"[::]:9641", `"[::]:9641" is not a loopback address`},
		{"10.0.0.1:9641", `"10.0.0.1:9641" is not a loopback address`},
	} {
		c, err := Parse("fwdd.toml", []byte("[daemon]\nmetrics = \""+tt.metrics+"\"\n"))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, w := range c.Warnings {
			got = append(got, w.Error())
		}
		if tt.want == "" && len(got) > 0 || tt.want != "" && (len(got) != 1 || !strings.Contains(got[0], tt.want)) {
			t.Errorf("%s: warnings %q, want %q", tt.metrics, got, tt.want)
		}
	}
}

// TestParseLimits checks that size limits refuse a file before decoding it,
// and that long values are quoted shortened.
func TestParseLimits(t *testing.T) {
	_, err := Parse("fwdd.toml", make([]byte, MaxFileSize+1))
	if err == nil || !strings.Contains(err.Error(), "fwdd.toml: the configuration is larger than 67108864 bytes (64 MiB), the limit") {
		t.Errorf("64 MiB + 1: %v", err)
	}
	three := strings.Repeat("[[forward]]\nname = \"a\"\n", 3)
	ps := newProblems([]source{{path: "a.toml"}})
	if _, ok := checkLimits(ps, []source{{path: "a.toml", text: three}}, 1000, 2); ok || !strings.Contains(ps.err().Error(), "a.toml: more than 2 [[forward]] entries; the limit is 2") {
		t.Errorf("3 forwards, limit 2: %v", ps.err())
	}
	if _, ok := checkLimits(newProblems(nil), []source{{text: three}}, 1000, 3); !ok {
		t.Errorf("3 forwards refused with a limit of 3")
	}
	if MaxForwards != int(ctmark.Default.MaxID()) || MaxForwards != 1<<24-1 {
		t.Errorf("MaxForwards = %d, want the ct mark's forward ids", MaxForwards)
	}

	long := strings.Repeat("x", 2<<20)
	_, err = Parse("fwdd.toml", []byte("[[forward]]\nname = \""+long+"\"\nport = 0\nto = \""+long[:1000]+"\"\ninterface = \""+long[:1000]+"\"\n"))
	if err == nil || len(err.Error()) > 2000 {
		t.Errorf("%d bytes of messages for 2 MB values", len(err.Error()))
	}
	if !strings.Contains(err.Error(), `forward "xxxxxxxx`) || !strings.Contains(err.Error(), `"... (2097152 bytes)`) {
		t.Errorf("long values not quoted shortened:\n%s", err)
	}
}

// TestElementBudgetBoundary: a configuration that compiles to exactly
// MaxElements elements is accepted, one more port refused at the forward
// that goes over.
func TestElementBudgetBoundary(t *testing.T) {
	text := func(lastHi int) string {
		var b strings.Builder
		for i := range 6 { // 3 + 2 protocols × 65,535 ports × (mark + dnat) each
			fmt.Fprintf(&b, "[[forward]]\nname = \"f%d\"\nproto = [\"tcp\", \"udp\"]\nport = \"1-65535\"\naddress = \"10.0.0.%d\"\nto = \"10.1.0.1:80\"\n", i, i+1)
		}
		// 4 (with its nosnat element) + 2 per port.
		fmt.Fprintf(&b, "[[forward]]\nname = \"last\"\nport = \"1-%d\"\naddress = \"10.0.0.7\"\nto = \"10.1.0.1\"\nsnat = \"none\"\n", lastHi)
		return b.String()
	}
	if atLimit := 6*(3+2*65535*2) + 4 + 2*13569; atLimit != MaxElements {
		t.Fatalf("the configuration below is not at MaxElements (%d)", MaxElements)
	}
	if _, err := Parse("fwdd.toml", []byte(text(13569))); err != nil {
		t.Errorf("at the limit: %v", err)
	}
	_, err := Parse("fwdd.toml", []byte(text(13570)))
	if want := `fwdd.toml:37: forward "last": forwards compile to 1600002 nftables elements; one batch carries at most 1600000: use fewer forwards, ports or backends`; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("one port over the limit: %v, want %q", err, want)
	}
}

// TestKeys checks that Keys lists exactly what the parser accepts: a file
// setting every key parses, and each key of Keys is in it.
func TestKeys(t *testing.T) {
	values := map[string]string{
		"daemon.table": `"t"`, "daemon.on_stop": `"keep"`, "daemon.log_level": `"debug"`,
		"daemon.metrics": `"127.0.0.1:9641"`, "daemon.forward_policy": `"drop"`,
		"daemon.ct_mark": `"0x00fd0000/0x00ff0000"`, "daemon.ct_mask": "0xffff0000",
		"sysctl.ip_forward": "false", "sysctl.rp_filter": `"loose"`, "sysctl.conntrack_max": "1000", "sysctl.conntrack_buckets": "1000",
		"conntrack.warn_percent": "10", "conntrack.critical_percent": "20",
		"forward.name": `"a"`, "forward.proto": `"udp"`, "forward.port": "1", "forward.address": `"10.0.0.1"`,
		"forward.to": `"10.0.0.2"`, "forward.interface": `"eth0"`, "forward.sources": `["10.1.0.0/16"]`,
		"forward.snat": `"none"`, "forward.log": "true",
		"forward.balance": `"source"`, "forward.health": `{ check = "tcp" }`, "forward.on_change": `"cut"`,
		// [[forward.backend]] is exclusive with to: TestParseBalancing has it.
		"forward.backend": "",
	}
	var b strings.Builder
	table := ""
	for _, k := range Keys() {
		tbl, key, _ := strings.Cut(k, ".")
		if tbl != table {
			table = tbl
			if tbl == "forward" {
				b.WriteString("[[forward]]\n")
			} else {
				b.WriteString("[" + tbl + "]\n")
			}
		}
		v, ok := values[k]
		if !ok {
			t.Fatalf("Keys has %s, the test has no value for it", k)
		}
		if v != "" {
			b.WriteString(key + " = " + v + "\n")
		}
		delete(values, k)
	}
	if len(values) > 0 {
		t.Errorf("keys missing from Keys: %v", values)
	}
	if _, err := Parse("fwdd.toml", []byte(b.String())); err != nil {
		t.Errorf("a file with every key of Keys: %v\n%s", err, b.String())
	}
	for _, k := range Keys() {
		tbl, key, _ := strings.Cut(k, ".")
		header := "[" + tbl + "]"
		if tbl == "forward" {
			header = "[[forward]]"
		}
		if _, err := Parse("fwdd.toml", []byte(header+"\n"+key+"x = 1\n")); err == nil || !strings.Contains(err.Error(), "unknown key") {
			t.Errorf("%sx accepted", k)
		}
	}
}

func TestParseSyntaxErrorWraps(t *testing.T) {
	_, err := Parse("fwdd.toml", []byte("a = \n"))
	var pe toml.ParseError
	if !errors.As(err, &pe) {
		t.Fatalf("error does not wrap toml.ParseError: %v", err)
	}
	var p *Problem
	if !errors.As(err, &p) || p.Line != 1 {
		t.Fatalf("want a *Problem on line 1, got %#v", p)
	}
}

func TestParseScannerLines(t *testing.T) {
	in := `x = 1 # pretend [[forward]]
[[forward]]
name = "a" # [[forward]]
sources = [
  "10.0.0.0/8", # name = "b"
  '192.168.0.0/16',
]
port = 1
to = """10.0.0.1"""
note = """
bogus = 1
[[forward]]
"""
[[forward]]
'name' = 'b'
port = 2
to = "10.0.0.2:x"
`
	_, err := Parse("fwdd.toml", []byte(in))
	want := []string{
		`fwdd.toml:1: unknown key "x"`,
		`fwdd.toml:10: forward "a": unknown key "note"`,
		`fwdd.toml:17: forward "b": to: port: "x" is not a port`,
	}
	if err == nil {
		t.Fatal("Parse succeeded")
	}
	got := strings.Split(err.Error(), "\n")
	if len(got) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%s", len(got), len(want), err)
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("problem %d = %q, want prefix %q", i, got[i], want[i])
		}
	}
}

func TestForwardEqual(t *testing.T) {
	a := Forward{
		Name: "a", Line: 1, Protos: []Proto{TCP, UDP}, Port: port(1, 2), Address: ip("10.0.0.1"),
		To: ip("10.0.0.2"), ToPort: port(3, 4), Interface: "eth0",
		Sources: []netip.Prefix{cidr("10.0.0.0/8")}, SNAT: SNAT{Kind: SNATFixed, Addr: ip("10.0.0.3")}, Log: true,
	}
	b := a
	b.Line = 99
	b.Protos = []Proto{TCP, UDP}
	b.Sources = []netip.Prefix{cidr("10.0.0.0/8")}
	if !a.Equal(&b) {
		t.Errorf("forwards differing only in Line are not Equal")
	}
	changes := []func(f *Forward){
		func(f *Forward) { f.Name = "b" },
		func(f *Forward) { f.Protos = []Proto{TCP} },
		func(f *Forward) { f.Port.Hi = 5 },
		func(f *Forward) { f.Address = netip.Addr{} },
		func(f *Forward) { f.To = ip("10.0.0.9") },
		func(f *Forward) { f.ToPort = PortRange{} },
		func(f *Forward) { f.Interface = "" },
		func(f *Forward) { f.Sources = nil },
		func(f *Forward) { f.SNAT = SNAT{Kind: SNATMasquerade} },
		func(f *Forward) { f.Log = false },
	}
	for i, change := range changes {
		c := b
		c.Protos = slicesClone(b.Protos)
		c.Sources = slicesClone(b.Sources)
		change(&c)
		if a.Equal(&c) {
			t.Errorf("change %d: still Equal", i)
		}
	}
}

func slicesClone[T any](s []T) []T { return append([]T(nil), s...) }

func TestForwardsByName(t *testing.T) {
	c, err := Parse("fwdd.toml", []byte(`
[[forward]]
name = "a"
port = 1
to = "10.0.0.1"
[[forward]]
name = "b"
port = 2
to = "10.0.0.1"
`))
	if err != nil {
		t.Fatal(err)
	}
	if f := c.ForwardsByName()["b"]; f == nil || f.Port.Lo != 2 {
		t.Errorf("ForwardsByName()[b] = %+v", f)
	}
	if f := c.ForwardsByName()["c"]; f != nil {
		t.Errorf("ForwardsByName()[c] = %+v, want nil", f)
	}
	if m := c.ForwardsByName(); len(m) != 2 || m["a"] != &c.Forwards[0] {
		t.Errorf("ForwardsByName = %v", m)
	}
}

func TestTargetPort(t *testing.T) {
	tests := []struct {
		port, to PortRange
		in, want uint16
	}{
		{port(80, 80), PortRange{}, 80, 80},
		{port(80, 89), port(8080, 8080), 85, 8080},
		{port(80, 89), port(9080, 9089), 85, 9085},
	}
	for _, tt := range tests {
		f := Forward{Port: tt.port, ToPort: tt.to}
		if got := f.TargetPort(tt.in); got != tt.want {
			t.Errorf("%v -> %v: TargetPort(%d) = %d, want %d", tt.port, tt.to, tt.in, got, tt.want)
		}
	}
}

func TestParseCtMark(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want ctmark.Layout
	}{
		{"", ctmark.Default},
		{"[daemon]\nct_mark = \"0x00fd0000/0x00ff0000\"\nct_mask = 0xffff0000\n", ctmark.Layout{Tag: 0x00fd0000, TagMask: 0x00ff0000, Mask: 0xffff0000}},
		{"[daemon]\nct_mark = \"16580608/16711680\"\nct_mask = \"0xffff0000\"\n", ctmark.Layout{Tag: 0x00fd0000, TagMask: 0x00ff0000, Mask: 0xffff0000}},
		{"[daemon]\nct_mask = 0xfffff000\n", ctmark.Layout{Tag: 0xfd000000, TagMask: 0xff000000, Mask: 0xfffff000}},
	} {
		c, err := Parse("fwdd.toml", []byte(tc.in))
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if c.Daemon.CtMark != tc.want {
			t.Errorf("%q: layout %+v, want %+v", tc.in, c.Daemon.CtMark, tc.want)
		}
		// The record of the config in force keeps the layout.
		back, err := Parse("back.toml", renderTOML(t, c))
		if err != nil || back.Daemon.CtMark != tc.want {
			t.Errorf("%q: WriteTOML parses back to %+v, %v", tc.in, back.Daemon.CtMark, err)
		}
	}
}
