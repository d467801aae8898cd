package nft

// ForeignBlockers returns f.Blockers: the fake has no other tables.
func (f *Fake) ForeignBlockers(string, Forwarded) ([]Blocker, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Blocker(nil), f.Blockers...), nil
}

// CheckOwner returns f.NotOwned when set: the fake's table is fwdd's.
func (f *Fake) CheckOwner(string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.NotOwned
}
