package iptables

// restoreText collects a restore input the way iptables-restore wants it:
// per table, every chain line first (which creates or, with --noflush,
// flushes the chain), then the rules, then the deletions.
type restoreText struct {
	natChains, natRules, natDelete       chunkBuf
	filterChains, filterRules, filterDel chunkBuf
	rules                                int // -A lines written
	chains                               int // chain lines written
	deleted                              int // -X lines written
}

func (t *restoreText) natChain(name string) { t.chainLine(&t.natChains, name) }

func (t *restoreText) filterChain(name string) { t.chainLine(&t.filterChains, name) }

func (t *restoreText) chainLine(b *chunkBuf, name string) {
	b.writeByte(':')
	b.writeString(name)
	b.writeString(" - [0:0]\n")
	t.chains++
}

// deleteChain flushes and deletes a chain proxyd no longer wants; the
// chain line flushes it, so the -X after every rule finds it empty.
func (t *restoreText) deleteChain(table, name string) {
	del := &t.natDelete
	if table == tableFilter {
		t.filterChain(name)
		del = &t.filterDel
	} else {
		t.natChain(name)
	}
	del.writeString("-X ")
	del.writeString(name)
	del.writeByte('\n')
	t.chains--
	t.deleted++
}

// empty reports whether nothing would be written.
func (t *restoreText) empty() bool { return t.chains == 0 && t.deleted == 0 }

// bytes is the restore input; a table with nothing to do is left out.
func (t *restoreText) bytes() []byte {
	out := make([]byte, 0, t.natChains.Len()+t.natRules.Len()+t.natDelete.Len()+
		t.filterChains.Len()+t.filterRules.Len()+t.filterDel.Len()+32)
	out = appendTable(out, "filter", &t.filterChains, &t.filterRules, &t.filterDel)
	out = appendTable(out, "nat", &t.natChains, &t.natRules, &t.natDelete)
	return out
}

// appendTable appends one table's section (chain lines, rules, deletes,
// COMMIT) to out, unless it declares no chain.
func appendTable(out []byte, name string, chains, rules, deletes *chunkBuf) []byte {
	if chains.Len() == 0 {
		return out
	}
	out = append(out, "*"+name+"\n"...)
	out = chains.appendTo(out)
	out = rules.appendTo(out)
	out = deletes.appendTo(out)
	return append(out, "COMMIT\n"...)
}

// rule appends "-A chain words..." to b.
func (t *restoreText) rule(b *chunkBuf, chain string, words ...string) {
	b.writeString("-A ")
	b.writeString(chain)
	for _, w := range words {
		b.writeByte(' ')
		b.writeString(w)
	}
	b.writeByte('\n')
	t.rules++
}

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
