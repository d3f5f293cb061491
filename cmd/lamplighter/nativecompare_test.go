package main

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
)

// With LAMPLIGHTER_COMPARE_NATIVE=1, TestAsteriskLamps and
// TestFreeSWITCHLamps also watch each phone's lamp at the PBX itself (its
// own BLF, subscribed to as a phone would) and log, after each scenario,
// what Lamplighter's lamp and the PBX's showed: the adapters' README
// tables come from that log.

// nativeLamps are BLF keys on the PBX's own lamps, by extension.
type nativeLamps map[string]*lampWatch

// watchNative subscribes to the PBX's own lamp of every ext, as the
// phone user (digest user and password), when the comparison is asked
// for; nil otherwise.
func (r *rig) watchNative(exts []string, user, pass string) nativeLamps {
	if os.Getenv("LAMPLIGHTER_COMPARE_NATIVE") == "" {
		return nil
	}
	n := nativeLamps{}
	for _, ext := range exts {
		n[ext] = watchLampAs(r.t, r.sip, ext, user, pass)
	}
	return n
}

// counts is where each lamp's documents stand now.
func (n nativeLamps) counts() map[string]int {
	out := map[string]int{}
	for ext, l := range n {
		out[ext] = l.count()
	}
	return out
}

// report logs what each lamp showed since from, Lamplighter's next to
// the PBX's own.
func (n nativeLamps) report(t *testing.T, r *rig, from, ours map[string]int) {
	if n == nil {
		return
	}
	var exts []string
	for ext := range n {
		exts = append(exts, ext)
	}
	sort.Strings(exts)
	for _, ext := range exts {
		t.Logf("%s %s\n  lamplighter: %s\n  pbx's own:   %s", t.Name(), ext,
			describeLamps(r.lamps[ext].documents()[ours[ext]:]), describeLamps(n[ext].documents()[from[ext]:]))
	}
}

// describeLamps is a lamp's course in short: each distinct state in
// turn, a call as state(direction remote "name"), with +ids when it
// carries the Call-ID and both tags.
func describeLamps(docs []lamp) string {
	var out []string
	for _, d := range docs {
		var calls []string
		for _, c := range d.Dialogs {
			if c.State == "terminated" {
				continue
			}
			s := c.State + "("
			if c.Direction != "" {
				s += c.Direction + " "
			}
			s += userOf(c.Remote)
			if c.RemoteName != "" {
				s += fmt.Sprintf(" %q", c.RemoteName)
			}
			if c.Held {
				s += " held"
			}
			if c.CallID != "" && c.LocalTag != "" && c.RemoteTag != "" {
				s += " +ids"
			}
			calls = append(calls, s+")")
		}
		desc := strings.Join(calls, " & ")
		if desc == "" {
			desc = "idle"
		}
		if d.Phone != "" && d.Phone != "idle" && d.Phone != "busy" && d.Phone != "ringing" && d.Phone != "held" {
			desc += " [" + d.Phone + "]"
		}
		if len(out) == 0 || out[len(out)-1] != desc {
			out = append(out, desc)
		}
	}
	return strings.Join(out, " → ")
}
