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
		slices.Equal(u.Groups, o.Groups)
}

// Directory maps users to their extensions, aliases and devices. It is
// immutable once built; a reload builds a new one and hands it to
// Bridge.SetDirectory.
type Directory struct {
	users    []*User
	byID     map[string]*User
	byName   map[string]*User // extension or lower-cased alias
	byDevice map[DeviceRef]*User
}

// NewDirectory builds a directory and checks it: ids, extensions and
// aliases must be unique, and no device may belong to two users.
func NewDirectory(users []User) (*Directory, error) {
	d := &Directory{
		byID:     make(map[string]*User, len(users)),
		byName:   make(map[string]*User, 2*len(users)),
		byDevice: make(map[DeviceRef]*User, 2*len(users)),
	}
	var errs []string
	for i := range users {
		u := users[i] // copy: the directory owns its users
		u.Extensions = slices.Clone(u.Extensions)
		u.Aliases = slices.Clone(u.Aliases)
		u.Devices = slices.Clone(u.Devices)
		u.Groups = slices.Clone(u.Groups)
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
	if len(errs) > 0 {
		return nil, fmt.Errorf("directory: %s", strings.Join(errs, "; "))
	}
	return d, nil
}

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
