package config

import (
	"fmt"
	"hash/maphash"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/BurntSushi/toml"
)

// Block-wise decoding.
//
// BurntSushi/toml needs about 120-200 ms to decode a file of 10,000
// forwards on a 2-core box (100,000: 1.3-3 s), and a reload must be live
// within 100 ms. BurntSushi has no incremental or parallel mode: one Decode
// call reads one whole document on one goroutine, and nothing of it can be
// kept for the next call. So this file does by hand what the library cannot:
//
//   - It cuts the text into the preamble (everything before the first
//     [[forward]] header) and one block per [[forward]] (from its header to
//     the next header of any kind), and decodes the pieces separately, in
//     parallel on GOMAXPROCS goroutines.
//   - A Parser remembers each block's decoded and validated forward by the
//     block's exact text, so a reload decodes only the blocks whose text
//     changed. It also keeps the previous file's split, so that a reload only
//     scans again the part of the file that changed (splitAgain).
//   - Most blocks are a header and `key = value` lines, and many values
//     repeat (protocols, ports, backends, sources): for those blocks only
//     the distinct values are decoded, many to a Decode call (values.go).
//     Other blocks go to BurntSushi a few consecutive blocks at a time,
//     since a Decode call has a fixed cost comparable to decoding a small
//     block. Either way a result is only used when it provably is what the
//     block decodes to alone (decodeChunk, readSimple), since that is what
//     gets cached.
//
// This is only equivalent to decoding the whole file when every header after
// the first [[forward]] is another [[forward]] and the preamble does not
// touch forward at all: then each block can only add one element to the
// forward array and set keys inside it, and a block's meaning does not depend
// on the text around it. The pieces are cut at lines the scanner (scan.go)
// reads as headers, outside any value. Each piece must then decode on its own
// and say so: the preamble defines no forward key, each block is exactly one
// forward and nothing else. A cut inside a string or array leaves a piece
// that does not decode; a header the scanner missed shows up as a second
// forward or as a key outside forward. In every such case, and for any TOML
// error at all, Parser decodes the whole file instead (parseWhole), so that
// messages and their line numbers are exactly the ones of a whole-file decode.
//
// fwdd's own messages come from the same code either way. Each block is
// scanned on its own for key lines, and its problems are stored with lines
// relative to the block and moved to the block's line in the file when used,
// as is Forward.Line, so a block that moved keeps its cached result. Checks
// across forwards (unique names, overlaps, element budget) always run on the
// full list.

// Parser parses successive versions of a configuration file, decoding again
// only the [[forward]] blocks whose text changed since the previous call. It
// keeps the latest file and the results of its blocks only: about the file's
// size plus 300 bytes per forward. The zero Parser is ready to use; a Parser
// is safe for concurrent use (calls are serialized).
//
// Results are the same as Parse's, error messages included. The Forwards of
// successive Configs share the backing arrays of Protos and Sources where a
// forward did not change; like the rest of a Config, they must not be
// modified.
type Parser struct {
	// CacheLimit is the most [[forward]] blocks the Parser remembers
	// (0: no limit). A file with more is parsed afresh each time and
	// nothing of it is kept: memory is then the Config's alone.
	CacheLimit int

	mu      sync.Mutex
	noCache bool // Parse's throwaway Parser: remember nothing
	gen     uint64
	seed    maphash.Seed
	blocks  map[uint64]*blockResult // by the hash of the block's text; see cached
	pre     *preambleResult
	last    *splitFile // the latest file, when it could be split
	// For tests: why the latest parse decoded the whole file ("" when it
	// went block by block), and how many blocks it decoded.
	lastWhole   string
	lastDecoded int
}

// Parse decodes and validates a configuration file like the package-level
// Parse, reusing what it can from earlier calls.
func (p *Parser) Parse(path string, data []byte) (*Config, error) {
	return p.parse(path, string(data))
}

// Load is the package-level Load through p: the same checks on the file,
// then p.Parse.
func (p *Parser) Load(path string) (*Config, error) {
	data, err := readConfig(path, 0)
	if err != nil {
		return nil, err
	}
	return p.Parse(path, data)
}

// blockResult is one [[forward]] block, decoded and validated on its own.
// Lines are relative to the block: its header is line 1.
type blockResult struct {
	text string // the block, within the latest file it was in

	fwd      Forward
	nameLine int        // line of the name key (the header's when there is none)
	problems []*Problem // Path unset
	gen      uint64     // last parse that used the block

	// whole means the block cannot be decoded on its own (or must not be):
	// the file has to be decoded whole. Nothing else is set.
	whole bool
	valid bool // parseForward found nothing wrong
	// indexed means the forward has no usable name, so its problems say
	// "forward #N" and must be renumbered with the block's index.
	indexed bool
}

// preambleResult is the text before the first [[forward]], decoded and
// validated on its own. Its lines are the file's.
type preambleResult struct {
	text      string
	whole     bool // as in blockResult
	daemon    Daemon
	sysctl    Sysctl
	conntrack Conntrack
	problems  []*Problem // Path unset
}

// block is one [[forward]] block of a file.
type block struct {
	start, end int // byte offsets
	line       int // line of the header
}

// splitForwards finds the [[forward]] blocks of text. It returns the offset
// where the first block starts (len(text) when there is none) and false when
// a header other than [[forward]] follows the first [[forward]].
func splitForwards(text string) (preEnd int, blocks []block, ok bool) {
	preEnd = len(text)
	blocks = make([]block, 0, strings.Count(text, "[[forward]]"))
	sc := lineScanner{text: text}
	for {
		kind, rest, more := sc.scan()
		if !more {
			break
		}
		if kind != lineHeader {
			continue
		}
		if !isForwardHeader(rest) {
			if len(blocks) > 0 {
				return 0, nil, false
			}
			continue
		}
		if len(blocks) == 0 {
			preEnd = sc.start
		} else {
			blocks[len(blocks)-1].end = sc.start
		}
		blocks = append(blocks, block{start: sc.start, line: sc.line})
	}
	if n := len(blocks); n > 0 {
		blocks[n-1].end = len(text)
	}
	return preEnd, blocks, true
}

// isForwardHeader reports whether a header line (from its '[') is [[forward]].
func isForwardHeader(s string) bool {
	if strings.HasPrefix(s, "[[forward]]") {
		return true
	}
	if !strings.HasPrefix(s, "[[") {
		return false
	}
	name := headerName(s, true)
	return len(name) == 1 && name[0] == "forward"
}

// splitFile is a file split into blocks, with the results of its blocks.
type splitFile struct {
	text    string
	preEnd  int
	blocks  []block
	results []*blockResult // nil where not decoded
}

// splitAgain splits text like splitForwards, reading only what changed
// since old: the blocks before the first changed byte are kept, and scanning
// stops at the first [[forward]] header in the unchanged tail that was a
// block's header in old, since from there on the scan would repeat old's.
// known holds old's result for each block whose text is unchanged.
func splitAgain(old *splitFile, text string) (preEnd int, blocks []block, known []*blockResult, ok bool) {
	n := min(len(old.text), len(text))
	same := commonPrefix(old.text[:n], text[:n])
	tail := commonSuffix(old.text[same:], text[same:]) // both unchanged from len-tail on
	delta := len(text) - len(old.text)

	// The block holding the first change is read again from its header on
	// (the scanner starts there afresh, as it did before); the block before
	// stays open, since that header may no longer be one.
	r := sort.Search(len(old.blocks), func(i int) bool { return old.blocks[i].start > same }) - 1
	sc := lineScanner{text: text}
	preEnd = len(text)
	blocks = make([]block, 0, len(old.blocks)+1)
	known = make([]*blockResult, 0, len(old.blocks)+1)
	if r >= 0 {
		sc.next, sc.line = old.blocks[r].start, old.blocks[r].line-1
		blocks = append(blocks, old.blocks[:r]...)
		known = append(known, old.results[:r]...)
		if r > 0 {
			preEnd = old.preEnd
		}
	}
	open := len(blocks) - 1 // the block before the first one read again
	synced := false
	for !synced {
		kind, rest, more := sc.scan()
		if !more {
			break
		}
		if kind != lineHeader {
			continue
		}
		if !isForwardHeader(rest) {
			if len(blocks) > 0 {
				return 0, nil, nil, false
			}
			continue
		}
		if len(blocks) == 0 {
			preEnd = sc.start
		} else {
			blocks[len(blocks)-1].end = sc.start
		}
		if sc.start >= len(text)-tail {
			j, found := sort.Find(len(old.blocks), func(i int) int { return sc.start - delta - old.blocks[i].start })
			if found {
				lines := sc.line - old.blocks[j].line
				for _, b := range old.blocks[j:] {
					blocks = append(blocks, block{start: b.start + delta, end: b.end + delta, line: b.line + lines})
				}
				known = append(known, old.results[j:]...)
				synced = true
				continue
			}
		}
		blocks = append(blocks, block{start: sc.start, line: sc.line})
		known = append(known, nil)
	}
	if k := len(blocks); k > 0 && !synced {
		blocks[k-1].end = len(text)
	}
	if open >= 0 && blocks[open].end != old.blocks[open].end {
		known[open] = nil
	}
	return preEnd, blocks, known, true
}

// commonPrefix returns the length of the common prefix of a and b.
func commonPrefix(a, b string) int {
	n := min(len(a), len(b))
	i := 0
	for step := 4096; step >= 1; step /= 8 {
		for i+step <= n && a[i:i+step] == b[i:i+step] {
			i += step
		}
	}
	return i
}

// commonSuffix returns the length of the common suffix of a and b.
func commonSuffix(a, b string) int {
	n := min(len(a), len(b))
	i := 0
	for step := 4096; step >= 1; step /= 8 {
		for i+step <= n && a[len(a)-i-step:len(a)-i] == b[len(b)-i-step:len(b)-i] {
			i += step
		}
	}
	return i
}

func (p *Parser) parse(path, text string) (*Config, error) {
	p.mu.Lock()
	defer p.mu.Unlock()

	var (
		preEnd int
		blocks []block
		known  []*blockResult
		ok     bool
	)
	if p.last != nil {
		preEnd, blocks, known, ok = splitAgain(p.last, text)
	} else {
		preEnd, blocks, ok = splitForwards(text)
	}
	p.last = nil
	if !ok {
		// Nothing of this file is used: forget the previous one.
		p.blocks, p.pre = nil, nil
		p.lastWhole, p.lastDecoded = "a header other than [[forward]] after the first [[forward]]", 0
		return parseWhole(path, text)
	}

	results := make([]*blockResult, len(blocks))
	var miss []int
	for i, b := range blocks {
		var r *blockResult
		if known != nil {
			r = known[i]
		}
		if r == nil {
			r = p.cached(text[b.start:b.end])
		}
		if r == nil {
			miss = append(miss, i)
		}
		results[i] = r
	}
	pre := p.pre
	if pre != nil && pre.text != text[:preEnd] {
		pre = nil
	}
	pre = decodeMissing(text, preEnd, pre, blocks, miss, results)
	p.lastDecoded = len(miss)
	if !p.noCache && (p.CacheLimit == 0 || len(blocks) <= p.CacheLimit) {
		p.remember(text, preEnd, pre, blocks, results)
	} else {
		p.blocks, p.pre, p.last = nil, nil, nil
	}

	switch {
	case pre.whole:
		p.lastWhole = "the preamble does not decode on its own or defines forward"
		return parseWhole(path, text)
	case slices.ContainsFunc(results, func(r *blockResult) bool { return r == nil || r.whole }):
		p.lastWhole = "a [[forward]] block does not decode on its own as one forward"
		return parseWhole(path, text)
	}
	p.lastWhole = ""
	return assemble(path, pre, blocks, results)
}

// cached returns the result for a block's text, or nil.
func (p *Parser) cached(text string) *blockResult {
	if p.blocks == nil {
		return nil
	}
	if r := p.blocks[maphash.String(p.seed, text)]; r != nil && r.text == text {
		return r
	}
	return nil
}

// remember keeps the results of the latest file, and only those. Each
// result's text is made to point into the latest file, so that no earlier
// file stays in memory for it.
func (p *Parser) remember(text string, preEnd int, pre *preambleResult, blocks []block, results []*blockResult) {
	if p.blocks == nil {
		p.blocks = make(map[uint64]*blockResult, len(blocks))
		p.seed = maphash.MakeSeed()
	}
	p.gen++
	for i, r := range results {
		if r == nil {
			continue // not decoded: the preamble or another block made the file whole
		}
		r.text = text[blocks[i].start:blocks[i].end]
		r.gen = p.gen
		h := maphash.String(p.seed, r.text)
		if prev := p.blocks[h]; prev != r {
			if prev != nil && prev.gen == p.gen && prev.text == r.text {
				results[i] = prev // the same text twice: keep one
				continue
			}
			p.blocks[h] = r
		}
	}
	for h, r := range p.blocks {
		if r.gen != p.gen {
			delete(p.blocks, h)
		}
	}
	pre.text = text[:preEnd]
	p.pre = pre
	p.last = &splitFile{text: text, preEnd: preEnd, blocks: blocks, results: results}
}

// chunkSize is how many consecutive blocks go to one toml.Decode call.
// Each call has a fixed cost (its lexer, maps, copies of the input, all
// garbage) that is a good part of decoding one small block.
const chunkSize = 16

// decodeMissing decodes the blocks listed in miss (in file order) into
// results, on up to GOMAXPROCS goroutines, and the preamble if pre is nil;
// it returns the preamble. Once the preamble or a block turns out to need the
// whole file, the remaining blocks are left nil.
func decodeMissing(text string, preEnd int, pre *preambleResult, blocks []block, miss []int, results []*blockResult) *preambleResult {
	if pre == nil {
		pre = decodePreamble(text[:preEnd])
	}
	if pre.whole || len(miss) == 0 {
		return pre
	}
	blockText := func(i int) string { return text[blocks[i].start:blocks[i].end] }

	// Blocks made of lines that stand alone: decode each distinct value once.
	simple := make([]*simpleBlock, len(miss))
	parallel(len(miss), 64, new(atomic.Bool), func(lo, hi int) {
		for j := lo; j < hi; j++ {
			simple[j] = readSimple(blockText(miss[j]))
		}
	})
	ids := make(map[string]int)
	var values []string
	for _, s := range simple {
		if s == nil {
			continue
		}
		for k, v := range s.vals[:s.n] {
			// Names are unique (or the file is wrong): not worth a lookup.
			id, ok := 0, false
			if s.keys[k] != "name" {
				id, ok = ids[v]
			}
			if !ok {
				id = len(values)
				if s.keys[k] != "name" {
					ids[v] = id
				}
				values = append(values, v)
			}
			s.ids[k] = id
		}
	}
	decoded := make([]any, len(values))
	bad := make([]bool, len(values))
	parallel(len(values), valueBatch, new(atomic.Bool), func(lo, hi int) {
		decodeValues(values[lo:hi], decoded[lo:hi], bad[lo:hi])
	})
	var rest []int // blocks to decode with BurntSushi
	for j, s := range simple {
		if s == nil || slices.ContainsFunc(s.ids[:s.n], func(id int) bool { return bad[id] }) {
			simple[j] = nil
			rest = append(rest, miss[j])
		}
	}
	parallel(len(miss), 64, new(atomic.Bool), func(lo, hi int) {
		for j := lo; j < hi; j++ {
			if s := simple[j]; s != nil {
				results[miss[j]] = s.result(decoded)
			}
		}
	})

	// The rest, in runs of up to chunkSize consecutive blocks.
	var chunks [][]int
	for lo := 0; lo < len(rest); {
		hi := lo + 1
		for hi < len(rest) && hi-lo < chunkSize && rest[hi] == rest[hi-1]+1 {
			hi++
		}
		chunks = append(chunks, rest[lo:hi])
		lo = hi
	}
	var stop atomic.Bool
	parallel(len(chunks), 1, &stop, func(c, _ int) {
		idx := chunks[c]
		if len(idx) > 1 {
			if rs := decodeChunk(text, blocks[idx[0]:idx[len(idx)-1]+1]); rs != nil {
				copy(results[idx[0]:], rs)
				return
			}
		}
		for _, i := range idx {
			r := decodeBlock(blockText(i))
			results[i] = r
			if r.whole {
				stop.Store(true)
				return
			}
		}
	})
	return pre
}

// decodePreamble decodes and validates the text before the first [[forward]].
func decodePreamble(text string) *preambleResult {
	r := &preambleResult{text: text}
	var raw rawFile
	md, err := toml.Decode(text, &raw)
	if err != nil || len(raw.Forward) > 0 {
		r.whole = true
		return r
	}
	for _, k := range md.Keys() {
		// BurntSushi matches struct fields case-insensitively.
		if strings.EqualFold(k[0], "forward") {
			r.whole = true
			return r
		}
	}
	pos := scanPositions(text)
	ps := &problems{}
	unknownKeys(ps, &md, pos, &raw)
	r.daemon = parseDaemon(ps, raw.Daemon, pos.section("daemon"))
	r.sysctl = parseSysctl(ps, raw.Sysctl, pos.section("sysctl"))
	r.conntrack = parseConntrack(ps, raw.Conntrack, pos.section("conntrack"))
	r.problems = ps.list
	return r
}

// decodeBlock decodes and validates one [[forward]] block on its own.
func decodeBlock(text string) *blockResult {
	var raw rawFile
	md, err := toml.Decode(text, &raw)
	if err != nil || len(raw.Forward) != 1 {
		return &blockResult{whole: true}
	}
	allowed := allowedKeys["forward"]
	plain := true // every key is forward or one of its allowed keys
	for _, k := range md.Keys() {
		if k[0] != "forward" {
			return &blockResult{whole: true}
		}
		if len(k) > 2 || len(k) == 2 && !slices.Contains(allowed, k[1]) {
			plain = false
		}
	}
	pos := scanPositions(text)
	if len(pos.forwards) != 1 || pos.forwards[0].header != 1 {
		return &blockResult{whole: true}
	}
	kl := pos.forwards[0]

	// In the whole file, an unknown key is reported for every forward the
	// scanner saw it in, and with no line when it saw it in none. Reporting a
	// block's own unknown keys is the same only when the scanner saw exactly
	// those keys, and no other key that is not allowed, in the block.
	var unknown []string
	if !plain {
		for _, k := range md.Undecoded() {
			if len(k) < 2 || slices.Contains(allowed, k[1]) || slices.Contains(unknown, k[1]) {
				continue
			}
			if _, seen := kl.keys[k[1]]; !seen {
				return &blockResult{whole: true}
			}
			unknown = append(unknown, k[1])
		}
	}
	n := 0
	for key := range kl.keys {
		if !slices.Contains(allowed, key) {
			n++
		}
	}
	if n != len(unknown) {
		return &blockResult{whole: true}
	}

	return validateBlock(&raw.Forward[0], kl, unknown)
}

// validateBlock validates the forward of a block whose key lines are kl and
// whose unknown keys are unknown.
func validateBlock(raw *rawForward, kl *keyLines, unknown []string) *blockResult {
	ps := &problems{}
	name, _ := raw.Name.(string)
	for _, key := range unknown {
		where := "forward #1" // as in forwardWhere and parseForward
		if name != "" {
			where = fmt.Sprintf("forward %q", name)
		}
		ps.add(kl.keys[key], where, "", "unknown key %q; allowed: %s", key, strings.Join(allowedKeys["forward"], ", "))
	}
	before := len(ps.list)
	r := &blockResult{
		fwd:      parseForward(ps, 0, raw, kl),
		nameLine: kl.line("name"),
		indexed:  name == "",
	}
	r.valid = len(ps.list) == before
	r.problems = ps.list
	return r
}

// decodeChunk decodes consecutive blocks with one toml.Decode call. The
// results are cached by each block's own text, so they must be exactly what
// decoding each block alone gives; decodeChunk returns nil unless it can tell
// they are: the text decodes to one forward per block, every key is one of
// the allowed keys of a forward (so none is unknown), and the keys of each
// forward, in order, are the keys the scanner found in its block, in order.
// Otherwise the blocks are decoded one by one, which sorts out the rest.
func decodeChunk(text string, bs []block) []*blockResult {
	var raw rawFile
	md, err := toml.Decode(text[bs[0].start:bs[len(bs)-1].end], &raw)
	if err != nil || len(raw.Forward) != len(bs) {
		return nil
	}
	allowed := allowedKeys["forward"]
	keys := md.Keys()
	out := make([]*blockResult, len(bs))
	for i, b := range bs {
		// keys holds ["forward"] for each header, then ["forward", key] for
		// each of its keys.
		if len(keys) == 0 || len(keys[0]) != 1 || keys[0][0] != "forward" {
			return nil
		}
		n := 1
		for n < len(keys) && len(keys[n]) != 1 {
			n++
		}
		own := keys[1:n]
		keys = keys[n:]

		pos := scanPositions(text[b.start:b.end])
		if len(pos.forwards) != 1 || pos.forwards[0].header != 1 {
			return nil
		}
		kl := pos.forwards[0]
		if len(kl.keys) != len(own) {
			return nil
		}
		last := 0
		for _, k := range own {
			if len(k) != 2 || k[0] != "forward" || !slices.Contains(allowed, k[1]) {
				return nil
			}
			line, seen := kl.keys[k[1]]
			if !seen || line <= last {
				return nil
			}
			last = line
		}
		out[i] = validateBlock(&raw.Forward[i], kl, nil)
	}
	if len(keys) != 0 {
		return nil
	}
	return out
}

// assemble puts the decoded pieces of a file together and runs the checks
// across forwards.
func assemble(path string, pre *preambleResult, blocks []block, results []*blockResult) (*Config, error) {
	name := messageName(path)
	ps := &problems{path: name}
	for _, pr := range pre.problems {
		q := *pr
		q.Path = name
		ps.list = append(ps.list, &q)
	}
	c := &Config{Path: path, Daemon: pre.daemon, Sysctl: pre.sysctl, Conntrack: pre.conntrack}
	n := len(results)
	fwds := make([]Forward, n)
	valid := make([]bool, n)
	nameLines := make([]int, n)
	for i, r := range results {
		off := blocks[i].line - 1
		fwds[i] = r.fwd
		fwds[i].Line += off
		valid[i] = r.valid
		nameLines[i] = r.nameLine + off
		for _, pr := range r.problems {
			q := *pr
			q.Path = name
			if q.Line > 0 {
				q.Line += off
			}
			if r.indexed {
				q.Where = fmt.Sprintf("forward #%d", i+1)
			}
			ps.list = append(ps.list, &q)
		}
	}
	checkNames(ps, fwds, nameLines)
	checkOverlaps(ps, fwds, valid)
	checkBudget(ps, fwds, valid)
	if err := ps.err(); err != nil {
		return nil, err
	}
	if n > 0 {
		c.Forwards = fwds
	}
	return c, nil
}
