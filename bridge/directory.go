package bridge

import (
	"fmt"
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
	// Configured says the YAML names the user; Discovered lists the PBXs
	// whose own directory does (a user may be both: the YAML then adds
	// to or overrides what the PBX says).
	Configured bool     `json:"configured"`
	Discovered []string `json:"discovered,omitempty"`
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
		slices.Equal(u.Groups, o.Groups) && u.Domain == o.Domain && u.Configured == o.Configured &&
		slices.Equal(u.Discovered, o.Discovered)
}

// Directory maps users to their extensions, aliases and devices. It is
// immutable once built; a reload builds a new one and hands it to
// Bridge.SetDirectory.
type Directory struct {
	users    []*User
	byID     map[string]*User
	byName   map[string]*User // extension or lower-cased alias
	byDevice map[DeviceRef]*User
	lists    []*ResolvedList
	byList   map[string]*ResolvedList // lower-cased list name
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
}

// ResolvedList is a List with its members found in the directory.
type ResolvedList struct {
	List
	Users []*User
}

// NewDirectory builds a directory and checks it: ids, extensions and
// aliases must be unique, and no device may belong to two users; each
// list's name must be free and its members known.
func NewDirectory(users []User, lists ...List) (*Directory, error) {
	d := &Directory{
		byID:     make(map[string]*User, len(users)),
		byName:   make(map[string]*User, 2*len(users)),
		byDevice: make(map[DeviceRef]*User, 2*len(users)),
		byList:   make(map[string]*ResolvedList, len(lists)),
	}
	var errs []string
	for i := range users {
		u := users[i] // copy: the directory owns its users
		u.Extensions = slices.Clone(u.Extensions)
		u.Aliases = slices.Clone(u.Aliases)
		u.Devices = slices.Clone(u.Devices)
		u.Groups = slices.Clone(u.Groups)
		u.Discovered = slices.Clone(u.Discovered)
		if u.ID == "" {
			errs = append(errs, fmt.Sprintf("user %d has no id", i+1))
			continue
		}
		if _, dup := d.byID[u.ID]; dup {
			errs = append(errs, fmt.Sprintf("user id %q used twice", u.ID))
			continue
		}
		d.byID[u.ID] = &u
		d.users = append(d.users, &u)
		for _, n := range append(slices.Clone(u.Extensions), u.Aliases...) {
			key := nameKey(n)
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
		key := nameKey(l.Name)
		switch {
		case l.Name == "":
			errs = append(errs, "a list has no name")
			continue
		case d.byName[key] != nil:
			errs = append(errs, fmt.Sprintf("list %q has the name of user %q", l.Name, d.byName[key].ID))
			continue
		case d.byList[key] != nil:
			errs = append(errs, fmt.Sprintf("list %q is defined twice", l.Name))
			continue
		}
		rl := &ResolvedList{List: l}
		rl.Members = slices.Clone(l.Members)
		seen := map[*User]bool{}
		for _, m := range l.Members {
			u := d.member(m)
			switch {
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
				if slices.Contains(u.Groups, l.Group) {
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

// member finds a list member by user id, extension or alias.
func (d *Directory) member(name string) *User {
	if u, ok := d.byID[name]; ok {
		return u
	}
	return d.byName[nameKey(name)]
}

// List returns the list a URI's user part names (regardless of case).
func (d *Directory) List(name string) (*ResolvedList, bool) {
	l, ok := d.byList[nameKey(name)]
	return l, ok
}

// Lists returns every list in configuration order.
func (d *Directory) Lists() []*ResolvedList { return d.lists }

func nameKey(s string) string { return strings.ToLower(s) }

// Users returns every user in configuration order.
func (d *Directory) Users() []*User { return d.users }

// User returns the user with the given id.
func (d *Directory) User(id string) (*User, bool) {
	u, ok := d.byID[id]
	return u, ok
}

// Lookup finds the user addressed by an extension or alias (the user part
// of a presentity URI). Aliases match regardless of case.
func (d *Directory) Lookup(name string) (*User, bool) {
	u, ok := d.byName[nameKey(name)]
	return u, ok
}

// Owner returns the user a device belongs to.
func (d *Directory) Owner(ref DeviceRef) (*User, bool) {
	u, ok := d.byDevice[ref]
	return u, ok
}

// Len is the number of users.
func (d *Directory) Len() int { return len(d.users) }
