//go:build race

package config

// raceEnabled skips tests that are only slow, not interesting, under -race.
const raceEnabled = true
