package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The registrations accepted through the proxy (bindings) are kept in a
// file of the state directory across restarts, so that a phone still
// registered through Lamplighter keeps the trust of its flow (its
// SUBSCRIBEs need no password) and the responses and CANCELs of calls
// that were ringing find their way (invite.go), without waiting for the
// phone to register again. The file is written whole (a new file renamed
// over the old) at most once a second when something changed, and when
// the proxy stops; a damaged one is kept aside and the proxy starts with
// none.

// BindingsFile is the file in the state directory with the bindings.
const BindingsFile = "proxy-bindings.json"

// FlowRecord is a binding as the file and the other nodes of a cluster
// hold it: the PBX by name (its index may change with the config).
type FlowRecord struct {
	User      string    `json:"user"`
	Domain    string    `json:"domain,omitempty"` // the address-of-record's domain
	Transport string    `json:"transport"`
	Addr      string    `json:"addr"`
	PBX       string    `json:"pbx"`
	Contacts  []string  `json:"contacts,omitempty"`
	Expires   time.Time `json:"expires"`
}

// ID names the flow a record is of: its transport and address.
func (r FlowRecord) ID() string { return strings.ToLower(r.Transport) + ":" + r.Addr }

// record is b as a FlowRecord.
func (p *Proxy) record(b binding) FlowRecord {
	return FlowRecord{User: b.user, Domain: b.domain, Transport: b.flow.transport, Addr: b.flow.addr.String(),
		PBX: p.opt.Targets[b.target].Name, Contacts: b.contacts, Expires: b.expires}
}

// fromRecord is r as a binding; ok is false for a damaged record or one
// of a PBX not proxied here.
func (p *Proxy) fromRecord(r FlowRecord) (binding, bool) {
	ap, err := netip.ParseAddrPort(r.Addr)
	target := p.targetIndex(r.PBX)
	if err != nil || target < 0 || transportCode[r.Transport] == 0 {
		return binding{}, false
	}
	return binding{user: r.User, domain: r.Domain, flow: flow{transport: r.Transport, addr: ap}, target: target,
		contacts: r.Contacts, expires: r.Expires}, true
}

// loadBindings reads the file into the bindings, skipping the expired
// ones and those of a PBX no longer proxied.
func (p *Proxy) loadBindings(path string) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	var kept []FlowRecord
	if err == nil {
		err = json.Unmarshal(b, &kept)
	}
	if err != nil {
		broken := path + ".broken"
		os.Rename(path, broken)
		p.log.Warn("the proxy's registrations file cannot be read: kept aside, phones registered through Lamplighter "+
			"need a password for their lamps until they register again", "file", path, "kept_as", broken, "err", err)
		return
	}
	now := time.Now()
	n := 0
	for _, k := range kept {
		b, ok := p.fromRecord(k)
		if !ok || !k.Expires.After(now) {
			continue
		}
		if p.binds.put(b) {
			n++
		}
	}
	p.binds.dirty = false
	if n > 0 {
		p.log.Info("restored registrations through the proxy", "bindings", n)
	}
}

// targetIndex is the index of the target named name, -1 for none.
func (p *Proxy) targetIndex(name string) int {
	for i, t := range p.opt.Targets {
		if t.Name == name {
			return i
		}
	}
	return -1
}

// saveBindings writes the file when the bindings changed since it was
// last written.
func (p *Proxy) saveBindings(path string) {
	list, changed := p.binds.snapshot()
	if !changed {
		return
	}
	kept := make([]FlowRecord, 0, len(list))
	for _, b := range list {
		kept = append(kept, p.record(b))
	}
	data, err := json.Marshal(kept)
	if err == nil {
		err = writeFileAtomic(path, data)
	}
	if err != nil {
		p.binds.markDirty() // try again
		p.log.Warn("cannot keep the proxy's registrations", "file", path, "err", err)
	}
}

// writeFileAtomic replaces path with data (mode 0600): a new file renamed
// over the old, so that a crash leaves one or the other whole.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	return nil
}
