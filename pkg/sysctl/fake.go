package sysctl

import (
	"fmt"
	"io/fs"
	"maps"
	"sync"
	"syscall"
)

// Fake is an in-memory Sysctls for tests. Like the kernel, it only knows the
// parameters it was given: Set on an unknown name fails with fs.ErrNotExist,
// and Set on a read-only name fails with a *ReadOnlyError.
type Fake struct {
	mu       sync.Mutex
	values   map[string]string // canonical slash form
	readOnly map[string]bool
	writes   int
}

// NewFake returns a Fake holding values (names in either form).
func NewFake(values map[string]string) *Fake {
	f := &Fake{values: map[string]string{}, readOnly: map[string]bool{}}
	for n, v := range values {
		f.values[mustKey(n)] = v
	}
	return f
}

// Add adds parameters (names in either form), as loading a module does:
// nf_conntrack's appear when the first rule that uses conntrack goes in.
func (f *Fake) Add(values map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for n, v := range values {
		f.values[mustKey(n)] = v
	}
}

// SetReadOnly makes names refuse writes, like nf_conntrack_max in a child
// network namespace.
func (f *Fake) SetReadOnly(names ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range names {
		f.readOnly[mustKey(n)] = true
	}
}

// Values returns a copy of all values, keyed by slash-form name.
func (f *Fake) Values() map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.values)
}

// Writes counts the writes Set actually made.
func (f *Fake) Writes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes
}

// Get implements Sysctls.
func (f *Fake) Get(name string) (string, error) {
	k, err := key(name)
	if err != nil {
		return "", err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.values[k]
	if !ok {
		return "", fmt.Errorf("get %s: %w", Display(name), fs.ErrNotExist)
	}
	return v, nil
}

// Set implements Sysctls.
func (f *Fake) Set(name, value string) (string, bool, error) {
	k, err := key(name)
	if err != nil {
		return "", false, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	old, ok := f.values[k]
	if !ok {
		return "", false, fmt.Errorf("set %s: %w", Display(name), fs.ErrNotExist)
	}
	if normalize(old) == normalize(value) {
		return old, false, nil
	}
	if f.readOnly[k] {
		return old, false, &ReadOnlyError{Name: Display(name), Err: syscall.EACCES}
	}
	f.values[k] = value
	f.writes++
	return old, true, nil
}

func mustKey(name string) string {
	k, err := key(name)
	if err != nil {
		panic(err)
	}
	return k
}
