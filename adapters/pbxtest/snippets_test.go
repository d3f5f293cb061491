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

func TestFreeSWITCHSnippetsGoIntoTheirFiles(t *testing.T) {
	// A snippet with "in" goes inside that element of the template's
	// file; one without is the whole file, replacing the template's.
	shared := t.TempDir()
	conf := filepath.Join(shared, "freeswitch", "conf", "autoload_configs")
	os.MkdirAll(conf, 0o755)
	os.WriteFile(filepath.Join(conf, "event_socket.conf.xml"), []byte("<configuration name=\"event_socket.conf\"><settings><param name=\"password\" value=\"ClueCon\"/></settings></configuration>\n"), 0o644)
	os.WriteFile(filepath.Join(conf, "acl.conf.xml"), []byte("<configuration><network-lists>\n</network-lists></configuration>\n"), 0o644)
	md := filepath.Join(t.TempDir(), "README.md")
	os.WriteFile(md, []byte("<!-- pbx-config: freeswitch autoload_configs/event_socket.conf.xml -->\n```xml\n<configuration name=\"event_socket.conf\"><settings><param name=\"listen-ip\" value=\"10.0.0.6\"/></settings></configuration>\n```\n\n"+
		"<!-- pbx-config: freeswitch autoload_configs/acl.conf.xml in network-lists -->\n```xml\n<list name=\"ll\"/>\n```\n"), 0o644)
	snips, err := ReadSnippets(md, "freeswitch")
	if err != nil || len(snips) != 2 {
		t.Fatalf("snippets: %+v %v", snips, err)
	}
	var c Config
	c.Apply(snips, "10.0.0.6", "127.0.0.1")
	dir := t.TempDir()
	if err := kit(shared, "freeswitch", "conf", dir, c); err != nil {
		t.Fatal(err)
	}
	es, _ := os.ReadFile(filepath.Join(dir, "conf", "autoload_configs", "event_socket.conf.xml"))
	if string(es) != "<configuration name=\"event_socket.conf\"><settings><param name=\"listen-ip\" value=\"127.0.0.1\"/></settings></configuration>\n" {
		t.Errorf("event_socket.conf.xml:\n%s", es)
	}
	acl, _ := os.ReadFile(filepath.Join(dir, "conf", "autoload_configs", "acl.conf.xml"))
	if string(acl) != "<configuration><network-lists>\n<list name=\"ll\"/>\n</network-lists></configuration>\n" {
		t.Errorf("acl.conf.xml:\n%s", acl)
	}
}
