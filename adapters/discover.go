package adapters

import "context"

// A PBX knows its extensions, their names and devices: an adapter that
// can read its PBX's own directory is a Discoverer, so that the directory
// can be built from it instead of a YAML entry per person (the YAML then
// adds and overrides).

// DiscoveredUser is one user a PBX's own directory names.
type DiscoveredUser struct {
	PBX       string   `json:"pbx"`               // the adapter's name (the config's)
	Domain    string   `json:"domain,omitempty"`  // the PBX's domain the user belongs to (a tenant on FreeSWITCH)
	Extension string   `json:"extension"`         // what phones dial for the user
	Name      string   `json:"name,omitempty"`    // the caller id name
	Device    string   `json:"device"`            // the user's device as the adapter names it
	Context   string   `json:"context,omitempty"` // the dialplan context its calls start in
	Groups    []string `json:"groups,omitempty"`  // the PBX's own groups the user is in
	// More are further numbers the PBX dials the user by (Asterisk: a
	// hint that maps another extension to the user's endpoint).
	More []string `json:"more,omitempty"`
	// Resource marks a lamp that is no person: a feature key's state (a
	// hint on Custom: or Queue: devices, a parking space, a FusionPBX
	// feature); OtherDevices are the devices it watches besides Device.
	Resource     bool     `json:"resource,omitempty"`
	OtherDevices []string `json:"other_devices,omitempty"`
}

// SIPSecret is the SIP login a PBX has for one of its phones: what the
// phone's line authenticates with.
type SIPSecret struct {
	Username, Password string
}

// PasswordReader is a Discoverer that can also read its phones' SIP
// passwords, for a PBX whose discover asks for them (a dedicated
// busy-lamp line then logs in to Lamplighter as it does to the PBX). What
// it returns is kept in memory only.
type PasswordReader interface {
	// SIPPasswords returns the SIP login of each of users (by Device)
	// that has one.
	SIPPasswords(ctx context.Context, users []DiscoveredUser) (map[string]SIPSecret, error)
}

// Discoverer is an adapter that can read its PBX's directory.
type Discoverer interface {
	// Discover reads every user the PBX's directory holds, once.
	Discover(ctx context.Context) ([]DiscoveredUser, error)
}
