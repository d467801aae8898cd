package deb

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestKernelSystemdPackage builds the .deb, boots a real systemd in a
// container (systemd-nspawn over the host's own /, with a fresh /etc, a
// private network namespace, a writable overlay on /usr and a copy of the
// host's dpkg database), and installs the package there with dpkg, so the
// maintainer scripts run against that systemd. It then checks the service
// (start, health checks of a backend outside loopback, reload good and bad,
// the journal, Restart=on-failure, on_stop)
// and the package's upgrade, removal and purge, with each step's files.
func TestKernelSystemdPackage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: boots systemd in a container")
	}
	for _, tool := range []string{"systemd-nspawn", "nsenter", "dpkg-deb", "go-md2man", "nft", "lintian"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing; .ci/run installs it", tool)
		}
	}
	began := time.Now()
	debDir := t.TempDir()
	out, err := exec.Command("./build.sh", debDir).CombinedOutput()
	if err != nil {
		t.Fatalf("build.sh: %v\n%s", err, out)
	}
	deb := strings.TrimSpace(string(out))
	t.Logf("built %s in %s", filepath.Base(deb), time.Since(began).Round(time.Second))
	inContainer := "/srv/fwdd/" + filepath.Base(deb)

	c := bootContainer(t, debDir)
	t.Logf("container up after %s", time.Since(began).Round(time.Second))

	// Install: files, user, enabled, started (READY=1), table, privileges.
	c.must("dpkg", "-i", inContainer)
	for _, f := range []string{
		"/usr/sbin/fwdd", "/lib/systemd/system/fwdd.service", "/usr/lib/sysusers.d/fwdd.conf",
		"/usr/share/man/man8/fwdd.8.gz", "/usr/share/man/man5/fwdd.toml.5.gz",
		"/usr/share/bash-completion/completions/fwdd", "/usr/share/doc/fwdd/copyright",
		"/usr/share/doc/fwdd/changelog.gz", "/usr/share/doc/fwdd/examples/90-fwdd.conf",
		"/usr/share/doc/fwdd/examples/fwdd-dashboard.json.gz", "/usr/share/doc/fwdd/examples/fwdd.toml",
	} {
		c.mustExist(f)
	}
	if got := c.must("dpkg-query", "-W", "-f=${Conffiles}", "fwdd"); !strings.Contains(got, "/etc/fwdd/fwdd.toml") {
		t.Errorf("conffiles: %q", got)
	}
	gid := c.group("fwdd")
	c.mustMode("/etc/fwdd", 0o750, gid)
	c.mustMode("/etc/fwdd/fwdd.toml", 0o640, gid)
	c.mustMode("/etc/fwdd/fwdd.d", 0o750, gid)
	if got := c.must("systemctl", "is-enabled", "fwdd"); got != "enabled" {
		t.Errorf("after install: is-enabled %q", got)
	}
	c.mustActive()
	if !strings.Contains(c.nft("list", "table", "inet", "fwdd"), "table inet fwdd") {
		t.Error("after install: no table inet fwdd in the container")
	}
	// Early boot: not after sysinit.target or basic.target (a cycle on
	// cloud-init hosts), whatever systemd adds implicitly.
	after := c.must("systemctl", "show", "-p", "After", "--value", "fwdd")
	t.Logf("fwdd.service After=%s", after)
	for _, u := range strings.Fields(after) {
		if u == "sysinit.target" || u == "basic.target" {
			t.Errorf("fwdd.service is ordered after %s: %s", u, after)
		}
	}
	pid := c.mainPID()
	status := c.must("cat", "/proc/"+pid+"/status")
	if want := fmt.Sprintf("Uid:\t%d\t%d\t%d\t%d", c.user("fwdd"), c.user("fwdd"), c.user("fwdd"), c.user("fwdd")); !strings.Contains(status, want) {
		t.Errorf("fwdd does not run as user fwdd:\n%s", status)
	}
	for _, capLine := range []string{"CapEff:\t0000000000001000", "CapBnd:\t0000000000001000"} {
		if !strings.Contains(status, capLine) {
			t.Errorf("fwdd's capabilities are not CAP_NET_ADMIN alone (%s):\n%s", capLine, status)
		}
	}
	if got := c.must("cat", "/proc/sys/net/ipv4/ip_forward"); got != "1" {
		t.Errorf("net.ipv4.ip_forward = %s: fwdd could not write it as user fwdd", got)
	}
	if j := c.journal("info"); strings.Contains(j, "conntrack watcher not ready") {
		t.Errorf("the conntrack watcher did not start as user fwdd:\n%s", j)
	}

	if fi, err := os.Stat(c.path("/run/fwdd")); err != nil || fi.Mode().Perm() != 0o700 || int(fi.Sys().(*syscall.Stat_t).Uid) != c.user("fwdd") {
		t.Errorf("/run/fwdd: %v %v, want 0700 owned by fwdd", fi.Mode(), err)
	}

	// Health checks work under the unit's sandbox: the daemon dials a
	// backend outside loopback (an address on a veth pair in the
	// container's network namespace) and finds one port up and the other
	// refused. An IP address filter on the unit (IPAddressDeny=) fails both.
	c.checkBackendHealth()

	// 10,000 forwards: one batch of about a megabyte, more than a netlink
	// socket takes by default (212 KB), and as many acks. It goes in only
	// if SO_SNDBUFFORCE/SO_RCVBUFFORCE work with CAP_NET_ADMIN alone.
	var big strings.Builder
	for i := 0; i < 10000; i++ {
		fmt.Fprintf(&big, "[[forward]]\nname = \"f%d\"\nport = %d\nto = \"10.98.%d.%d:80\"\n", i, 10000+i, i/250, i%250+1)
	}
	c.writeConfig(big.String())
	c.must("systemctl", "reload", "fwdd")
	if !strings.Contains(c.journal("info"), "reloaded: 10000 forwards") {
		t.Error("the reload of 10000 forwards did not report them in")
	}

	// A good reload returns after the new rules are in, the config
	// directory's too (read by user fwdd through the group).
	c.writeConfig(goodConfig)
	extra := c.path("/etc/fwdd/fwdd.d/extra.toml")
	if err := os.WriteFile(extra, []byte("[[forward]]\nname = \"extra\"\nport = 81\nto = \"10.99.0.3:8080\"\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(extra, 0, gid); err != nil {
		t.Fatal(err)
	}
	c.must("systemctl", "reload", "fwdd")
	if table := c.nft("list", "table", "inet", "fwdd"); !strings.Contains(table, "10.99.0.2") || !strings.Contains(table, "fd99::2") || !strings.Contains(table, "10.99.0.3") {
		t.Errorf("systemctl reload returned before the new rules were in:\n%s", table)
	}
	if got := c.must("cat", "/proc/sys/net/ipv6/conf/all/forwarding"); got != "1" {
		t.Errorf("net.ipv6.conf.all.forwarding = %s after an IPv6 forward", got)
	}

	// A bad file: reload fails, says why in systemctl status, changes nothing.
	before := c.nft("-a", "list", "ruleset")
	c.writeConfig(goodConfig + "\nbogus_key = 1\n")
	if out, err := c.run("systemctl", "reload", "fwdd"); err == nil {
		t.Errorf("systemctl reload of a bad file succeeded:\n%s", out)
	}
	const reason = `unknown key "bogus_key"`
	if st, _ := c.run("systemctl", "status", "--no-pager", "-n", "20", "fwdd"); !strings.Contains(st, reason) {
		t.Errorf("systemctl status does not show the reason %q:\n%s", reason, st)
	}
	if after := c.nft("-a", "list", "ruleset"); after != before {
		t.Errorf("a refused reload changed the ruleset:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if c.mainPID() != pid {
		t.Error("a refused reload restarted the daemon")
	}
	c.mustActive()

	// journalctl -p warning: only warnings and errors, the refusal among them.
	var warnings []journalEntry
	for _, e := range c.journalJSON("warning") {
		if e.Priority > 4 {
			t.Errorf("journalctl -p warning shows priority %d: %s", e.Priority, e.Message)
		}
		warnings = append(warnings, e)
	}
	if !containsMessage(warnings, reason) {
		t.Errorf("journalctl -u fwdd -p warning lacks the refusal %q:\n%v", reason, warnings)
	}
	if !containsMessage(warnings, "router advertisements") {
		t.Errorf("journalctl -u fwdd -p warning lacks the IPv6 router advertisement warning:\n%v", warnings)
	}
	if containsMessage(warnings, "reloaded: 3 forwards") || !containsMessage(c.journalJSON("info"), "reloaded: 3 forwards") {
		t.Error("the successful reload's line is not at priority info")
	}

	// Restart=on-failure brings it back after SIGKILL.
	c.writeConfig(goodConfig)
	c.must("systemctl", "kill", "--signal=SIGKILL", "fwdd")
	c.eventually(30*time.Second, func() error {
		if p, _ := c.run("systemctl", "show", "-p", "MainPID", "--value", "fwdd"); p == pid || p == "0" {
			return fmt.Errorf("not restarted yet (MainPID %s)", p)
		}
		if a, _ := c.run("systemctl", "is-active", "fwdd"); a != "active" {
			return fmt.Errorf("is-active %s", a)
		}
		return nil
	})
	if n := c.must("systemctl", "show", "-p", "NRestarts", "--value", "fwdd"); n == "0" {
		t.Errorf("NRestarts = %s after SIGKILL", n)
	}

	// systemctl stop honours on_stop: "flush" removes the table, "keep" leaves it.
	c.must("systemctl", "stop", "fwdd")
	if strings.Contains(c.nft("list", "tables"), "inet fwdd") {
		t.Error(`systemctl stop with on_stop = "flush" left the table`)
	}
	c.writeConfig(strings.Replace(goodConfig, "[daemon]\n", "[daemon]\non_stop = \"keep\"\n", 1))
	c.must("systemctl", "start", "fwdd")
	c.mustActive()
	c.must("systemctl", "stop", "fwdd")
	if !strings.Contains(c.nft("list", "table", "inet", "fwdd"), "10.99.0.2") {
		t.Error(`systemctl stop with on_stop = "keep" removed the table`)
	}
	c.writeConfig(goodConfig)
	c.must("systemctl", "start", "fwdd")
	c.mustActive()

	// Upgrade over itself: restarted, the operator's config kept.
	pid = c.mainPID()
	c.must("dpkg", "-i", inContainer)
	c.mustActive()
	if c.mainPID() == pid {
		t.Error("upgrade did not restart the daemon")
	}
	if got, _ := os.ReadFile(c.path("/etc/fwdd/fwdd.toml")); string(got) != goodConfig {
		t.Errorf("upgrade replaced the operator's config:\n%s", got)
	}
	c.mustMode("/etc/fwdd/fwdd.toml", 0o640, gid)
	if !strings.Contains(c.nft("list", "table", "inet", "fwdd"), "10.99.0.2") {
		t.Error("after upgrade: the table lacks the config's forwards")
	}

	// Remove: stopped (the table flushed), files gone, the config kept.
	c.must("dpkg", "-r", "fwdd")
	if a, _ := c.run("systemctl", "is-active", "fwdd"); a == "active" {
		t.Error("after remove: fwdd still active")
	}
	if strings.Contains(c.nft("list", "tables"), "inet fwdd") {
		t.Error("after remove: the table is still there")
	}
	for _, f := range []string{"/usr/sbin/fwdd", "/lib/systemd/system/fwdd.service", "/usr/share/man/man8/fwdd.8.gz"} {
		c.mustNotExist(f)
	}
	c.mustExist("/etc/fwdd/fwdd.toml")
	if got := c.must("dpkg-query", "-W", "-f=${db:Status-Abbrev}", "fwdd"); strings.TrimSpace(got) != "rc" {
		t.Errorf("after remove: status %q, want rc", got)
	}

	// Reinstall after remove: the kept config in force again, the daemon started.
	c.must("dpkg", "-i", inContainer)
	c.mustActive()
	if !strings.Contains(c.nft("list", "table", "inet", "fwdd"), "10.99.0.2") {
		t.Error("after reinstall: the table lacks the config's forwards")
	}
	c.must("dpkg", "-r", "fwdd")

	// Purge: /etc/fwdd and the unit's enablement gone.
	c.must("dpkg", "-P", "fwdd")
	c.mustNotExist("/etc/fwdd")
	c.mustNotExist("/etc/systemd/system/multi-user.target.wants/fwdd.service")
	if got, err := c.run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", "fwdd"); err == nil && strings.TrimSpace(got) != "un" {
		t.Errorf("after purge: status %q", got)
	}

	// lintian: no errors (warnings are listed in packaging/deb/README.md).
	lint, _ := exec.Command("lintian", "--pedantic", deb).CombinedOutput()
	for _, l := range strings.Split(string(lint), "\n") {
		if strings.HasPrefix(l, "E: ") {
			t.Errorf("lintian: %s", l)
		}
	}
	t.Logf("lintian:\n%s", lint)
	t.Logf("package and systemd test took %s", time.Since(began).Round(time.Second))
}

const goodConfig = `[daemon]
log_level = "info"

[[forward]]
name = "web"
port = 80
to = "10.99.0.2:8080"

[[forward]]
name = "web6"
port = 80
to = "[fd99::2]:8080"
`

const healthConfig = `[[forward]]
name = "checked"
port = 82
to = ["10.97.0.1:8080", "10.97.0.1:8081"]
health = { check = "tcp", interval = "200ms", timeout = "100ms", fall = 1, rise = 1 }
`

// checkBackendHealth gives the container's network namespace the address
// 10.97.0.1 with a listener on port 8080 (none on 8081), reloads fwdd with
// healthConfig and waits until `fwdd status --json` reports 8080 up
// (connected) and 8081 down (refused): both checks reached the backend.
func (c *container) checkBackendHealth() {
	c.t.Helper()
	for _, args := range [][]string{
		{"ip", "link", "add", "be0", "type", "veth", "peer", "name", "be1"},
		{"ip", "address", "add", "10.97.0.1/24", "dev", "be0"},
		{"ip", "link", "set", "be0", "up"},
		{"ip", "link", "set", "be1", "up"},
	} {
		if out, err := c.nsenter("-n", args...); err != nil {
			c.t.Fatalf("in the container's network namespace: %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	l, err := listenIn(c.init, "10.97.0.1:8080")
	if err != nil {
		c.t.Fatalf("listen in the container's network namespace: %v", err)
	}
	c.t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	c.writeConfig(healthConfig)
	c.must("systemctl", "reload", "fwdd")
	want := map[string]string{"10.97.0.1:8080": "up connected", "10.97.0.1:8081": "down refused"}
	c.eventually(20*time.Second, func() error {
		out, _ := c.run("/usr/sbin/fwdd", "status", "--json", "checked")
		var r struct {
			Forwards []struct {
				Backends []struct{ Address, Health, Reason string }
			}
		}
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			return fmt.Errorf("fwdd status --json: %v: %s", err, out)
		}
		got := map[string]string{}
		for _, f := range r.Forwards {
			for _, b := range f.Backends {
				got[b.Address] = b.Health + " " + b.Reason
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("backends' health %v, want %v", got, want)
		}
		return nil
	})
}

// listenIn listens on addr in the network namespace of the process pid. The
// socket is made on a thread of its own that moves into that namespace and
// is never moved back: it ends with its goroutine, still locked.
func listenIn(pid int, addr string) (net.Listener, error) {
	type result struct {
		l   net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/net", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, fmt.Errorf("setns: %w", err)}
			return
		}
		l, err := net.Listen("tcp", addr)
		ch <- result{l, err}
	}()
	r := <-ch
	return r.l, r.err
}

// container is a systemd booted with systemd-nspawn, driven with nsenter.
type container struct {
	t    *testing.T
	init int // host PID of the container's systemd
}

func bootContainer(t *testing.T, debDir string) *container {
	t.Helper()
	dir := t.TempDir()
	// dpkg needs its database: a copy of the host's, without the host's
	// stat overrides (they name groups the container's fresh /etc lacks).
	dpkgDir := filepath.Join(dir, "dpkg")
	if out, err := exec.Command("cp", "-a", "/var/lib/dpkg", dpkgDir).CombinedOutput(); err != nil {
		t.Fatalf("copy dpkg database: %v\n%s", err, out)
	}
	if err := os.WriteFile(filepath.Join(dpkgDir, "statoverride"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// The package writes into /usr: an overlay over the host's, its upper
	// dir here. A whiteout hides a policy-rc.d (container images ship one
	// that forbids starting services), so postinst starts fwdd as on a
	// real machine.
	upper := filepath.Join(dir, "usr")
	if err := os.MkdirAll(filepath.Join(upper, "sbin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(upper, "sbin", "policy-rc.d"), unix.S_IFCHR|0o600, 0); err != nil {
		t.Fatal(err)
	}
	name := make([]byte, 4)
	_, _ = rand.Read(name)
	machine := "fwdd-test-" + hex.EncodeToString(name)
	logFile, err := os.Create(filepath.Join(dir, "console.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("systemd-nspawn", "--directory=/", "--volatile=yes", "-M", machine,
		"--private-network", "--register=no", "--keep-unit",
		"--bind="+dpkgDir+":/var/lib/dpkg", "--overlay=/usr:"+upper+":/usr",
		"--bind-ro="+debDir+":/srv/fwdd",
		// nspawn's seccomp filter refuses bpf(); without it the
		// container's systemd finds no BPF firewall and silently ignores
		// IPAddressDeny= and IPAddressAllow=, as a real host does not.
		"--system-call-filter=bpf",
		"--boot", "systemd.firstboot=off",
		// Nothing to wait for on a private network without links.
		"systemd.mask=systemd-networkd-wait-online.service")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logFile.Close(); close(exited) }()
	c := &container{t: t}
	t.Cleanup(func() {
		// Killing the container's init ends every process in it.
		if c.init != 0 {
			_ = syscall.Kill(c.init, syscall.SIGKILL)
		}
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		_ = os.Remove("/run/systemd/nspawn/propagate/" + machine)
		if t.Failed() {
			b, _ := os.ReadFile(logFile.Name())
			t.Logf("container console (last 3000 bytes):\n%s", tail(b, 3000))
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for c.init == 0 {
		select {
		case <-exited:
			b, _ := os.ReadFile(logFile.Name())
			t.Fatalf("systemd-nspawn exited:\n%s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("no systemd in the container after 60s")
		}
		c.init = findInit(cmd.Process.Pid)
		time.Sleep(100 * time.Millisecond)
	}
	// Wait for basic.target (journald, D-Bus, sockets): enough for the
	// test. Services the host has enabled start (or fail) in the
	// container too, in its own network namespace; fwdd depends on none.
	c.eventually(90*time.Second, func() error {
		if s, _ := c.run("systemctl", "is-active", "basic.target"); s != "active" {
			jobs, _ := c.run("systemctl", "list-jobs", "--no-pager")
			return fmt.Errorf("basic.target %q; jobs:\n%s", s, jobs)
		}
		return nil
	})
	// On a host without systemd nothing removes a killed container's
	// cgroups, and nspawn puts every container in the same ones: a
	// fwdd.service cgroup left by an earlier run would carry the BPF
	// programs (IPAddressDeny=) its systemd attached into this one. Remove
	// it (rmdir fails while processes are in it).
	_, _ = c.run("sh", "-c", "rmdir /sys/fs/cgroup/unified/system.slice/fwdd.service /sys/fs/cgroup/system.slice/fwdd.service 2>/dev/null")
	return c
}

// findInit returns the PID of nspawn's child running systemd, or 0.
func findInit(nspawn int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", nspawn, nspawn))
	if err != nil {
		return 0
	}
	for _, f := range strings.Fields(string(b)) {
		comm, _ := os.ReadFile("/proc/" + f + "/comm")
		if strings.TrimSpace(string(comm)) == "systemd" {
			pid, _ := strconv.Atoi(f)
			return pid
		}
	}
	return 0
}

// run runs a command in all of the container's namespaces.
func (c *container) run(args ...string) (string, error) {
	return c.nsenter("-a", args...)
}

func (c *container) nsenter(ns string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(c.init), ns, "--"}, args...)...)
	cmd.Env = append(os.Environ(), "SYSTEMD_PAGER=", "LC_ALL=C.UTF-8", "DEBIAN_FRONTEND=noninteractive")
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (c *container) must(args ...string) string {
	c.t.Helper()
	out, err := c.run(args...)
	if err != nil {
		c.t.Fatalf("in the container: %s: %v\n%s\n%s", strings.Join(args, " "), err, out, c.status())
	}
	return out
}

// nft runs the host's nft in the container's network namespace.
func (c *container) nft(args ...string) string {
	out, _ := c.nsenter("-n", append([]string{"nft"}, args...)...)
	return out
}

func (c *container) status() string {
	out, _ := c.run("systemctl", "status", "--no-pager", "-n", "30", "fwdd")
	return out
}

func (c *container) path(p string) string { return fmt.Sprintf("/proc/%d/root%s", c.init, p) }

func (c *container) mustExist(p string) {
	c.t.Helper()
	if _, err := os.Lstat(c.path(p)); err != nil {
		c.t.Errorf("%s missing: %v", p, err)
	}
}

func (c *container) mustNotExist(p string) {
	c.t.Helper()
	if _, err := os.Lstat(c.path(p)); !errors.Is(err, os.ErrNotExist) {
		c.t.Errorf("%s still there (%v)", p, err)
	}
}

func (c *container) mustMode(p string, mode os.FileMode, gid int) {
	c.t.Helper()
	fi, err := os.Stat(c.path(p))
	if err != nil {
		c.t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != mode || st.Uid != 0 || int(st.Gid) != gid {
		c.t.Errorf("%s: mode %04o %d:%d, want %04o 0:%d", p, fi.Mode().Perm(), st.Uid, st.Gid, mode, gid)
	}
}

// writeConfig replaces the config's content in place (mode and owner stay).
func (c *container) writeConfig(text string) {
	c.t.Helper()
	if err := os.WriteFile(c.path("/etc/fwdd/fwdd.toml"), []byte(text), 0o640); err != nil {
		c.t.Fatal(err)
	}
}

// user and group read ids from the container's own /etc.
func (c *container) user(name string) int  { return c.id("/etc/passwd", name) }
func (c *container) group(name string) int { return c.id("/etc/group", name) }

func (c *container) id(file, name string) int {
	c.t.Helper()
	f, err := os.Open(c.path(file))
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if p := strings.Split(s.Text(), ":"); len(p) > 2 && p[0] == name {
			id, _ := strconv.Atoi(p[2])
			return id
		}
	}
	c.t.Fatalf("no %s in the container's %s", name, file)
	return -1
}

func (c *container) mainPID() string {
	c.t.Helper()
	return c.must("systemctl", "show", "-p", "MainPID", "--value", "fwdd")
}

// mustActive: active (running) is reached only after READY=1 (Type=notify).
func (c *container) mustActive() {
	c.t.Helper()
	got := c.must("systemctl", "show", "-p", "Type,ActiveState,SubState", "fwdd")
	if got != "Type=notify\nActiveState=active\nSubState=running" {
		c.t.Errorf("fwdd is not active (running) after READY=1:\n%s\n%s", got, c.status())
	}
}

func (c *container) journal(prio string) string {
	out, _ := c.run("journalctl", "-u", "fwdd", "-p", prio, "--no-pager", "-o", "cat")
	return out
}

type journalEntry struct {
	Priority int
	Message  string
}

func (c *container) journalJSON(prio string) []journalEntry {
	c.t.Helper()
	out := c.must("journalctl", "-u", "fwdd", "-p", prio, "--no-pager", "-o", "json")
	var es []journalEntry
	for _, l := range strings.Split(out, "\n") {
		if l == "" {
			continue
		}
		var raw struct{ PRIORITY, MESSAGE string }
		if err := json.Unmarshal([]byte(l), &raw); err != nil {
			c.t.Fatalf("journalctl -o json: %v: %s", err, l)
		}
		p, _ := strconv.Atoi(raw.PRIORITY)
		es = append(es, journalEntry{p, raw.MESSAGE})
	}
	return es
}

func containsMessage(es []journalEntry, s string) bool {
	for _, e := range es {
		if strings.Contains(e.Message, s) {
			return true
		}
	}
	return false
}

func (c *container) eventually(timeout time.Duration, f func() error) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("after %s: %v\n%s", timeout, err, c.status())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
