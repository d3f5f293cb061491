package main

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/adapters/esl/esltest"
	"github.com/lamplighter/lamplighter/cluster/natstest"
	"github.com/lamplighter/lamplighter/presence/baresiptest"
)

// TestClusterSoftphonesKeepTheirLamps is the site administrator's check
// with real softphones: three Lamplighter nodes on a three-server NATS
// cluster, each following the same PBX (a FreeSWITCH double each), two
// baresip phones watching Debbie through different nodes. Mid-call the
// node holding the first phone's subscription is killed; when the call
// ends, both phones show it within the failover bound, the first one
// without subscribing again (the surviving node NOTIFYs it in the same
// dialog), and every surviving node's API (what the switchboard shows)
// has Debbie right all along.
func TestClusterSoftphonesKeepTheirLamps(t *testing.T) {
	baresiptest.Need(t)
	nats := natstest.Start(t, 3)
	bin := buildBinary(t)
	const ttl = 2 * time.Second
	type node struct {
		p         *process
		pbx       *esltest.Server
		sip, http string
		cfg, name string
	}
	var nodes []*node
	for _, name := range []string{"a", "b", "c"} {
		n := &node{pbx: eslDouble(t), name: name}
		// Debbie's phone is registered with the PBX.
		n.pbx.SetRegistrations([]byte(`{"row_count":1,"rows":[{"reg_user":"100","realm":"cluster.test","token":"reg-100",` +
			`"url":"sofia/internal/sip:100@127.0.0.1:5090","expires":"` + strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10) + `"}]}`))
		n.cfg = clusterConfig(t, t.TempDir(), name, nats.URLs(), ttl.String(), n.pbx.Addr())
		n.p = start(t, bin, n.cfg)
		n.sip, n.http = addrs(t, n.p)
		if _, err := n.pbx.WaitLogin(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	a, b, c := nodes[0], nodes[1], nodes[2]
	phone := func(via *node) *baresiptest.Phone {
		return baresiptest.Start(t, baresiptest.Options{Account: "<sip:reception@127.0.0.1>;regint=0",
			Contacts: []baresiptest.Contact{{Name: "Debbie", URI: "sip:100@" + via.sip}}})
	}
	p1, p2 := phone(a), phone(b)
	p1.WaitPresence("Debbie", "Online", 15*time.Second)
	p2.WaitPresence("Debbie", "Online", 15*time.Second)
	waitReady(t, a.http, `"dialogs_owned":1`)

	// The switchboard of every node shows Debbie as the PBX has her.
	shows := func(n *node, state string) bool {
		code, body := apiDo(t, "GET", "http://"+n.http+"/api/v1/users/100", "s3cret", "")
		return code == 200 && strings.Contains(body, `"state": "`+state+`"`)
	}
	allShow := func(state string, ns ...*node) {
		t.Helper()
		for _, n := range ns {
			waitUntil(t, 5*time.Second, "node "+n.name+" shows "+state, func() bool { return shows(n, state) })
		}
	}
	allShow("idle", a, b, c)

	for _, n := range nodes {
		if err := n.pbx.Send(answeredCall("100@cluster.test")...); err != nil {
			t.Fatal(err)
		}
	}
	p1.WaitPresence("Debbie", "Busy", 5*time.Second)
	p2.WaitPresence("Debbie", "Busy", 5*time.Second)
	allShow("busy", a, b, c)
	subscribes := strings.Count(p1.Output(), "SUBSCRIBE sip:100@")
	settled(t, b.http)
	settled(t, c.http)

	a.p.kill()
	// The surviving nodes never show anything but the call meanwhile.
	for _, n := range []*node{b, c} {
		if !shows(n, "busy") {
			t.Errorf("node %s does not show the call after node a died", n.name)
		}
	}
	// Which node took the dialog over: the one whose claims count grows.
	waitUntil(t, ttl+3*time.Second, "a surviving node claims node a's dialog", func() bool {
		return metric(t, b.http, "lamplighter_cluster_claims_total")+metric(t, c.http, "lamplighter_cluster_claims_total") == 1
	})
	for _, n := range []*node{b, c} {
		if err := n.pbx.Send(hungUpCall("100@cluster.test")...); err != nil {
			t.Fatal(err)
		}
	}
	p1.WaitPresence("Debbie", "Online", 5*time.Second)
	p2.WaitPresence("Debbie", "Online", 5*time.Second)
	allShow("idle", b, c)
	if n := strings.Count(p1.Output(), "SUBSCRIBE sip:100@"); n != subscribes {
		t.Errorf("the first phone sent %d SUBSCRIBEs after the failover: it had to subscribe again", n-subscribes)
	}
}

// hungUpCall is FreeSWITCH's event for the end of answeredCall's call.
func hungUpCall(device string) []string {
	ev := answeredCall(device)
	for i := 0; i+1 < len(ev); i += 2 {
		switch ev[i] {
		case "Event-Name":
			ev[i+1] = "CHANNEL_HANGUP_COMPLETE"
		case "Channel-Call-State":
			ev[i+1] = "HANGUP"
		case "Answer-State":
			ev[i+1] = "hangup"
		}
	}
	return append(ev, "Hangup-Cause", "NORMAL_CLEARING")
}
