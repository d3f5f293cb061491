package pbxtest

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// The PBX-side settings a README gives are loaded into the real PBX by
// the tests, so that a typo in the docs fails CI. A snippet is a fenced
// code block right after a marker line:
//
//	<!-- pbx-config: asterisk pjsip.conf -->
//	<!-- pbx-config: freeswitch autoload_configs/acl.conf.xml in network-lists -->
//	<!-- pbx-config: freeswitch dialplan/public/00_lamplighter.xml mode=dedicated -->
//
// (mode= names the set a snippet belongs to, for a README that shows
// settings for two ways of running; a test takes one set.)
// An Asterisk snippet is merged into the named file section by section:
// the keys of a section that exists (same header line) are added at its
// end, so that they win; a new section is appended. A FreeSWITCH snippet
// goes before the closing tag of the element named after "in", or else is
// the whole file (replacing the template's).

// Snippet is one PBX setting from a README.
type Snippet struct {
	PBX    string // asterisk or freeswitch
	File   string // the config file, relative to the config folder
	Inside string // FreeSWITCH: the element it goes into ("" for a file of its own)
	Mode   string // the set it belongs to ("" for any)
	Text   string
	Line   int // where the code block starts in the README
}

// ReadSnippets returns the marked snippets of a Markdown file, for pbx
// (asterisk or freeswitch).
func ReadSnippets(path, pbx string) ([]Snippet, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Snippet
	var cur *Snippet
	inBlock := false
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n++
		line := sc.Text()
		switch {
		case inBlock && strings.HasPrefix(strings.TrimSpace(line), "```"):
			inBlock = false
			if cur != nil && cur.PBX == pbx {
				out = append(out, *cur)
			}
			cur = nil
		case inBlock:
			if cur != nil {
				cur.Text += line + "\n"
			}
		case strings.HasPrefix(strings.TrimSpace(line), "```"):
			inBlock = true
			if cur != nil {
				cur.Line = n
			}
		case strings.HasPrefix(strings.TrimSpace(line), "<!-- pbx-config:"):
			spec := strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(line), "<!-- pbx-config:"), "-->")
			var f []string
			var mode string
			for _, w := range strings.Fields(spec) {
				if m, ok := strings.CutPrefix(w, "mode="); ok {
					mode = m
				} else {
					f = append(f, w)
				}
			}
			if len(f) < 2 {
				return nil, fmt.Errorf("%s:%d: a pbx-config marker names the PBX and the file", path, n)
			}
			s := Snippet{PBX: f[0], File: f[1], Mode: mode}
			if len(f) == 4 && f[2] == "in" {
				s.Inside = f[3]
			}
			cur = &s
		case strings.TrimSpace(line) != "":
			cur = nil // a marker is right before its block
		}
	}
	return out, sc.Err()
}

// Only returns the snippets of one mode, and those of none.
func Only(snippets []Snippet, mode string) []Snippet {
	var out []Snippet
	for _, s := range snippets {
		if s.Mode == "" || s.Mode == mode {
			out = append(out, s)
		}
	}
	return out
}

// Apply adds snippets to c (see the top of this file), replacing the
// README's example addresses by the test's (old → new pairs).
func (c *Config) Apply(snippets []Snippet, replace ...string) {
	r := strings.NewReplacer(replace...)
	for _, s := range snippets {
		text := r.Replace(s.Text)
		switch {
		case s.PBX == "asterisk":
			c.merges = append(c.merges, merge{file: s.File, text: text})
		case s.Inside != "":
			c.Edits = append(c.Edits, Edit{File: s.File, Old: "</" + s.Inside + ">", New: text + "</" + s.Inside + ">"})
		default:
			if c.files == nil {
				c.files = map[string]string{}
			}
			c.files[s.File] = text
		}
	}
}

// merge is an Asterisk snippet to merge into a config file.
type merge struct {
	file, text string
}

// mergeINI merges an Asterisk config snippet into a file's text: keys of
// an existing section go at its end, new sections at the end of the file.
func mergeINI(file, snippet string) string {
	type section struct {
		header string
		lines  []string
	}
	var secs []section
	for _, line := range strings.Split(snippet, "\n") {
		t := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(t, "["):
			secs = append(secs, section{header: t})
		case t == "" || strings.HasPrefix(t, ";"):
			if len(secs) > 0 {
				secs[len(secs)-1].lines = append(secs[len(secs)-1].lines, line)
			}
		case len(secs) > 0:
			secs[len(secs)-1].lines = append(secs[len(secs)-1].lines, line)
		}
	}
	lines := strings.Split(file, "\n")
	var added []string // new sections, kept apart so that a second
	// section of the same name in the snippet (an endpoint and its
	// identify) is new too
	for _, sec := range secs {
		start := -1
		for i, l := range lines {
			if headerOf(l) == headerOf(sec.header) {
				start = i
				break
			}
		}
		if start < 0 {
			added = append(added, "", sec.header)
			added = append(added, sec.lines...)
			continue
		}
		end := len(lines)
		for i := start + 1; i < len(lines); i++ {
			if strings.HasPrefix(strings.TrimSpace(lines[i]), "[") {
				end = i
				break
			}
		}
		merged := append([]string{}, lines[:end]...)
		merged = append(merged, sec.lines...)
		lines = append(merged, lines[end:]...)
	}
	return strings.Join(append(lines, added...), "\n")
}

// headerOf is a section header without its comment.
func headerOf(line string) string {
	t := strings.TrimSpace(line)
	if i := strings.Index(t, ";"); i >= 0 {
		t = strings.TrimSpace(t[:i])
	}
	return t
}
