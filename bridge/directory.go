package bridge

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// DeviceRef names one device on one PBX source.
type DeviceRef struct {
	Source string `json:"pbx"`    // the PBX connection's name from the config
	Device string `json:"device"` // the device as that PBX names it
}

// String returns "source:device".
func (r DeviceRef) String() string { return r.Source + ":" + r.Device }

// User is one person of the directory.
type User struct {
	ID         string      `json:"id"`
	Name       string      `json:"name"`
	Extensions []string    `json:"extensions,omitempty"`
	Aliases    []string    `json:"aliases,omitempty"`
	Devices    []DeviceRef `json:"devices,omitempty"`
	Groups     []string    `json:"groups,omitempty"`
	// Domain is the PBX domain the user was found in (FreeSWITCH's
	// directory domain), empty for users only the YAML names.
	Domain string `json:"domain,omitempty"`
	// Tenant is the SIP domain the user is addressed in when the
	// directory has tenants (sip:ext@Tenant); "" is the default domain.
	// Extensions and aliases are unique within a tenant only.
	Tenant string `json:"tenant,omitempty"`
	// Configured says the YAML names the user; Discovered lists the PBXs
	// whose own directory does (a user may be both: the YAML then adds
	// to or overrides what the PBX says).
	Configured bool     `json:"configured"`
	Discovered []string `json:"discovered,omitempty"`
	// Resource marks a lamp that is no person (a feature key: a hint on
	// Custom: devices, a parking space): it has no person state and is
	// not on the switchboard.
	Resource bool `json:"resource,omitempty"`
}

// Presentity returns the user part under which the user is normally
// addressed: the first extension, else the first alias, else the id.
func (u *User) Presentity() string {
	switch {
	case len(u.Extensions) > 0:
		return u.Extensions[0]
	case len(u.Aliases) > 0:
		return u.Aliases[0]
	}
	return u.ID
}

// Equal reports whether two users have the same content.
func (u *User) Equal(o *User) bool {
	if u == o {
		return true
	}
	if u == nil || o == nil {
		return false
	}
	return u.ID == o.ID && u.Name == o.Name && slices.Equal(u.Extensions, o.Extensions) &&
		slices.Equal(u.Aliases, o.Aliases) && slices.Equal(u.Devices, o.Devices) &&
		slices.Equal(u.Groups, o.Groups) && u.Domain == o.Domain && u.Tenant == o.Tenant && u.Resource == o.Resource && u.Configured == o.Configured &&
		slices.Equal(u.Discovered, o.Discovered)
}

// Directory maps users to their extensions, aliases and devices. It is
// immutable once built; a reload builds a new one and hands it to
// Bridge.SetDirectory.
type Directory struct {
	// tenants are the domains that are tenants (lower case); none: every
	// domain reaches the one default tenant.
	tenants       map[string]bool
	defaultDomain string
	sees          map[string]map[string]bool // a watcher's tenant → the tenants it may watch besides its own
	users         []*User
	byID          map[string]*User
	byName        map[tenantName]*User // extension or lower-cased alias, in its tenant
	byDevice      map[DeviceRef]*User
	lists         []*ResolvedList
	byList        map[string]*ResolvedList // lower-cased list name
}

// List is a resource list (RFC 4662) as configured: one URI that a phone
// subscribes to for the state of every member (a receptionist's BLF list).
type List struct {
	// Name is the user part phones subscribe to (sip:Name@domain); it may
	// not be a user's extension or alias.
	Name string `json:"name"`
	// Display is what phones may show for the list (default Name).
	Display string `json:"display,omitempty"`
	// Members are user ids, extensions or aliases, in the order the
	// phone's keys show them.
	Members []string `json:"members,omitempty"`
	// Group adds every user of that group, in directory order, after
	// Members (a user in both is listed once).
	Group string `json:"group,omitempty"`
	// Tenant is the domain the list lives in ("" the default); its
	// members are that tenant's users.
	Tenant string `json:"tenant,omitempty"`
}

// ResolvedList is a List with its members found in the directory.
type ResolvedList struct {
	List
	// Key names the list in its directory: Name, or Name@Tenant.
	Key   string
	Users []*User
}

// NewDirectory builds a directory of one domain and checks it: ids,
// extensions and aliases must be unique, and no device may belong to two
// users; each list's name must be free and its members known.
func NewDirectory(users []User, lists ...List) (*Directory, error) {
	return NewTenantDirectory(Tenancy{}, users, lists...)
}

// Tenancy says which domains are tenants of their own.
type Tenancy struct {
	// Default is the default domain (whose people are no tenant's).
	Default string
	// Domains are the tenants.
	Domains []string
	// Sees lets the watchers of a tenant (a key; "" the default domain)
	// watch the people of others besides their own ("*": every one).
	Sees map[string][]string
}

// NewTenantDirectory is NewDirectory for several tenants: each user and
// list belongs to one of tenants (its Tenant) or to the default domain
// ("" in Tenant), and extensions, aliases and list names are unique
// within a tenant. With no tenants every domain reaches the default one.
func NewTenantDirectory(t Tenancy, users []User, lists ...List) (*Directory, error) {
	tenants := t.Domains
	d := &Directory{
		tenants:       make(map[string]bool, len(tenants)),
		defaultDomain: strings.ToLower(t.Default),
		sees:          map[string]map[string]bool{},
		byID:          make(map[string]*User, len(users)),
		byName:        make(map[tenantName]*User, 2*len(users)),
		byDevice:      make(map[DeviceRef]*User, 2*len(users)),
		byList:        make(map[string]*ResolvedList, len(lists)),
	}
	var errs []string
	for _, t := range tenants {
		d.tenants[strings.ToLower(t)] = true
	}
	for from, to := range t.Sees {
		m := map[string]bool{}
		for _, x := range to {
			m[strings.ToLower(x)] = true
		}
		d.sees[strings.ToLower(from)] = m
	}
	for i := range users {
		u := users[i] // copy: the directory owns its users
		own(&u)
		if u.ID == "" {
			errs = append(errs, fmt.Sprintf("user %d has no id", i+1))
			continue
		}
		if _, dup := d.byID[u.ID]; dup {
			errs = append(errs, fmt.Sprintf("user id %q used twice", u.ID))
			continue
		}
		if u.Tenant != "" && !d.tenants[strings.ToLower(u.Tenant)] {
			errs = append(errs, fmt.Sprintf("user %q is in %q, which is no tenant", u.ID, u.Tenant))
			continue
		}
		u.Tenant = strings.ToLower(u.Tenant)
		d.byID[u.ID] = &u
		d.users = append(d.users, &u)
		for _, n := range allNames(&u) {
			key := tenantName{u.Tenant, nameKey(n)}
			if other, dup := d.byName[key]; dup {
				errs = append(errs, fmt.Sprintf("%q belongs to both %q and %q", n, other.ID, u.ID))
				continue
			}
			d.byName[key] = &u
		}
		for _, ref := range u.Devices {
			if other, dup := d.byDevice[ref]; dup {
				errs = append(errs, fmt.Sprintf("device %s belongs to both %q and %q", ref, other.ID, u.ID))
				continue
			}
			d.byDevice[ref] = &u
		}
	}
	if len(errs) == 0 {
		errs = d.addLists(lists)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("directory: %s", strings.Join(errs, "; "))
	}
	return d, nil
}

// addLists resolves the lists' members; it returns what is wrong.
func (d *Directory) addLists(lists []List) []string {
	var errs []string
	for _, l := range lists {
		l.Tenant = strings.ToLower(l.Tenant)
		key := Qualify(l.Name, l.Tenant)
		nk := tenantName{l.Tenant, nameKey(l.Name)}
		switch {
		case l.Tenant != "" && !d.tenants[l.Tenant]:
			errs = append(errs, fmt.Sprintf("list %q is in %q, which is no tenant", l.Name, l.Tenant))
			continue
		case l.Name == "":
			errs = append(errs, "a list has no name")
			continue
		case d.byName[nk] != nil:
			errs = append(errs, fmt.Sprintf("list %q has the name of user %q", l.Name, d.byName[nk].ID))
			continue
		case d.byList[key] != nil:
			errs = append(errs, fmt.Sprintf("list %q is defined twice", l.Name))
			continue
		}
		rl := &ResolvedList{List: l, Key: key}
		rl.Members = slices.Clone(l.Members)
		seen := map[*User]bool{}
		for _, m := range l.Members {
			u := d.member(m, l.Tenant)
			switch {
			case u != nil && u.Tenant != l.Tenant:
				errs = append(errs, fmt.Sprintf("list %q: user %q is another tenant's", l.Name, u.ID))
			case u == nil:
				errs = append(errs, fmt.Sprintf("list %q: no user has id, extension or alias %q", l.Name, m))
			case seen[u]:
				errs = append(errs, fmt.Sprintf("list %q names user %q twice", l.Name, u.ID))
			default:
				seen[u] = true
				rl.Users = append(rl.Users, u)
			}
		}
		if l.Group != "" {
			n := 0
			for _, u := range d.users {
				if u.Tenant == l.Tenant && slices.Contains(u.Groups, l.Group) {
					n++
					if !seen[u] {
						seen[u] = true
						rl.Users = append(rl.Users, u)
					}
				}
			}
			if n == 0 {
				errs = append(errs, fmt.Sprintf("list %q: no user is in group %q", l.Name, l.Group))
			}
		}
		if len(rl.Users) == 0 && len(l.Members) == 0 && l.Group == "" {
			errs = append(errs, fmt.Sprintf("list %q has no members and no group", l.Name))
		}
		d.byList[key] = rl
		d.lists = append(d.lists, rl)
	}
	return errs
}

// member finds a list member by user id, or by extension or alias in the
// list's tenant.
func (d *Directory) member(name string, tenant string) *User {
	if u, ok := d.byID[name]; ok {
		return u
	}
	return d.byName[tenantName{tenant, nameKey(name)}]
}

// List returns the list a key names (regardless of case): a URI's user
// part in the default domain, or Name@Tenant (ResolvedList.Key).
func (d *Directory) List(key string) (*ResolvedList, bool) {
	l, ok := d.byList[nameKey(key)]
	return l, ok
}

// Qualify is the key of an extension, alias or list name in a tenant:
// the name itself in the default domain, name@tenant in another.
func Qualify(name, tenant string) string {
	if tenant == "" {
		return nameKey(name)
	}
	return nameKey(name) + "@" + tenant
}

// HasTenants reports whether the directory has tenants (domains of their
// own); without, every domain reaches the default one.
func (d *Directory) HasTenants() bool { return len(d.tenants) > 0 }

// Tenants returns the tenants' domains, sorted.
func (d *Directory) Tenants() []string {
	out := make([]string, 0, len(d.tenants))
	for t := range d.tenants {
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}

// Tenant returns the tenant a request's domain (a Request-URI's host)
// names: without tenants always the default (""); with them a tenant's
// own domain, else the default for the default domain or an IP address
// (a phone that addresses Lamplighter by its address); ok is false for
// any other domain, which is no one's here.
func (d *Directory) Tenant(host string) (tenant string, ok bool) {
	if len(d.tenants) == 0 {
		return "", true
	}
	h := strings.ToLower(strings.Trim(host, "[]"))
	switch {
	case d.tenants[h]:
		return h, true
	case h == d.defaultDomain || h == "" || isIPLiteral(h):
		return "", true
	}
	return "", false
}

// Sees reports whether a watcher of one tenant may watch the people of
// another ("" is the default domain): its own always, others where the
// tenancy allows.
func (d *Directory) Sees(watcher, target string) bool {
	if watcher == target {
		return true
	}
	m := d.sees[watcher]
	return m["*"] || m[target]
}

// Resolve finds the user a request addresses: name in the tenant host
// names (Tenant). An unknown domain finds no one.
func (d *Directory) Resolve(host, name string) (*User, bool) {
	t, ok := d.Tenant(host)
	if !ok {
		return nil, false
	}
	u, ok := d.byName[tenantName{t, nameKey(name)}]
	return u, ok
}

// ResolveList is Resolve for a list.
func (d *Directory) ResolveList(host, name string) (*ResolvedList, bool) {
	t, ok := d.Tenant(host)
	if !ok {
		return nil, false
	}
	l, ok := d.byList[Qualify(name, t)]
	return l, ok
}

func isIPLiteral(h string) bool {
	_, err := netip.ParseAddr(h)
	return err == nil
}

// Lists returns every list in configuration order.
func (d *Directory) Lists() []*ResolvedList { return d.lists }

func nameKey(s string) string { return strings.ToLower(s) }

// tenantName keys an extension or alias (lower case) in its tenant.
type tenantName struct{ tenant, name string }

// splitName reads a Qualify'd name: name, or name@tenant (names and
// aliases hold no '@').
func splitName(key string) tenantName {
	name, tenant, _ := strings.Cut(key, "@")
	return tenantName{strings.ToLower(tenant), nameKey(name)}
}

// allNames are a user's extensions and aliases.
func allNames(u *User) []string {
	if len(u.Aliases) == 0 {
		return u.Extensions
	}
	return append(u.Extensions[:len(u.Extensions):len(u.Extensions)], u.Aliases...)
}

// own gives u slices of its own, in one allocation for its strings: a
// directory's users never share memory with what they were built from.
func own(u *User) {
	n := len(u.Extensions) + len(u.Aliases) + len(u.Groups) + len(u.Discovered)
	if n > 0 {
		buf := make([]string, 0, n)
		take := func(s []string) []string {
			if len(s) == 0 {
				return nil
			}
			start := len(buf)
			buf = append(buf, s...)
			return buf[start:len(buf):len(buf)]
		}
		u.Extensions, u.Aliases, u.Groups, u.Discovered = take(u.Extensions), take(u.Aliases), take(u.Groups), take(u.Discovered)
	}
	u.Devices = slices.Clone(u.Devices)
}

// Users returns every user in configuration order.
func (d *Directory) Users() []*User { return d.users }

// User returns the user with the given id.
func (d *Directory) User(id string) (*User, bool) {
	u, ok := d.byID[id]
	return u, ok
}

// Lookup finds the user addressed by an extension or alias (the user part
// of a presentity URI) in the default domain, or by name@tenant (Qualify).
// Aliases match regardless of case.
func (d *Directory) Lookup(name string) (*User, bool) {
	u, ok := d.byName[splitName(name)]
	return u, ok
}

// Owner returns the user a device belongs to.
func (d *Directory) Owner(ref DeviceRef) (*User, bool) {
	u, ok := d.byDevice[ref]
	return u, ok
}

// Len is the number of users.
func (d *Directory) Len() int { return len(d.users) }

// sharing returns d with the users that prev holds alike taken from prev
// (the same *User): a state computed for such a user needs no change
// when d replaces prev, and telling so is one comparison. d itself is
// not changed.
func (d *Directory) sharing(prev *Directory) *Directory {
	if prev == nil {
		return d
	}
	same := make(map[*User]*User, len(d.users))
	for _, u := range d.users {
		if p, ok := prev.byID[u.ID]; ok && p != u && p.Equal(u) {
			same[u] = p
		}
	}
	if len(same) == 0 {
		return d
	}
	pick := func(u *User) *User {
		if p, ok := same[u]; ok {
			return p
		}
		return u
	}
	out := *d
	out.users = make([]*User, len(d.users))
	for i, u := range d.users {
		out.users[i] = pick(u)
	}
	out.byID = make(map[string]*User, len(d.byID))
	for k, u := range d.byID {
		out.byID[k] = pick(u)
	}
	out.byName = make(map[tenantName]*User, len(d.byName))
	for k, u := range d.byName {
		out.byName[k] = pick(u)
	}
	out.byDevice = make(map[DeviceRef]*User, len(d.byDevice))
	for k, u := range d.byDevice {
		out.byDevice[k] = pick(u)
	}
	out.lists = make([]*ResolvedList, len(d.lists))
	out.byList = make(map[string]*ResolvedList, len(d.byList))
	for i, l := range d.lists {
		nl := *l
		nl.Users = make([]*User, len(l.Users))
		for j, u := range l.Users {
			nl.Users[j] = pick(u)
		}
		out.lists[i] = &nl
		out.byList[nl.Key] = &nl
	}
	return &out
}
