package config

import (
	"errors"
	"runtime"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"
)

// Reusing the forwards that did not change.
//
// BurntSushi/toml takes about 170 ms to decode a file of 10,000 forwards on
// this project's 2-core machines, and a reload must be live well within
// 100 ms of SIGHUP; the library has no incremental mode. So a Parser cuts
// each file at the lines that start with [[forward]], and decodes each
// block that it has not seen before as a document of its own, through the
// same decodeFile as a whole file; blocks it has seen are looked up by their
// text.
//
// A block decoded alone means what it means in the file when it decodes
// without a problem to exactly one forward and nothing else, and the text
// before the first block (decoded alone too) does not touch forward: a cut
// inside a string or an array leaves a piece that does not decode, and TOML
// gives a [[forward]] header the same meaning wherever the previous table
// ended. On any doubt, and whenever anything at all is wrong, the Parser
// decodes every file whole instead, so that messages come from one path only.

// Parser parses successive versions of a configuration, decoding again only
// the [[forward]] blocks whose text changed since the previous call. It keeps
// the latest version's forwards only. The zero Parser is ready to use; a
// Parser is safe for concurrent use (calls are serialized).
//
// Results are the same as Parse's and Load's, error messages included. The
// Forwards of successive Configs share the backing arrays of Protos and
// Sources where a forward did not change; like the rest of a Config, they must
// not be modified.
type Parser struct {
	// CacheLimit is the most [[forward]] blocks the Parser remembers
	// (0: no limit). A configuration with more is parsed afresh each time
	// and nothing of it is kept.
	CacheLimit int

	mu sync.Mutex
	// cache holds each [[forward]] block of the latest configuration that
	// decoded alone without a problem, by its text (within the latest files,
	// so that no earlier version stays in memory).
	cache map[string]Forward
}

// Parse decodes and validates a configuration file like the package-level
// Parse, reusing what it can from earlier calls.
func (p *Parser) Parse(path string, data []byte) (*Config, error) {
	return p.parse([]source{{path: path, text: string(data)}})
}

// Load is the package-level Load through p: the same checks on the files,
// then the same result.
func (p *Parser) Load(path string) (*Config, error) {
	return p.load(path, rootOnly)
}

func (p *Parser) load(path string, rules fileRules) (*Config, error) {
	srcs, err := readConfig(path, rules)
	if err != nil {
		return nil, err
	}
	return p.parse(srcs)
}

func (p *Parser) parse(srcs []source) (*Config, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.fromBlocks(srcs); c != nil {
		return c, nil
	}
	return parseFiles(srcs)
}

// block is one [[forward]] entry of a file: from its header to the next.
type block struct {
	text string
	line int // of the header
}

// splitBlocks cuts text before each line that starts, after blanks, with a
// [[forward]] header ([[ forward ]] and [["forward"]] too). The text before
// the first block ends at preEnd.
func splitBlocks(text string) (preEnd int, blocks []block) {
	var starts []int
	line, counted := 1, 0 // line is the number of the line at offset counted
	for from := 0; ; {
		i := strings.Index(text[from:], "[[")
		if i < 0 {
			break
		}
		i += from
		// from is always the start of a line.
		start := strings.LastIndexByte(text[from:i], '\n') + 1 + from
		from = len(text) // go on after this line: no line holds two headers

		if end := strings.IndexByte(text[i:], '\n'); end >= 0 {
			from = i + end + 1
		}
		if strings.TrimLeft(text[start:i], " \t") != "" || !isForwardHeader(text[i:]) {
			continue
		}
		line += strings.Count(text[counted:start], "\n")
		counted = start
		starts = append(starts, start)
		blocks = append(blocks, block{line: line})
	}
	starts = append(starts, len(text))
	for k := range blocks {
		blocks[k].text = text[starts[k]:starts[k+1]]
	}
	return starts[0], blocks
}

// isForwardHeader reports whether s starts with a [[forward]] header.
func isForwardHeader(s string) bool {
	if strings.HasPrefix(s, "[[forward]]") {
		return true
	}
	if end := strings.IndexByte(s, '\n'); end >= 0 {
		s = s[:end]
	}
	name := headerName(s, true)
	return len(name) == 1 && name[0] == "forward"
}

// fromBlocks parses srcs block by block, or returns nil when they must be
// decoded whole.
func (p *Parser) fromBlocks(srcs []source) *Config {
	ps := newProblems(srcs)
	if !checkLimits(ps, srcs, MaxFileSize, MaxForwards) {
		return nil
	}
	next := make(map[string]Forward, len(p.cache))
	files := make([]*fileResult, len(srcs))
	type todo struct {
		fwd  *Forward
		text string
	}
	var missing []todo
	for i, src := range srcs {
		preEnd, blocks := splitBlocks(src.text)
		f := decodeFile(ps, source{path: src.path, text: src.text[:preEnd]}, i > 0)
		if len(ps.list) > 0 || len(f.fwds) > 0 || slices.Contains(f.top, "forward") {
			return nil
		}
		f.fwds = make([]Forward, len(blocks))
		f.nameLines = make([]int, len(blocks))
		f.valid = make([]bool, len(blocks))
		for j, b := range blocks {
			f.nameLines[j], f.valid[j] = b.line, true
			if fwd, ok := p.cache[b.text]; ok {
				f.fwds[j] = fwd
				next[b.text] = fwd
			} else {
				missing = append(missing, todo{&f.fwds[j], b.text})
			}
		}
		files[i] = f
	}

	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	for _, t := range missing {
		g.Go(func() error {
			bp := &problems{}
			r := decodeFile(bp, source{text: t.text}, true)
			if len(bp.list) > 0 || len(r.fwds) != 1 || r.fwds[0].Line != 1 {
				return errDoubt
			}
			*t.fwd = r.fwds[0]
			return nil
		})
	}
	if g.Wait() != nil {
		return nil
	}
	for _, t := range missing {
		next[t.text] = *t.fwd
	}

	for i, f := range files {
		for j := range f.fwds {
			f.fwds[j].File = srcs[i].path
			f.fwds[j].Line = f.nameLines[j]
		}
	}
	c, err := assemble(ps, srcs[0].path, files)
	if err != nil {
		return nil
	}
	p.cache = next
	if p.CacheLimit > 0 && len(next) > p.CacheLimit {
		p.cache = nil
	}
	return c
}

// errDoubt says that a block does not decode alone as one forward.
var errDoubt = errors.New("decode the files whole")
