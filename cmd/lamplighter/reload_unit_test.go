package main

import (
	"testing"

	"github.com/lamplighter/lamplighter/bridge"
)

func TestPBXsWithNewDevices(t *testing.T) {
	dir := func(users ...bridge.User) *bridge.Directory {
		d, err := bridge.NewDirectory(users)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	old := dir(bridge.User{ID: "a", Extensions: []string{"100"}, Devices: []bridge.DeviceRef{{Source: "ast", Device: "PJSIP/100"}}})
	next := dir(
		bridge.User{ID: "a", Extensions: []string{"100"}, Devices: []bridge.DeviceRef{{Source: "ast", Device: "PJSIP/100"}}},
		bridge.User{ID: "b", Extensions: []string{"101"}, Devices: []bridge.DeviceRef{{Source: "fs", Device: "1001"}}})
	got := pbxsWithNewDevices(old, next)
	if len(got) != 1 || !got["fs"] {
		t.Errorf("new devices on %v, want only fs", got)
	}
	if got := pbxsWithNewDevices(next, old); len(got) != 0 {
		t.Errorf("removing a device asks %v to resync", got)
	}
}
