package main

import (
	"context"
	"errors"
	"maps"
	"os"
	"os/signal"
	"reflect"
	"slices"
	"syscall"

	"github.com/lamplighter/lamplighter/adapters"
	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/api"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/config"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/discovery"
)

// hangups returns a channel of SIGHUPs and a function to stop them.
func hangups() (<-chan os.Signal, func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	return hup, func() { signal.Stop(hup) }
}

// reloadOnHangup reloads the config on every SIGHUP until ctx ends.
func (d *daemon) reloadOnHangup(ctx context.Context, hup <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			d.reload() // it logs what happened
		}
	}
}

// errBuiltIn is the answer to a reload of the built-in demo config.
var errBuiltIn = errors.New("the built-in demo config cannot be reloaded: run with -config FILE")

// reload re-reads the config file. A file with problems changes nothing
// (every problem is logged as FILE:LINE: what). A good one replaces the
// directory (users added, removed or changed; other subscriptions are
// untouched), the SIP credentials, the single-dialog policy, the API
// token and the log level; PBXs whose users' devices changed read their
// state again. Listeners, PBX connections and the state directory change
// only at the next start, and the result says so.
func (d *daemon) reload() (api.ReloadResult, error) {
	d.cfgMu.Lock()
	defer d.cfgMu.Unlock()
	var res api.ReloadResult
	old := d.cfg
	if old.File == builtInConfig {
		d.log.Error("reload refused", "err", errBuiltIn)
		return res, errBuiltIn
	}
	cfg, err := config.Load(old.File)
	if err == nil {
		err = d.applyConfig(cfg, &res)
	}
	if err != nil {
		d.log.Error("reload rejected: the running config is unchanged", "file", old.File, "problems", err.Error())
		return res, err
	}
	d.cfg = cfg
	d.log.Info("config reloaded", "file", cfg.File, "users", res.Users, "added", res.Added,
		"removed", res.Removed, "changed", res.Changed, "need_restart", res.NeedRestart)
	return res, nil
}

// applyConfig puts a checked config in force; on error nothing has
// changed.
func (d *daemon) applyConfig(cfg *config.Config, res *api.ReloadResult) error {
	dir, conflicts, err := cfg.Directory(d.found.Found())
	if err != nil {
		return err
	}
	yamlCreds, err := credentials(cfg)
	if err != nil {
		return err
	}
	creds := d.withDiscoveredCreds(cfg, dir, yamlCreds)
	token, err := cfg.HTTPToken(nil)
	if err != nil {
		return err
	}
	tenantToks, err := tenantTokens(cfg)
	if err != nil {
		return err
	}
	calPlan, err := cfg.CalendarPlan(nil)
	if err != nil {
		return err
	}
	// Everything that can fail has been done: from here on, apply.
	res.Users = dir.Len()
	res.Added, res.Removed, res.Changed = d.installDirectory(dir, conflicts)
	res.NeedRestart = needRestart(d.cfg, cfg)
	// After the directory: a watcher let in by its registered flow (proxy
	// mode) holds while it is a user.
	d.sip.SetCredentials(creds)
	d.yamlCreds = yamlCreds
	d.setLogins(creds)
	d.liveMu.Lock()
	d.single = singleDialogPolicy(cfg)
	d.liveMu.Unlock()
	d.api.SetToken(token)
	d.api.SetTenantTokens(tenantToks)
	d.ops.SetHosts(cfg.HTTP.Hosts)
	setLevel(d.level, cfg.Log.Level)
	d.calPlan = calPlan
	d.cals.Set(calPlan.For(dir.Users())) // new and changed calendars are read, removed ones cleared
	d.found.Refresh()                    // and the PBXs' directories are read again
	return nil
}

// installDirectory puts a directory in force and says which users it
// added, removed and changed: removed users' subscriptions end, list
// subscriptions follow their lists, and PBXs on which a user has a new
// device read their state again. The caller holds cfgMu.
func (d *daemon) installDirectory(dir *bridge.Directory, conflicts []discovery.LeftOut) (added, removed, changed []string) {
	oldDir := d.bridge.Directory()
	for _, u := range dir.Users() {
		prev, ok := oldDir.User(u.ID)
		switch {
		case !ok:
			added = append(added, u.ID)
		case !prev.Equal(u):
			changed = append(changed, u.ID)
		}
	}
	for _, u := range oldDir.Users() {
		if _, ok := dir.User(u.ID); !ok {
			removed = append(removed, u.ID)
		}
	}
	d.noteConflicts(conflicts)
	resync := pbxsWithNewDevices(oldDir, dir)
	d.bridge.SetDirectory(dir) // removed users' subscriptions end with noresource
	d.sip.DirectoryChanged()   // list subscriptions follow their lists
	for _, a := range d.adapters {
		if !resync[a.Name()] {
			continue
		}
		// The new devices' state: read alone where the adapter can, else
		// the whole PBX again.
		if l, ok := a.(adapters.DeviceLearner); ok {
			l.DevicesAdded()
		} else if r, ok := a.(interface{ Resync() }); ok {
			r.Resync()
		}
	}
	return added, removed, changed
}

// noteConflicts keeps the discovered users left out of the directory for
// the API, and logs those that are new.
func (d *daemon) noteConflicts(conflicts []discovery.LeftOut) {
	d.liveMu.Lock()
	old := d.conflicts
	d.conflicts = conflicts
	d.liveMu.Unlock()
	for _, c := range conflicts {
		if !slices.Contains(old, c) {
			d.log.Warn("a discovered user is left out", "pbx", c.PBX, "extension", c.Extension, "device", c.Device, "why", c.Reason)
		}
	}
}

// rediscovered builds the directory again from the config in force and
// what the PBXs' directories now hold.
func (d *daemon) rediscovered() {
	d.cfgMu.Lock()
	defer d.cfgMu.Unlock()
	dir, conflicts, err := d.cfg.Directory(d.found.Found())
	if err != nil {
		d.log.Error("the PBXs' directories do not fit the config: the directory is unchanged", "err", err)
		return
	}
	added, removed, changed := d.installDirectory(dir, conflicts)
	// Discovered people get the default calendar, removed ones lose
	// theirs (the secrets read at the last (re)load).
	d.cals.Set(d.calPlan.For(dir.Users()))
	// The logins follow: a discovered user's read from its PBX, a
	// removed one's gone. The YAML's were read at the last (re)load.
	creds := d.withDiscoveredCreds(d.cfg, dir, d.yamlCreds)
	if ended := d.sip.SetCredentials(creds); ended > 0 {
		d.log.Info("subscriptions ended: their watchers' logins are gone or changed", "subscriptions", ended)
	}
	d.setLogins(creds)
	if added != nil || removed != nil || changed != nil {
		d.log.Info("directory changed by the PBX", "users", dir.Len(), "added", added, "removed", removed, "changed", changed)
	}
}

// pbxsWithNewDevices names the PBXs on which some user has a device the
// old directory did not have: their adapters read the state again.
func pbxsWithNewDevices(old, next *bridge.Directory) map[string]bool {
	had := map[bridge.DeviceRef]bool{}
	for _, u := range old.Users() {
		for _, ref := range u.Devices {
			had[ref] = true
		}
	}
	out := map[string]bool{}
	for _, u := range next.Users() {
		for _, ref := range u.Devices {
			if !had[ref] {
				out[ref.Source] = true
			}
		}
	}
	return out
}

// needRestart lists the sections that changed but are only read at start.
func needRestart(old, next *config.Config) []string {
	var out []string
	if !reflect.DeepEqual(old.SIP, next.SIP) {
		out = append(out, "sip")
	}
	if !reflect.DeepEqual(old.Policy, next.Policy) {
		// The single-dialog policy is the one part applied at once.
		a, b := old.Policy, next.Policy
		a.SingleDialog, b.SingleDialog = config.SingleDialog{}, config.SingleDialog{}
		if !reflect.DeepEqual(a, b) {
			out = append(out, "policy")
		}
	}
	if old.HTTP.Listen != next.HTTP.Listen {
		out = append(out, "http.listen")
	}
	if old.HTTP.Pprof != next.HTTP.Pprof {
		out = append(out, "http.pprof")
	}
	if !reflect.DeepEqual(old.Cluster, next.Cluster) {
		out = append(out, "cluster")
	}
	if !maps.Equal(tenantRealms(old), tenantRealms(next)) {
		out = append(out, "tenants (realms)")
	}
	if old.StateDir != next.StateDir {
		out = append(out, "state_dir")
	}
	if oc, nc := old.CalendarOptions(), next.CalendarOptions(); oc.Interval != nc.Interval || oc.Horizon != nc.Horizon ||
		oc.Timeout != nc.Timeout || oc.MaxBody != nc.MaxBody || oc.Parallel != nc.Parallel {
		out = append(out, "calendar (interval and limits)")
	}
	if old.Log.Format != next.Log.Format {
		out = append(out, "log.format")
	}
	if !reflect.DeepEqual(old.PBX, next.PBX) {
		out = append(out, "pbx")
	}
	return slices.Clip(out)
}
