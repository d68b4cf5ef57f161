package iptables

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// The operations of an iptables-restore input that this package
// understands: the subset it writes, plus what iptables-save prints.
const (
	opChain  = ':' // ":NAME POLICY [p:b]": create (or flush, with --noflush) a chain
	opAppend = 'A'
	opInsert = 'I'
	opDelete = 'D'
	opFlush  = 'F'
	opNew    = 'N'
	opDelX   = 'X'
)

// op is one line of a restore input.
type op struct {
	line   int
	kind   byte
	chain  string
	policy string // for opChain: "-" or a built-in chain's policy
	pos    int    // for opInsert: 1-based position
	rule   []string
}

// tableBlock is one "*table ... COMMIT" section.
type tableBlock struct {
	name string
	line int
	ops  []op
}

// parseRestore splits iptables-restore (or iptables-save) text into its
// table sections. Comments and blank lines are skipped; anything else
// that is not a table header, a chain line, a rule command or COMMIT is an
// error, reported with its line number.
func parseRestore(data []byte) ([]tableBlock, error) {
	var blocks []tableBlock
	var cur *tableBlock
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if line[0] == '*' {
			if cur != nil {
				return nil, fmt.Errorf("line %d: table %q starts before table %q is committed", n, line[1:], cur.name)
			}
			blocks = append(blocks, tableBlock{name: line[1:], line: n})
			cur = &blocks[len(blocks)-1]
			continue
		}
		if cur == nil {
			return nil, fmt.Errorf("line %d: %q outside a table", n, line)
		}
		if line == "COMMIT" {
			cur = nil
			continue
		}
		o, err := parseOp(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		o.line = n
		cur.ops = append(cur.ops, o)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read restore input: %w", err)
	}
	if cur != nil {
		return nil, fmt.Errorf("table %q (line %d) is not committed", cur.name, cur.line)
	}
	return blocks, nil
}

func parseOp(line string) (op, error) {
	if line[0] == ':' {
		f := strings.Fields(line[1:])
		if len(f) < 2 {
			return op{}, fmt.Errorf("bad chain line %q", line)
		}
		return op{kind: opChain, chain: f[0], policy: f[1]}, nil
	}
	words, err := splitWords(line)
	if err != nil {
		return op{}, err
	}
	if len(words) < 2 || len(words[0]) != 2 || words[0][0] != '-' {
		return op{}, fmt.Errorf("unsupported line %q", line)
	}
	o := op{kind: words[0][1], chain: words[1], rule: words[2:]}
	switch o.kind {
	case opAppend, opDelete:
	case opInsert:
		o.pos = 1
		if len(o.rule) > 0 {
			if p, err := strconv.Atoi(o.rule[0]); err == nil {
				o.pos, o.rule = p, o.rule[1:]
			}
		}
	case opFlush, opNew, opDelX:
		if len(o.rule) != 0 {
			return op{}, fmt.Errorf("unexpected arguments in %q", line)
		}
	default:
		return op{}, fmt.Errorf("unsupported command %q", words[0])
	}
	return o, nil
}

// splitWords splits a rule line into words the way iptables-restore does:
// on blanks, with double quotes grouping a word and a backslash escaping
// the next character inside quotes.
func splitWords(line string) ([]string, error) {
	words := make([]string, 0, 16)
	var cur strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quoted && c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			quoted = !quoted
			inWord = true
		case !quoted && (c == ' ' || c == '\t'):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if quoted {
		return nil, fmt.Errorf("unterminated quote in %q", line)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// joinWords is the inverse of splitWords, quoting as iptables-save does.
func joinWords(words []string) string {
	var b strings.Builder
	for i, w := range words {
		if i > 0 {
			b.WriteByte(' ')
		}
		if w == "" || strings.ContainsAny(w, " \t\"\\") {
			b.WriteString(strconv.Quote(w))
			continue
		}
		b.WriteString(w)
	}
	return b.String()
}
