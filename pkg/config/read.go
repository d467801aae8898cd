package config

// ReadFile reads a config file with the checks Load makes (a regular file,
// owned by root, not writable by group or others), for callers that keep
// the text: Parser.Parse then decodes it.
func ReadFile(path string) ([]byte, error) { return readConfig(path, 0) }
