package pbxtest

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/presence/baresiptest"
)

// Both PBXs start on free ports, take a real phone's registration and
// stop; a stopped one starts again on the same ports.
func TestPBXsRunAndTakeRegistrations(t *testing.T) {
	baresiptest.Need(t)
	t.Run("asterisk", func(t *testing.T) {
		t.Parallel()
		a := StartAsterisk(t, Config{})
		phone := baresiptest.Start(t, baresiptest.Options{
			Account: fmt.Sprintf("<sip:100@%s>;auth_pass=100;regint=300", a.SIP())})
		if !Wait(15*time.Second, func() bool { return strings.Contains(a.CLI("pjsip show contacts"), "100/sip:") }) {
			t.Fatalf("phone 100 did not register:\n%s", a.CLI("pjsip show contacts"))
		}
		phone.WaitOutput("200 OK", 5*time.Second)
		a.Restart()
		if !strings.Contains(a.CLI("core show version"), AsteriskVersion) {
			t.Fatal("Asterisk does not answer after its restart")
		}
	})
	t.Run("freeswitch", func(t *testing.T) {
		t.Parallel()
		f := StartFreeSWITCH(t, Config{})
		baresiptest.Start(t, baresiptest.Options{
			Account: fmt.Sprintf("<sip:1000@%s>;auth_pass=1234;outbound=\"sip:%s\";regint=300", Domain, f.SIP())})
		if !Wait(15*time.Second, func() bool { return strings.Contains(f.API("sofia status profile internal reg"), "1000@") }) {
			t.Fatalf("phone 1000 did not register:\n%s", f.API("sofia status profile internal reg"))
		}
		f.Restart()
		if !strings.Contains(f.API("status"), "UP") {
			t.Fatal("FreeSWITCH does not answer after its restart")
		}
	})
}
