package config

import (
	"fmt"
	"testing"

	"github.com/lamplighter/lamplighter/adapters"
	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/discovery"
)

// BenchmarkDirectory10kIn100Tenants builds the directory from a
// FreeSWITCH whose directory holds 10,000 users in 100 domains (each a
// tenant), as every read of a changed directory does.
func BenchmarkDirectory10kIn100Tenants(b *testing.B) {
	cfg, err := Parse("c.yaml", []byte(`sip: {domain: pbx.example}
pbx:
  - {name: fs, kind: esl, address: "127.0.0.1:8021", password: p, discover: true}
`), func(string) (string, bool) { return "", false })
	if err != nil {
		b.Fatal(err)
	}
	var users []adapters.DiscoveredUser
	for t := range 100 {
		d := fmt.Sprintf("t%d.example", t)
		for i := range 100 {
			ext := fmt.Sprint(1000 + i)
			users = append(users, adapters.DiscoveredUser{PBX: "fs", Domain: d, Extension: ext, Name: "User " + ext,
				Device: ext + "@" + d, Context: "default", Groups: []string{"default"}})
		}
	}
	found := discovery.Found{"fs": users}
	b.ReportAllocs()
	var dir *bridge.Directory
	for b.Loop() {
		if dir, _, err = cfg.Directory(found); err != nil {
			b.Fatal(err)
		}
	}
	if dir.Len() != 10000 || len(dir.Tenants()) != 100 {
		b.Fatalf("%d users in %d tenants", dir.Len(), len(dir.Tenants()))
	}
}
