package config

import (
	"errors"
	"runtime"
	"strings"
	"sync"

	"github.com/BurntSushi/toml"
	"github.com/fwdd/fwdd/internal/rootfile"
	"github.com/fwdd/fwdd/internal/tomlpos"
	"golang.org/x/sync/errgroup"
)

// Decoding block by block, and reusing the forwards that did not change.
//
// BurntSushi/toml takes about 150 ms to decode a file of 10,000 forwards on
// this project's 2-core machines, and a reload must be live well within
// 100 ms of SIGHUP; the library has no incremental mode. So a Parser cuts
// each file before every line that looks like a [[forward]] header and
// looks each block up by its text in what it decoded last time; the blocks
// it has not seen are decoded in documents of many blocks, in parallel (one
// per CPU). A cold parse, Parse's and Load's, is the same with nothing
// cached.
//
// The cuts are where TOML has them when the text before the first block
// (decoded alone, as a file) has no forward key, and each document decodes
// to exactly one [[forward]] table per block and nothing else: every real
// header looks like a header, so as many tables as cuts means that every cut
// is a real header, and TOML gives a [[forward]] header the same meaning
// wherever the previous table ended. A cut inside a string or an array
// leaves a document that does not decode or has fewer tables. On any doubt,
// and whenever anything at all is wrong, the files are decoded whole
// instead (parseWhole), so that every message comes from that one path.

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
	return p.load(path, rootfile.Root)
}

func (p *Parser) load(path string, rules rootfile.Rules) (*Config, error) {
	srcs, err := readConfig(path, rules)
	if err != nil {
		return nil, err
	}
	return p.parse(srcs)
}

func (p *Parser) parse(srcs []source) (*Config, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ps := newProblems(srcs)
	splits, ok := checkLimits(ps, srcs, MaxFileSize, MaxForwards)
	if !ok {
		return nil, ps.err()
	}
	c, texts := fromBlocks(srcs, splits, p.cache)
	if c == nil {
		return parseWhole(ps, srcs) // the cache stays for the next version
	}
	p.cache = nil
	if p.CacheLimit == 0 || len(texts) <= p.CacheLimit {
		p.cache = make(map[string]*Forward, len(texts))
		for k, t := range texts {
			p.cache[t] = &c.Forwards[k]
		}
	}
	return c, nil
}

// split is a file cut before each [[forward]] header (tomlpos.Cut).
type split struct {
	pre    string // the text before the first block
	blocks []tomlpos.Block
}

// fromBlocks parses the files block by block, taking from cache the blocks
// it holds, and returns the Config and every block's text in order; or nil
// when the files must be decoded whole.
func fromBlocks(srcs []source, splits []split, cache map[string]*Forward) (*Config, []string) {
	ps := newProblems(srcs)
	var main *fileResult
	var fl forwardList
	var texts []string
	for i, src := range srcs {
		f := decodeFile(ps, source{path: src.path, text: splits[i].pre}, i > 0, &fl)
		if len(ps.list) > 0 || f.forward {
			return nil, nil
		}
		if i == 0 {
			main = f
		}
		for _, b := range splits[i].blocks {
			texts = append(texts, b.Text)
			fl.nameLines = append(fl.nameLines, b.Line)
			fl.valid = append(fl.valid, true)
		}
	}
	fl.fwds = make([]Forward, len(texts))
	var todo []int // the blocks to decode
	for k, t := range texts {
		if f, ok := cache[t]; ok {
			fl.fwds[k] = *f
		} else {
			todo = append(todo, k)
		}
	}
	if !decodeBlocks(fl.fwds, texts, todo) {
		return nil, nil
	}
	k := 0
	for i, s := range splits {
		for _, b := range s.blocks {
			fl.fwds[k].File, fl.fwds[k].Line = srcs[i].path, b.Line
			k++
		}
	}
	c, err := assemble(ps, srcs[0].path, main, &fl)
	if err != nil {
		return nil, nil
	}
	return c, texts
}

// blocksPerDocument bounds the blocks decoded as one document: what the
// library builds for a document lives until it is decoded, so all of a
// 100,000-forward file at once would add to the daemon's peak memory.
const blocksPerDocument = 4096

// decodeBlocks decodes the blocks todo of texts into out, in documents
// decoded in parallel (one per CPU), and reports whether each block decoded
// as one valid forward and nothing else.
func decodeBlocks(out []Forward, texts []string, todo []int) bool {
	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	for lo := 0; lo < len(todo); lo += blocksPerDocument {
		g.Go(func() error {
			return decodeDocument(out, texts, todo[lo:min(lo+blocksPerDocument, len(todo))])
		})
	}
	return g.Wait() == nil
}

// errDoubt says that blocks do not decode as one valid forward each.
var errDoubt = errors.New("decode the files whole")

// decodeDocument decodes the blocks todo as one document.
func decodeDocument(out []Forward, texts []string, todo []int) error {
	var doc strings.Builder
	n := 0
	for _, k := range todo {
		n += len(texts[k]) + 1
	}
	doc.Grow(n)
	for _, k := range todo {
		doc.WriteString(texts[k])
		if !strings.HasSuffix(texts[k], "\n") { // the file's last block
			doc.WriteByte('\n')
		}
	}
	var m map[string]any
	if _, err := toml.Decode(doc.String(), &m); err != nil || len(m) != 1 {
		return errDoubt
	}
	tables, ok := m["forward"].([]map[string]any)
	if !ok || len(tables) != len(todo) {
		return errDoubt
	}
	ps := &problems{}
	for i, t := range tables {
		f := validateForward(ps, i, t, &tomlpos.Table{})
		if len(ps.list) > 0 {
			return errDoubt
		}
		out[todo[i]] = f
	}
	return nil
}
