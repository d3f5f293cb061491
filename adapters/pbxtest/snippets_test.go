package pbxtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSnippetsAreReadAndMerged(t *testing.T) {
	md := filepath.Join(t.TempDir(), "README.md")
	os.WriteFile(md, []byte("Intro\n\n<!-- pbx-config: asterisk pjsip.conf -->\n```ini\n[phone-aor](!)\nsupport_path = yes\n\n[ll]\ntype = endpoint\n\n[ll]\ntype = identify\nmatch = 10.0.0.9\n```\n\n"+
		"<!-- pbx-config: freeswitch autoload_configs/acl.conf.xml in network-lists -->\n```xml\n<list name=\"ll\"/>\n```\n\n```ini\n[not]\nmarked = 1\n```\n"), 0o644)
	ast, err := ReadSnippets(md, "asterisk")
	if err != nil || len(ast) != 1 || ast[0].File != "pjsip.conf" || !strings.Contains(ast[0].Text, "support_path") {
		t.Fatalf("asterisk snippets: %+v %v", ast, err)
	}
	fs, _ := ReadSnippets(md, "freeswitch")
	if len(fs) != 1 || fs[0].Inside != "network-lists" {
		t.Fatalf("freeswitch snippets: %+v", fs)
	}
	var c Config
	c.Apply(ast, "10.0.0.9", "127.0.0.2")
	got := mergeINI("[phone-aor](!)\ntype = aor\nmax_contacts = 5\n\n[100](phone-aor)\n", c.merges[0].text)
	want := "[phone-aor](!)\ntype = aor\nmax_contacts = 5\n\nsupport_path = yes\n\n[100](phone-aor)\n\n[ll]\ntype = endpoint\n\n[ll]\ntype = identify\nmatch = 127.0.0.2\n"
	squeeze := func(s string) string {
		var out []string
		for _, l := range strings.Split(s, "\n") {
			if strings.TrimSpace(l) != "" {
				out = append(out, l)
			}
		}
		return strings.Join(out, "\n")
	}
	if squeeze(got) != squeeze(want) {
		t.Errorf("merged:\n%s\nwant:\n%s", got, want)
	}
}
