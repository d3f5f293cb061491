package ari

import (
	"context"
	"net/url"
	"strings"
	"sync"

	"github.com/lamplighter/lamplighter/adapters"
)

var _ adapters.Discoverer = (*Adapter)(nil)

// Discover reads Asterisk's PJSIP endpoints (GET /endpoints/PJSIP) and,
// for each, its caller id and context from the configuration ARI shows
// (GET /asterisk/config/dynamic/res_pjsip/endpoint/<id>), which a
// read-only ARI user may read. ARI has no list of the dialplan's hints
// (that is AMI's ShowDialPlan, or the CLI): an endpoint's extension is
// its caller id's number, else its name. Asterisk has no domains: a
// tenant is declared in the YAML (by context or endpoint prefix).
func (a *Adapter) Discover(ctx context.Context) ([]adapters.DiscoveredUser, error) {
	var endpoints []struct {
		Technology string `json:"technology"`
		Resource   string `json:"resource"`
	}
	if err := a.get(ctx, "/endpoints/PJSIP", &endpoints); err != nil {
		return nil, err
	}
	out := make([]adapters.DiscoveredUser, len(endpoints))
	errs := make([]error, len(endpoints))
	// A few requests at a time: one per endpoint, thousands on a big PBX.
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, e := range endpoints {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			out[i], errs[i] = a.endpointUser(ctx, e.Resource)
		}()
	}
	wg.Wait()
	var users []adapters.DiscoveredUser
	for i, err := range errs {
		switch {
		case err == errNotFound:
			// Gone between the list and its read: not a user now.
		case err != nil:
			return nil, err
		default:
			users = append(users, out[i])
		}
	}
	return users, nil
}

// endpointUser reads one PJSIP endpoint's caller id and context.
func (a *Adapter) endpointUser(ctx context.Context, id string) (adapters.DiscoveredUser, error) {
	var fields []struct {
		Attribute string `json:"attribute"`
		Value     string `json:"value"`
	}
	if err := a.get(ctx, "/asterisk/config/dynamic/res_pjsip/endpoint/"+url.PathEscape(id), &fields); err != nil {
		return adapters.DiscoveredUser{}, err
	}
	u := adapters.DiscoveredUser{PBX: a.conn.Name, Extension: id, Device: "PJSIP/" + id}
	for _, f := range fields {
		switch f.Attribute {
		case "callerid":
			name, number := splitCallerID(f.Value)
			u.Name = name
			if number != "" {
				u.Extension = number
			}
		case "context":
			u.Context = f.Value
		}
	}
	return u, nil
}

// splitCallerID reads a caller id as Asterisk writes it: `"Name" <number>`,
// `Name <number>` or a bare number.
func splitCallerID(v string) (name, number string) {
	v = strings.TrimSpace(v)
	open, close := strings.LastIndexByte(v, '<'), strings.LastIndexByte(v, '>')
	if open < 0 || close < open {
		return "", v
	}
	name = strings.TrimSpace(v[:open])
	if len(name) >= 2 && name[0] == '"' && name[len(name)-1] == '"' {
		name = name[1 : len(name)-1]
	}
	return name, strings.TrimSpace(v[open+1 : close])
}
