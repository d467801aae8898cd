package sandbox

import "testing"

func TestTCPExt(t *testing.T) {
	netstat := []byte("TcpExt: SyncookiesSent TCPSynRetrans PAWSTimewait\n" +
		"TcpExt: 0 17 3\n" +
		"IpExt: InNoRoutes TCPSynRetrans\n" +
		"IpExt: 9 99\n")
	for name, want := range map[string]int64{"TCPSynRetrans": 17, "PAWSTimewait": 3, "SyncookiesSent": 0} {
		if got, err := TCPExt(netstat, name); err != nil || got != want {
			t.Errorf("TCPExt(%s) = %d, %v; want %d", name, got, err, want)
		}
	}
	for _, name := range []string{"InNoRoutes", "TcpExt:", "Missing"} {
		if got, err := TCPExt(netstat, name); err == nil {
			t.Errorf("TCPExt(%s) = %d, want an error", name, got)
		}
	}
}
