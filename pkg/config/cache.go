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
// each file at the lines that start with [[forward]] and looks each block
// up by its text; the blocks it has not seen before are decoded, through the
// same decodeFile as a whole file, as documents made of those blocks alone
// (in parallel, one per CPU).
//
// Blocks decoded this way mean what they mean in the file when the document
// decodes without a problem to exactly one forward per block, each with its
// header on the block's first line, and nothing else, and the text before
// the first block (decoded alone) does not touch forward: a cut inside a
// string or an array leaves a piece that does not decode or swallows the
// next header, and TOML gives a [[forward]] header the same meaning wherever
// the previous table ended. On any doubt, and whenever anything at all is
// wrong, the Parser decodes every file whole instead, so that messages come
// from one path only.

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
	// (0: no limit, negative: none). A configuration with more is parsed
	// afresh each time and nothing of it is kept.
	CacheLimit int

	mu sync.Mutex
	// cache maps each [[forward]] block of the latest configuration to its
	// forward in that Config (the block's text is part of the latest files,
	// so no earlier version stays in memory).
	cache map[string]*Forward
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
	files := make([]*fileResult, len(srcs))
	var all []string       // every block's text, in order
	var missing []*Forward // where each new block's forward goes
	var texts []string     // and its text
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
			all = append(all, b.text)
			f.nameLines[j], f.valid[j] = b.line, true
			if fwd, ok := p.cache[b.text]; ok {
				f.fwds[j] = *fwd
			} else {
				missing, texts = append(missing, &f.fwds[j]), append(texts, b.text)
			}
		}
		files[i] = f
	}
	if !decodeBlocks(missing, texts) {
		return nil
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
	p.cache = nil
	if p.CacheLimit == 0 || len(c.Forwards) <= p.CacheLimit {
		p.cache = make(map[string]*Forward, len(all))
		for k, t := range all {
			p.cache[t] = &c.Forwards[k]
		}
	}
	return c
}

// blocksPerDocument bounds the blocks decoded as one document: what the
// library builds for a document lives until it is decoded, so all of a
// 100,000-forward file at once would add to the daemon's peak memory.
const blocksPerDocument = 4096

// decodeBlocks decodes the blocks texts into out, in documents of many
// blocks decoded in parallel (one per CPU), and reports whether each block
// decoded as one forward and nothing else.
func decodeBlocks(out []*Forward, texts []string) bool {
	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	for lo := 0; lo < len(texts); lo += blocksPerDocument {
		hi := min(lo+blocksPerDocument, len(texts))
		g.Go(func() error {
			if !decodeDocument(out[lo:hi], texts[lo:hi]) {
				return errDoubt
			}
			return nil
		})
	}
	return g.Wait() == nil
}

// errDoubt says that blocks do not decode as one forward each.
var errDoubt = errors.New("decode the files whole")

// decodeDocument decodes blocks as one document.
func decodeDocument(out []*Forward, texts []string) bool {
	var doc strings.Builder
	lines := make([]int, len(texts)) // where each block's header must be
	line := 1
	for i, t := range texts {
		lines[i] = line
		doc.WriteString(t)
		line += strings.Count(t, "\n")
		if !strings.HasSuffix(t, "\n") { // the file's last block
			doc.WriteByte('\n')
			line++
		}
	}
	ps := &problems{}
	r := decodeFile(ps, source{text: doc.String()}, true)
	if len(ps.list) > 0 || len(r.fwds) != len(texts) {
		return false
	}
	for i := range r.fwds {
		if r.fwds[i].Line != lines[i] {
			return false
		}
		*out[i] = r.fwds[i]
	}
	return true
}
