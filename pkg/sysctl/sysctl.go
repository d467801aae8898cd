// Package sysctl reads and writes kernel parameters, reading before writing
// so that callers know whether anything changed.
//
// # Names
//
// A name is given either in dotted form, "net.ipv4.ip_forward", or in slash
// form, "net/ipv4/conf/eth0.100/rp_filter". A name that contains a slash is
// taken as a path below the root and its dots are kept; this is how a name
// whose parts contain dots (VLAN interfaces such as "eth0.100") is spelled.
// [Path] and [Conf] build slash-form names from parts, so callers never have
// to think about it. Messages show names the way sysctl(8) does: parts joined
// by dots, with dots inside a part shown as slashes
// ("net.ipv4.conf.eth0/100.rp_filter").
//
// # Namespaces
//
// The net.* subtree of /proc/sys shows the network namespace of the thread
// that opens a file, not the namespace of the process: measured on Linux 6.18,
// a thread moved with setns(2) read and wrote its own namespace's
// net.ipv4.ip_forward through /proc/sys, and a file it opened kept showing that
// namespace after the thread moved back. [FS] therefore acts on the namespace
// of whichever thread calls it, which for fwdd (one namespace per process) is
// the daemon's own. [InNetNS] runs each call on a locked thread moved into
// another namespace, for tools and tests that work on several.
package sysctl

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// DefaultRoot is where the kernel shows its parameters.
const DefaultRoot = "/proc/sys"

// Sysctls reads and writes kernel parameters by name (see the package
// documentation for the name forms).
type Sysctls interface {
	// Get returns the current value, without the trailing newline.
	Get(name string) (string, error)
	// Set reads the current value and writes value only if it differs.
	// It returns the value found and whether it wrote. A parameter that does
	// not exist gives an error matching fs.ErrNotExist; one that may not be
	// written gives a *ReadOnlyError.
	Set(name, value string) (old string, changed bool, err error)
}

// Path joins parts into a slash-form name; parts may contain dots.
func Path(parts ...string) string { return strings.Join(parts, "/") }

// Conf names a per-interface parameter: Conf("ipv4", "eth0.100", "rp_filter")
// is net/ipv4/conf/eth0.100/rp_filter. iface may also be "all" or "default".
func Conf(family, iface, key string) string {
	return Path("net", family, "conf", iface, key)
}

// ErrReadOnly is matched (errors.Is) by every *ReadOnlyError.
var ErrReadOnly = errors.New("sysctl is read-only")

// ReadOnlyError reports a parameter the kernel refused to let us write:
// permission denied or a read-only /proc/sys. Its message is complete on its
// own and names the parameter, so Set returns it unwrapped.
type ReadOnlyError struct {
	Name string // display form
	Err  error  // the underlying errno
}

func (e *ReadOnlyError) Error() string {
	if e.Name == "net.netfilter.nf_conntrack_max" || e.Name == "net.netfilter.nf_conntrack_buckets" {
		// The kernel makes it 0444 in every namespace but the initial one.
		return e.Name + " is read-only in this network namespace (it is host-wide); set it on the host"
	}
	return fmt.Sprintf("%s is read-only here (%v); set it where it may be written (the host, or a privileged container)", e.Name, e.Err)
}

func (e *ReadOnlyError) Unwrap() []error { return []error{ErrReadOnly, e.Err} }

// parts splits a name into path components and checks them.
func parts(name string) ([]string, error) {
	var ps []string
	if strings.Contains(name, "/") {
		ps = strings.Split(name, "/")
	} else {
		ps = strings.Split(name, ".")
	}
	for _, p := range ps {
		if p == "" || p == "." || p == ".." {
			return nil, fmt.Errorf("invalid sysctl name %q", name)
		}
	}
	return ps, nil
}

// Display returns a name the way sysctl(8) shows it.
func Display(name string) string {
	ps, err := parts(name)
	if err != nil {
		return name
	}
	for i, p := range ps {
		ps[i] = strings.ReplaceAll(p, ".", "/")
	}
	return strings.Join(ps, ".")
}

// key returns the canonical slash form of a name.
func key(name string) (string, error) {
	ps, err := parts(name)
	if err != nil {
		return "", err
	}
	return strings.Join(ps, "/"), nil
}

// normalize makes values comparable: the kernel separates multi-value
// parameters with tabs (ip_local_port_range is "32768\t60999") while users
// write spaces.
func normalize(v string) string { return strings.Join(strings.Fields(v), " ") }

// FS reads and writes parameters as files below a root directory.
type FS struct {
	root string
}

// NewFS returns an FS over root; "" means DefaultRoot. Tests pass a temporary
// directory laid out like /proc/sys.
func NewFS(root string) *FS {
	if root == "" {
		root = DefaultRoot
	}
	return &FS{root: root}
}

func (f *FS) path(name string) (string, error) {
	k, err := key(name)
	if err != nil {
		return "", err
	}
	return filepath.Join(f.root, filepath.FromSlash(k)), nil
}

// Get implements Sysctls.
func (f *FS) Get(name string) (string, error) {
	p, err := f.path(name)
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("get %s: %w", Display(name), unwrapPath(err))
	}
	return strings.TrimRight(string(b), "\n"), nil
}

// Set implements Sysctls.
func (f *FS) Set(name, value string) (string, bool, error) {
	p, err := f.path(name)
	if err != nil {
		return "", false, err
	}
	b, rerr := os.ReadFile(p)
	old := strings.TrimRight(string(b), "\n")
	switch {
	case rerr == nil:
		if normalize(old) == normalize(value) {
			return old, false, nil
		}
	case errors.Is(rerr, fs.ErrPermission):
		// Write-only parameters (net.ipv4.route.flush) cannot be read
		// first; write them and report the old value as unknown.
		old = ""
	default:
		return "", false, fmt.Errorf("set %s: %w", Display(name), unwrapPath(rerr))
	}
	// No O_CREATE: a missing parameter must stay an error, also in a fake tree.
	w, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
	if err == nil {
		_, err = w.WriteString(value + "\n")
		if cerr := w.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		err = unwrapPath(err)
		if isReadOnly(err) {
			return old, false, &ReadOnlyError{Name: Display(name), Err: err}
		}
		return old, false, fmt.Errorf("set %s to %q: %w", Display(name), value, err)
	}
	return old, true, nil
}

// unwrapPath drops the *fs.PathError around an errno: the messages here
// already name the parameter, and the /proc path only repeats it.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func isReadOnly(err error) bool {
	return errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EROFS) || errors.Is(err, syscall.EPERM)
}
