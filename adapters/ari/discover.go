package ari

import (
	"context"
	"net/url"
	"slices"
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
	numbered := make([]bool, len(endpoints)) // the caller id gave a number
	auths := make([]string, len(endpoints))  // its auth object's name
	errs := make([]error, len(endpoints))
	// A few requests at a time: one per endpoint, thousands on a big PBX.
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, e := range endpoints {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			out[i], numbered[i], auths[i], errs[i] = a.endpointUser(ctx, e.Resource)
		}()
	}
	wg.Wait()
	var users []adapters.DiscoveredUser
	unnumbered := map[string]bool{} // devices whose extension is only the endpoint's name
	authOf := map[string]string{}
	for i, err := range errs {
		switch {
		case err == errNotFound:
			// Gone between the list and its read: not a user now.
		case err != nil:
			return nil, err
		default:
			users = append(users, out[i])
			if auths[i] != "" {
				authOf[out[i].Device] = auths[i]
			}
			if !numbered[i] {
				unnumbered[out[i].Device] = true
			}
		}
	}
	a.authsMu.Lock()
	a.auths = authOf
	a.authsMu.Unlock()
	if a.cfg.AMI == nil {
		return users, nil
	}
	hints, err := readHints(ctx, a.cfg.AMI, a.cfg.RequestTimeout)
	if err != nil {
		return nil, err
	}
	return a.withHints(users, unnumbered, hints), nil
}

// withHints adds what the dialplan's hints say to the endpoints found: a
// hint on one endpoint alone is another number of its user (or its only
// one, where the endpoint's caller id has none); any other hint (on
// Custom:, Queue: or parking devices, or on several devices) is a
// resource of its own, a feature key's lamp, whose state is its devices'.
func (a *Adapter) withHints(users []adapters.DiscoveredUser, unnumbered map[string]bool, hints []hint) []adapters.DiscoveredUser {
	byDevice := map[string]int{}
	for i, u := range users {
		byDevice[u.Device] = i
	}
	for _, h := range hints {
		if len(h.Devices) == 1 {
			if i, ok := byDevice[h.Devices[0]]; ok {
				u := &users[i]
				switch {
				case u.Extension == h.Exten || slices.Contains(u.More, h.Exten):
				case unnumbered[u.Device]:
					// The endpoint's name stood in for a number it did
					// not have: the hint's is the number.
					u.More = append(u.More, u.Extension)
					u.Extension = h.Exten
					unnumbered[u.Device] = false
				default:
					u.More = append(u.More, h.Exten)
				}
				continue
			}
		}
		r := adapters.DiscoveredUser{PBX: a.conn.Name, Extension: h.Exten, Name: resourceName(h), Device: h.Devices[0],
			Context: h.Context, Resource: true}
		if len(h.Devices) > 1 {
			r.OtherDevices = slices.Clone(h.Devices[1:])
		}
		users = append(users, r)
	}
	return users
}

// resourceName names a feature key's lamp after what it watches:
// "Custom:DND100" reads "DND100", several devices are joined by " & ".
func resourceName(h hint) string {
	names := make([]string, len(h.Devices))
	for i, d := range h.Devices {
		if _, after, ok := strings.Cut(d, ":"); ok && !strings.HasPrefix(d, "PJSIP/") {
			d = after
		}
		names[i] = d
	}
	return strings.Join(names, " & ")
}

// endpointUser reads one PJSIP endpoint's caller id, context and auth
// object; numbered says the caller id gave the extension (else it is the
// endpoint's name).
func (a *Adapter) endpointUser(ctx context.Context, id string) (u adapters.DiscoveredUser, numbered bool, auth string, err error) {
	var fields []struct {
		Attribute string `json:"attribute"`
		Value     string `json:"value"`
	}
	if err := a.get(ctx, "/asterisk/config/dynamic/res_pjsip/endpoint/"+url.PathEscape(id), &fields); err != nil {
		return u, false, "", err
	}
	u = adapters.DiscoveredUser{PBX: a.conn.Name, Extension: id, Device: "PJSIP/" + id}
	for _, f := range fields {
		switch f.Attribute {
		case "callerid":
			name, number := splitCallerID(f.Value)
			u.Name = name
			if number != "" {
				u.Extension, numbered = number, true
			}
		case "context":
			u.Context = f.Value
		case "auth":
			auth, _, _ = strings.Cut(f.Value, ",") // the first of several
		}
	}
	return u, numbered, auth, nil
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

var _ adapters.PasswordReader = (*Adapter)(nil)

// SIPPasswords implements adapters.PasswordReader: each endpoint's auth
// object, as the last Discover named it
// (/asterisk/config/dynamic/res_pjsip/auth/<name>), when it is a
// username and password (auth_type userpass; an md5_cred gives no
// password to check a digest of another realm with).
func (a *Adapter) SIPPasswords(ctx context.Context, users []adapters.DiscoveredUser) (map[string]adapters.SIPSecret, error) {
	a.authsMu.Lock()
	auths := a.auths
	a.authsMu.Unlock()
	var mu sync.Mutex
	out := map[string]adapters.SIPSecret{}
	var wg sync.WaitGroup
	var firstErr error
	sem := make(chan struct{}, 8)
	for _, u := range users {
		auth := auths[u.Device]
		if u.Resource || auth == "" {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			secret, ok, err := a.authSecret(ctx, auth)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil && firstErr == nil:
				firstErr = err
			case ok:
				out[u.Device] = secret
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	return out, nil
}

// authSecret reads the login of one auth object.
func (a *Adapter) authSecret(ctx context.Context, auth string) (adapters.SIPSecret, bool, error) {
	var fields []struct {
		Attribute string `json:"attribute"`
		Value     string `json:"value"`
	}
	switch err := a.get(ctx, "/asterisk/config/dynamic/res_pjsip/auth/"+url.PathEscape(auth), &fields); {
	case err == errNotFound:
		return adapters.SIPSecret{}, false, nil
	case err != nil:
		return adapters.SIPSecret{}, false, err
	}
	var s adapters.SIPSecret
	kind := "userpass"
	for _, f := range fields {
		switch f.Attribute {
		case "username":
			s.Username = f.Value
		case "password":
			s.Password = f.Value
		case "auth_type":
			kind = f.Value
		}
	}
	if kind != "userpass" || s.Username == "" || s.Password == "" {
		return adapters.SIPSecret{}, false, nil
	}
	return s, true, nil
}
