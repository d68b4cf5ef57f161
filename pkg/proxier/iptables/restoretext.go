package iptables

import "hash/maphash"

// restoreText collects a restore input the way iptables-restore wants it:
// per table, every chain line first (which creates or, with --noflush,
// flushes the chain), then the rules, then the deletions; the base and
// shared chains come before the service ports' own, so that a full write
// reads from the dispatch down.
type restoreText struct {
	tables   [2]tableText // tableFilter, tableNAT: the order they are written in
	chains   int          // chain lines written for chains that stay
	deleted  int          // -X lines written
	inserted int          // -I lines written
}

type tableText struct {
	chains, ownChains, rules, own, deletes chunkBuf
}

// tableIndex is where a table's text goes in restoreText.tables.
func tableIndex(table string) int {
	if table == tableFilter {
		return 0
	}
	return 1
}

var tableNames = [2]string{tableFilter, tableNAT}

// chain writes a whole chain: its chain line and its rules (restore lines
// "-A name ..."), into the base and dispatch rules, or with own into the
// service ports' rules.
func (t *restoreText) chain(table, name string, rules []byte, own bool) {
	tt := &t.tables[tableIndex(table)]
	if own {
		chainLine(&tt.ownChains, name)
		tt.own.write(rules)
	} else {
		chainLine(&tt.chains, name)
		tt.rules.write(rules)
	}
	t.chains++
}

// open writes the chain line of a base or shared chain and returns the
// buffer its rules go to.
func (t *restoreText) open(table, name string) *chunkBuf {
	tt := &t.tables[tableIndex(table)]
	chainLine(&tt.chains, name)
	t.chains++
	return &tt.rules
}

func chainLine(b *chunkBuf, name string) {
	b.writeByte(':')
	b.writeString(name)
	b.writeString(" - [0:0]\n")
}

// deleteChain flushes and deletes a chain proxyd no longer wants; the
// chain line flushes it, so the -X after every rule finds it empty.
func (t *restoreText) deleteChain(table, name string) {
	tt := &t.tables[tableIndex(table)]
	chainLine(&tt.ownChains, name)
	tt.deletes.writeString("-X ")
	tt.deletes.writeString(name)
	tt.deletes.writeByte('\n')
	t.deleted++
}

// insertFirst writes "-I chain 1 spec": a rule at the top of a built-in
// chain, after every chain line of the table, so that its target exists.
// Only a full write uses it, which declares chains in both tables (a
// section without a chain line is left out).
func (t *restoreText) insertFirst(table, chain string, spec []string) {
	tt := &t.tables[tableIndex(table)]
	tt.rules.writeString("-I " + chain + " 1 " + joinWords(spec) + "\n")
	t.inserted++
}

// sections is how many table sections bytes writes (each one commit).
func (t *restoreText) sections() int {
	n := 0
	for i := range t.tables {
		if t.tables[i].chains.Len()+t.tables[i].ownChains.Len() > 0 {
			n++
		}
	}
	return n
}

// empty reports whether nothing would be written.
func (t *restoreText) empty() bool { return t.chains == 0 && t.deleted == 0 }

// bytes is the restore input; a table with nothing to do is left out.
func (t *restoreText) bytes() []byte {
	n := 32
	for i := range t.tables {
		tt := &t.tables[i]
		n += tt.chains.Len() + tt.ownChains.Len() + tt.rules.Len() + tt.own.Len() + tt.deletes.Len()
	}
	out := make([]byte, 0, n)
	for i := range t.tables {
		tt := &t.tables[i]
		if tt.chains.Len()+tt.ownChains.Len() == 0 {
			continue
		}
		out = append(out, "*"+tableNames[i]+"\n"...)
		out = tt.chains.appendTo(out)
		out = tt.ownChains.appendTo(out)
		out = tt.rules.appendTo(out)
		out = tt.own.appendTo(out)
		out = tt.deletes.appendTo(out)
		out = append(out, "COMMIT\n"...)
	}
	return out
}

// text is rendered rules, span after span: each span is the rules of one
// chain (or of one service port's part of a shared chain), as restore
// lines "-A chain words...".
type text struct {
	b     []byte
	spans []span
}

type span struct {
	chain      string
	start, end int
	rules      int
}

func (t *text) reset() {
	t.b = t.b[:0]
	t.spans = t.spans[:0]
}

// begin starts a span of rules of chain.
func (t *text) begin(chain string) {
	t.spans = append(t.spans, span{chain: chain, start: len(t.b), end: len(t.b)})
}

// rule appends "-A chain words..." to the current span.
func (t *text) rule(words ...string) {
	s := &t.spans[len(t.spans)-1]
	t.b = append(t.b, "-A "...)
	t.b = append(t.b, s.chain...)
	for _, w := range words {
		t.b = append(t.b, ' ')
		t.b = append(t.b, w...)
	}
	t.b = append(t.b, '\n')
	s.end = len(t.b)
	s.rules++
}

// bytes is a span's text.
func (t *text) bytes(s span) []byte { return t.b[s.start:s.end] }

// digestSeed keys the digests of written chains; they are compared only
// within this process.
var digestSeed = maphash.MakeSeed()

// digest identifies a chain's rendered text, so that what was written
// can be remembered in 8 bytes a chain and compared with a new rendering.
func digest(b []byte) uint64 { return maphash.Bytes(digestSeed, b) }

// chunkBuf is an append-only byte buffer made of fixed-size chunks, so
// that writing tens of megabytes never copies what was already written.
type chunkBuf struct {
	chunks [][]byte
	n      int
}

// Chunks start small, for the few lines of a partial write, and double up
// to maxChunk.
const (
	minChunk = 1 << 10
	maxChunk = 64 << 10
)

// last returns the chunk to append to, starting a new one when full.
func (c *chunkBuf) last() *[]byte {
	if len(c.chunks) == 0 {
		c.chunks = append(c.chunks, make([]byte, 0, minChunk))
	} else if l := c.chunks[len(c.chunks)-1]; len(l) == cap(l) {
		c.chunks = append(c.chunks, make([]byte, 0, min(2*cap(l), maxChunk)))
	}
	return &c.chunks[len(c.chunks)-1]
}

// write appends b.
func (c *chunkBuf) write(b []byte) {
	c.n += len(b)
	for len(b) > 0 {
		l := c.last()
		k := min(len(b), cap(*l)-len(*l))
		*l = append(*l, b[:k]...)
		b = b[k:]
	}
}

// writeString appends s.
func (c *chunkBuf) writeString(s string) {
	c.n += len(s)
	for len(s) > 0 {
		l := c.last()
		k := min(len(s), cap(*l)-len(*l))
		*l = append(*l, s[:k]...)
		s = s[k:]
	}
}

// writeByte appends b.
func (c *chunkBuf) writeByte(b byte) {
	l := c.last()
	*l = append(*l, b)
	c.n++
}

// Len is the number of bytes written.
func (c *chunkBuf) Len() int { return c.n }

func (c *chunkBuf) appendTo(out []byte) []byte {
	for _, ch := range c.chunks {
		out = append(out, ch...)
	}
	return out
}
