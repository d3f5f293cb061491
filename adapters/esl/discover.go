package esl

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/percipia/eslgo/command"

	"github.com/lamplighter/lamplighter/adapters"
)

var _ adapters.Discoverer = (*Adapter)(nil)

// Discover reads the switch's own directory, every user of every domain
// with its caller id (`list_users`), on a connection of its own: one
// command, whatever the event session is doing.
func (a *Adapter) Discover(ctx context.Context) ([]adapters.DiscoveredUser, error) {
	body, err := a.oneCommand(ctx, "list_users", "")
	if err != nil {
		return nil, err
	}
	return parseUserList(a.conn.Name, body)
}

// oneCommand runs one API command on an event-socket connection of its
// own and returns its answer.
func (a *Adapter) oneCommand(ctx context.Context, cmd, args string) ([]byte, error) {
	conn, r, err := a.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	conn.SetDeadline(time.Now().Add(a.cfg.CommandTimeout))
	if _, err := io.WriteString(conn, command.API{Command: cmd, Arguments: args}.BuildMessage()+"\n\n"); err != nil {
		return nil, fmt.Errorf("%s: %w", cmd, err)
	}
	for {
		f, err := readFrame(r)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", cmd, err)
		}
		if f.header.Get("Content-Type") != "api/response" {
			continue // an event or notice before the answer
		}
		if bytes.HasPrefix(f.body, []byte("-ERR")) {
			return nil, fmt.Errorf("%s: %s", cmd, strings.TrimSpace(string(f.body)))
		}
		return f.body, nil
	}
}

// parseUserList reads `list_users`: a header line naming the columns,
// then one line per user and group ("|" between fields), then "+OK". A
// user in several groups is listed once per group: here it is one user
// with every group. A row with no dialplan context (the domain's
// "default" entry) is no one to call, and is left out.
func parseUserList(pbx string, body []byte) ([]adapters.DiscoveredUser, error) {
	lines := strings.Split(strings.ReplaceAll(string(body), "\r\n", "\n"), "\n")
	col := map[string]int{}
	for i, name := range strings.Split(strings.TrimSpace(lines[0]), "|") {
		col[name] = i
	}
	if _, ok := col["userid"]; !ok {
		return nil, fmt.Errorf("list_users: no header line (%q)", lines[0])
	}
	for _, need := range []string{"userid", "context", "domain", "group", "effective_caller_id_name", "effective_caller_id_number"} {
		if _, ok := col[need]; !ok {
			return nil, fmt.Errorf("list_users: no %s column", need)
		}
	}
	var out []adapters.DiscoveredUser
	at := map[string]int{} // user@domain → index in out
	for _, line := range lines[1:] {
		line = strings.TrimSpace(line)
		if line == "" || line == "+OK" {
			continue
		}
		f := strings.Split(line, "|")
		if len(f) < len(col) {
			return nil, fmt.Errorf("list_users: a line of %d fields, want %d: %q", len(f), len(col), line)
		}
		id, domain, group := f[col["userid"]], f[col["domain"]], f[col["group"]]
		if id == "" || domain == "" || f[col["context"]] == "" {
			continue
		}
		key := id + "@" + domain
		if i, ok := at[key]; ok {
			if group != "" && !slices.Contains(out[i].Groups, group) {
				out[i].Groups = append(out[i].Groups, group)
			}
			continue
		}
		ext := f[col["effective_caller_id_number"]]
		if ext == "" {
			ext = id
		}
		u := adapters.DiscoveredUser{PBX: pbx, Domain: domain, Extension: ext,
			Name: f[col["effective_caller_id_name"]], Device: key, Context: f[col["context"]]}
		if group != "" {
			u.Groups = []string{group}
		}
		at[key] = len(out)
		out = append(out, u)
	}
	return out, nil
}

var _ adapters.PasswordReader = (*Adapter)(nil)

// SIPPasswords implements adapters.PasswordReader: each domain's part of
// the directory as FreeSWITCH has it loaded (`xml_locate directory domain
// name DOMAIN`, with $${} variables filled in), and each user's password
// param. A user with only an a1-hash has no password to give.
func (a *Adapter) SIPPasswords(ctx context.Context, users []adapters.DiscoveredUser) (map[string]adapters.SIPSecret, error) {
	domains := map[string]bool{}
	for _, u := range users {
		if !u.Resource && u.Domain != "" {
			domains[u.Domain] = true
		}
	}
	out := map[string]adapters.SIPSecret{}
	for domain := range domains {
		body, err := a.oneCommand(ctx, "xml_locate", "directory domain name "+domain)
		if err != nil {
			return nil, err
		}
		secrets, err := parseDomainSecrets(body)
		if err != nil {
			return nil, fmt.Errorf("xml_locate %s: %w", domain, err)
		}
		for id, pw := range secrets {
			out[id+"@"+domain] = adapters.SIPSecret{Username: id, Password: pw}
		}
	}
	return out, nil
}

// parseDomainSecrets reads the users' passwords from a domain's XML.
func parseDomainSecrets(body []byte) (map[string]string, error) {
	type user struct {
		ID     string `xml:"id,attr"`
		Type   string `xml:"type,attr"`
		Params []struct {
			Name  string `xml:"name,attr"`
			Value string `xml:"value,attr"`
		} `xml:"params>param"`
	}
	var d struct {
		XMLName xml.Name `xml:"domain"`
		Users   []user   `xml:"users>user"`
		Groups  []struct {
			Users []user `xml:"users>user"`
		} `xml:"groups>group"`
	}
	if err := xml.Unmarshal(body, &d); err != nil {
		return nil, err
	}
	all := d.Users
	for _, g := range d.Groups {
		all = append(all, g.Users...)
	}
	out := map[string]string{}
	for _, u := range all {
		if u.Type == "pointer" || u.ID == "" {
			continue // a group's reference to a user defined elsewhere
		}
		for _, p := range u.Params {
			if p.Name == "password" && p.Value != "" {
				out[u.ID] = p.Value
			}
		}
	}
	return out, nil
}
