package config

import (
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/lamplighter/lamplighter/adapters"
	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/discovery"
	"github.com/lamplighter/lamplighter/presence"
)

// Discover is a PBX's `discover:` section: read the PBX's own directory
// (its extensions, names and devices) so that the YAML needs an entry only
// for what it adds. `discover: true` takes every default.
type Discover struct {
	// Interval is how often the directory is read again, besides at every
	// (re)connect and reload (default 5m).
	Interval time.Duration `yaml:"interval"`
	// Contexts, when set, keeps only users whose calls start in one of
	// these dialplan contexts (FreePBX's phones: from-internal), which
	// leaves trunks out.
	Contexts []string `yaml:"contexts"`
	// Exclude are extensions (or patterns: "9*") never made users.
	Exclude []string `yaml:"exclude"`
	// Passwords reads each discovered phone's SIP login from the PBX
	// (its password kept in memory only), so that a dedicated busy-lamp
	// line logs in to Lamplighter as its phone does to the PBX. Off by
	// default: in proxy mode the PBX authenticates and none is needed.
	Passwords bool `yaml:"passwords"`
	// Features (FreeSWITCH) are the feature keys each discovered user
	// has, as FusionPBX's keys watch them: dnd gives 1000 the lamp
	// dnd+1000 (presence id dnd+1000@domain), voicemail voicemail+1000,
	// agent agent+1000.
	Features []string `yaml:"features"`
}

// Discovery defaults and bounds.
const (
	DefaultDiscoverInterval = 5 * time.Minute
	MinDiscoverInterval     = 10 * time.Second
)

// discoverKeys are the section's keys, checked by hand: a section that
// may also be a bare boolean decodes itself.
var discoverKeys = []string{"interval", "contexts", "exclude", "features", "passwords"}

// UnmarshalYAML takes `true`, `false` (the section is left out) or the
// section itself, whose unknown keys are errors as everywhere else.
func (d *Discover) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!bool" {
		var on bool
		if err := n.Decode(&on); err != nil {
			return err
		}
		if !on {
			d.Interval = -1 // decoded as "off": see PBX.discovering
		}
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: discover is true, false or a section (interval, contexts, exclude, features, passwords)", n.Line)}}
	}
	var errs []string
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; !slices.Contains(discoverKeys, k.Value) {
			errs = append(errs, fmt.Sprintf("line %d: unknown key %q in the discover section", k.Line, k.Value))
		}
	}
	type plain Discover
	if err := n.Decode((*plain)(d)); err != nil {
		if te, ok := err.(*yaml.TypeError); ok {
			errs = append(errs, te.Errors...)
		} else {
			return err
		}
	}
	if len(errs) > 0 {
		return &yaml.TypeError{Errors: errs}
	}
	return nil
}

// Discovering returns the PBX's discover section, or nil when it does not
// read its PBX's directory.
func (pb *PBX) Discovering() *Discover {
	if pb.Discover == nil || pb.Discover.Interval < 0 {
		return nil
	}
	return pb.Discover
}

// checkDiscover checks a PBX's discover section.
func (v *validator) checkDiscover(entry []any, pb *PBX) {
	d := pb.Discovering()
	if d == nil {
		return
	}
	at := append(entry, "discover")
	switch pb.Kind {
	case KindARI, KindESL, KindSim:
	default:
		v.at(at, "a pbx of kind %q has no directory to discover: only ari, esl and sim do", pb.Kind)
	}
	if d.Interval != 0 && d.Interval < MinDiscoverInterval {
		v.at(append(at, "interval"), "interval %s is shorter than %s", d.Interval, MinDiscoverInterval)
	}
	if d.Passwords && pb.Kind != KindARI && pb.Kind != KindESL {
		v.at(append(at, "passwords"), "only Asterisk (ari) and FreeSWITCH (esl) give their phones' passwords")
	}
	for i, f := range d.Features {
		switch {
		case pb.Kind != KindESL:
			v.at(append(at, "features"), "features are FreeSWITCH's (FusionPBX's keys): only for a pbx of kind esl")
		case !slices.Contains([]string{"dnd", "voicemail", "agent", "flow"}, f):
			v.at(append(at, "features", i), "feature %q is not dnd, voicemail, agent or flow", f)
		}
	}
	for i, pat := range d.Exclude {
		if _, err := path.Match(pat, ""); err != nil || pat == "" {
			v.at(append(at, "exclude", i), "bad extension pattern %q", pat)
		}
	}
}

// excluded reports whether a discovered user is left out by its PBX's
// section.
func (d *Discover) excluded(u adapters.DiscoveredUser) bool {
	// Contexts choose endpoints (phones, not trunks); a hint lives in a
	// dialplan context of its own.
	if len(d.Contexts) > 0 && !u.Resource && !slices.Contains(d.Contexts, u.Context) {
		return true
	}
	for _, pat := range d.Exclude {
		if ok, _ := path.Match(pat, u.Extension); ok {
			return true
		}
	}
	return false
}

// Directory builds the bridge directory: the YAML's users, merged with the
// users the PBXs' directories hold (found, which may be nil). The YAML
// wins: a discovered user whose device or extension a YAML user has is
// that user (the device is added to it, and its name used when the YAML
// gives none); the rest become users of their own, with the extension as
// id. Two discovered users of one PBX with one number are one person with
// two devices (FreePBX's user and device mode); the same number found on
// two PBXs is one person only where the YAML says so, else the second is
// left out and reported. List members no one has any more are left out
// of their list (and reported) when some PBX is discovered: the PBX may
// have removed them.
func (c *Config) Directory(found discovery.Found) (*bridge.Directory, []discovery.LeftOut, error) {
	n := len(c.Users)
	for _, f := range found {
		n += len(f)
	}
	users := make([]bridge.User, 0, n)
	byDevice := make(map[bridge.DeviceRef]int, n)
	byName := make(map[nameIn]int, n) // extension, alias (lower case) in its tenant → index in users
	ids := make(map[string]bool, n)
	for _, u := range c.Users {
		bu := bridge.User{ID: u.ID, Name: u.Name, Extensions: u.Extensions, Aliases: u.Aliases, Groups: u.Groups, Configured: true,
			Tenant: strings.ToLower(u.Tenant), Resource: u.Resource}
		for _, d := range u.Devices {
			ref := bridge.DeviceRef{Source: d.PBX, Device: d.Device}
			bu.Devices = append(bu.Devices, ref)
			byDevice[ref] = len(users)
		}
		for _, n := range append(slices.Clone(u.Extensions), u.Aliases...) {
			byName[nameIn{bu.Tenant, strings.ToLower(n)}] = len(users)
		}
		ids[u.ID] = true
		users = append(users, bu)
	}
	var conflicts []discovery.LeftOut
	tenants := c.tenantsOf(found)
	// A discovered-only user's index → where it was found: the PBX and
	// its domain.
	firstFrom := map[int]foundAt{}
	for i := range c.PBX {
		pb := &c.PBX[i]
		d := pb.Discovering()
		if d == nil {
			continue
		}
		for _, du := range withFeatures(found[pb.Name], d.Features) {
			if du.Extension == "" || d.excluded(du) {
				continue
			}
			ref := bridge.DeviceRef{Source: pb.Name, Device: du.Device}
			tenant := c.tenantOfUser(pb, du, tenants)
			if tenant != "" && c.Tenant(tenant) != nil {
				du.Extension = strings.TrimPrefix(du.Extension, c.Tenant(tenant).EndpointPrefix)
			}
			key := nameIn{tenant, strings.ToLower(du.Extension)}
			where := foundAt{pb.Name, du.Domain}
			at, ok := byDevice[ref]
			if !ok {
				at, ok = byName[key]
				if ok && !users[at].Configured && firstFrom[at] != where {
					conflicts = append(conflicts, discovery.LeftOut{PBX: pb.Name, Extension: du.Extension, Device: du.Device,
						Reason: fmt.Sprintf("%s already has extension %s (user %q): two people with one number; a YAML user with both devices makes them one, discover.exclude leaves one out",
							firstFrom[at], du.Extension, users[at].ID)})
					continue
				}
			}
			refs := []bridge.DeviceRef{ref}
			for _, dev := range du.OtherDevices {
				refs = append(refs, bridge.DeviceRef{Source: pb.Name, Device: dev})
			}
			if ok {
				u := &users[at]
				for _, r := range refs {
					if _, has := byDevice[r]; !has {
						u.Devices = append(slices.Clip(u.Devices), r)
						byDevice[r] = at
					}
				}
				if u.Name == "" {
					u.Name = du.Name
				}
				if len(u.Extensions) == 0 && len(u.Aliases) == 0 {
					u.Extensions = []string{du.Extension}
					byName[key] = at
				}
				if u.Domain == "" {
					u.Domain = du.Domain
				}
				if !slices.Contains(u.Discovered, pb.Name) {
					u.Discovered = append(slices.Clip(u.Discovered), pb.Name)
				}
				for _, n := range du.More {
					if k := (nameIn{u.Tenant, strings.ToLower(n)}); !hasName(byName, k) {
						u.Extensions = append(slices.Clip(u.Extensions), n)
						byName[k] = at
					}
				}
				continue
			}
			id := du.Extension
			if tenant != "" {
				id += "@" + tenant
			}
			if ids[id] {
				id = pb.Name + "-" + du.Extension
			}
			if ids[id] {
				conflicts = append(conflicts, discovery.LeftOut{PBX: pb.Name, Extension: du.Extension, Device: du.Device,
					Reason: fmt.Sprintf("user ids %q and %q are both taken", du.Extension, id)})
				continue
			}
			ids[id] = true
			at = len(users)
			byName[key] = at
			firstFrom[at] = where
			nu := bridge.User{ID: id, Name: du.Name, Extensions: []string{du.Extension}, Groups: slices.Clone(du.Groups),
				Domain: du.Domain, Tenant: tenant, Discovered: []string{pb.Name}, Resource: du.Resource}
			for _, r := range refs {
				if _, has := byDevice[r]; !has {
					nu.Devices = append(nu.Devices, r)
					byDevice[r] = at
				}
			}
			for _, n := range du.More {
				if k := (nameIn{tenant, strings.ToLower(n)}); !hasName(byName, k) {
					nu.Extensions = append(nu.Extensions, n)
					byName[k] = at
				}
			}
			users = append(users, nu)
		}
	}
	for i := range users {
		if users[i].Name == "" {
			users[i].Name = users[i].ID
		}
	}
	lists := make([]bridge.List, 0, len(c.Lists))
	discovering := c.discovering()
	for _, l := range c.Lists {
		bl := bridge.List{Name: l.Name, Display: l.Display, Members: l.Members, Group: l.Group, Tenant: strings.ToLower(l.Tenant)}
		if discovering {
			// A member the PBX no longer has leaves the list, not the
			// whole directory.
			bl.Members = nil
			for _, m := range l.Members {
				if ids[m] || hasName(byName, nameIn{bl.Tenant, strings.ToLower(m)}) {
					bl.Members = append(bl.Members, m)
				} else {
					conflicts = append(conflicts, discovery.LeftOut{Extension: m, Reason: fmt.Sprintf("list %q: no user has id, extension or alias %q now", l.Name, m)})
				}
			}
			if l.Group != "" && !hasGroup(users, l.Group) {
				conflicts = append(conflicts, discovery.LeftOut{Reason: fmt.Sprintf("list %q: no user is in group %q now", l.Name, l.Group)})
				bl.Group = ""
			}
			if len(bl.Members) == 0 && bl.Group == "" {
				conflicts = append(conflicts, discovery.LeftOut{Reason: fmt.Sprintf("list %q has no members now: left out", l.Name)})
				continue
			}
		}
		lists = append(lists, bl)
	}
	dir, err := bridge.NewTenantDirectory(c.tenancy(tenants), users, lists...)
	return dir, conflicts, err
}

// tenancy is the directory's tenancy: the tenants, and whose watchers
// may watch whom besides their own (the sip domain stands for the default
// domain's people).
func (c *Config) tenancy(tenants []string) bridge.Tenancy {
	t := bridge.Tenancy{Default: c.SIP.Domain, Domains: tenants, Sees: map[string][]string{}}
	for _, ten := range c.Tenants {
		for _, other := range ten.Sees {
			if strings.EqualFold(other, c.SIP.Domain) {
				other = ""
			}
			t.Sees[strings.ToLower(ten.Domain)] = append(t.Sees[strings.ToLower(ten.Domain)], strings.ToLower(other))
		}
	}
	return t
}

// tenantsOf returns the tenants' domains (lower case): those the YAML
// declares, and the domains of a FreeSWITCH whose directory holds more
// than one (each is a tenant; a switch of one domain is the default's).
func (c *Config) tenantsOf(found discovery.Found) []string {
	var out []string
	for _, t := range c.Tenants {
		out = append(out, strings.ToLower(t.Domain))
	}
	for i := range c.PBX {
		if c.PBX[i].Discovering() == nil {
			continue
		}
		domains := map[string]bool{}
		for _, du := range found[c.PBX[i].Name] {
			if du.Domain != "" {
				domains[strings.ToLower(du.Domain)] = true
			}
		}
		if len(domains) < 2 {
			continue
		}
		for d := range domains {
			if !slices.Contains(out, d) && d != strings.ToLower(c.SIP.Domain) {
				out = append(out, d)
			}
		}
	}
	slices.Sort(out)
	return out
}

// tenantOfUser returns the tenant a discovered user belongs to: the one
// its domain is (FreeSWITCH), else one whose contexts hold its context
// or whose endpoint prefix starts its device's name (Asterisk), else the
// default ("").
func (c *Config) tenantOfUser(pb *PBX, du adapters.DiscoveredUser, tenants []string) string {
	if d := strings.ToLower(du.Domain); d != "" && slices.Contains(tenants, d) {
		return d
	}
	name := du.Device
	if _, after, ok := strings.Cut(name, "/"); ok {
		name = after
	}
	for _, t := range c.Tenants {
		if slices.Contains(t.Contexts, du.Context) || t.EndpointPrefix != "" && strings.HasPrefix(name, t.EndpointPrefix) {
			return strings.ToLower(t.Domain)
		}
	}
	return ""
}

// Tenant returns the YAML's tenant of a domain, nil for none.
func (c *Config) Tenant(domain string) *Tenant {
	for i := range c.Tenants {
		if strings.EqualFold(c.Tenants[i].Domain, domain) {
			return &c.Tenants[i]
		}
	}
	return nil
}

// withFeatures adds to a FreeSWITCH's users the feature keys each has
// (dnd+1000 on presence id dnd+1000@domain).
func withFeatures(users []adapters.DiscoveredUser, features []string) []adapters.DiscoveredUser {
	if len(features) == 0 {
		return users
	}
	out := slices.Clip(users)
	for _, u := range users {
		if u.Resource {
			continue
		}
		for _, f := range features {
			dev := f + "+" + u.Extension
			if u.Domain != "" {
				dev += "@" + u.Domain
			}
			out = append(out, adapters.DiscoveredUser{PBX: u.PBX, Domain: u.Domain, Extension: f + "+" + u.Extension,
				Name: u.Name + " (" + f + ")", Device: dev, Context: u.Context, Resource: true})
		}
	}
	return out
}

// nameIn is an extension or alias (lower case) in its tenant.
type nameIn struct{ tenant, name string }

// foundAt is where a discovered user was found: the PBX, and its domain.
type foundAt struct{ pbx, domain string }

func (f foundAt) String() string {
	if f.domain == "" {
		return f.pbx
	}
	return f.pbx + " (domain " + f.domain + ")"
}

func hasName(byName map[nameIn]int, n nameIn) bool {
	_, ok := byName[n]
	return ok
}

func hasGroup(users []bridge.User, g string) bool {
	for i := range users {
		if slices.Contains(users[i].Groups, g) {
			return true
		}
	}
	return false
}

// discovering reports whether any PBX reads its directory.
func (c *Config) discovering() bool {
	for i := range c.PBX {
		if c.PBX[i].Discovering() != nil {
			return true
		}
	}
	return false
}

// DiscoveredCredentials are the SIP logins of discovered users on PBXs
// whose discover reads passwords, where the YAML gives the user none:
// as read (secrets, by PBX and device), or, for a PBX not read since the
// start, pending under the username the state file kept (pending, by
// PBX and device): a subscription it let in waits for the read instead
// of ending.
func (c *Config) DiscoveredCredentials(dir *bridge.Directory, secrets map[string]map[string]adapters.SIPSecret,
	pending map[string]map[string]string) []presence.Credential {
	reads := map[string]bool{}
	for i := range c.PBX {
		if d := c.PBX[i].Discovering(); d != nil && d.Passwords {
			reads[c.PBX[i].Name] = true
		}
	}
	if len(reads) == 0 {
		return nil
	}
	own := map[string]bool{} // users the YAML gives a password
	for _, u := range c.Users {
		if u.SIP.Password != "" || u.SIP.PasswordFile != "" || u.SIP.PasswordEnv != "" {
			own[u.ID] = true
		}
	}
	var out []presence.Credential
	for _, u := range dir.Users() {
		if u.Resource || own[u.ID] {
			continue
		}
		for _, ref := range u.Devices {
			if !reads[ref.Source] {
				continue
			}
			if sec, ok := secrets[ref.Source][ref.Device]; ok {
				out = append(out, presence.Credential{Username: sec.Username, UserID: u.ID, Password: sec.Password, Tenant: u.Tenant})
				break
			}
			if name, ok := pending[ref.Source][ref.Device]; ok {
				out = append(out, presence.Credential{Username: name, UserID: u.ID, Tenant: u.Tenant, Pending: true})
				break
			}
		}
	}
	return out
}
