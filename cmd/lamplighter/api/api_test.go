package api

import (
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
)

type savedPersons map[string]bridge.PersonState

func (s savedPersons) SavePerson(user, origin string, p bridge.PersonState) error {
	s[origin+"/"+user] = p
	return nil
}

func (s savedPersons) DeletePerson(user, origin string) error {
	delete(s, origin+"/"+user)
	return nil
}

func setup(t *testing.T, token string) (*bridge.Bridge, savedPersons, *http.ServeMux, *time.Time) {
	t.Helper()
	dir, err := bridge.NewDirectory([]bridge.User{
		{ID: "debbie", Name: "Debbie Harry", Extensions: []string{"100"}, Groups: []string{"reception"},
			Devices: []bridge.DeviceRef{{Source: "pbx", Device: "PJSIP/100"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	b := bridge.New(dir)
	b.Apply(bridge.Snapshot{Source: "pbx", Devices: map[string]bridge.DeviceState{"PJSIP/100": bridge.DeviceIdle}})
	store := savedPersons{}
	now := time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC)
	a := New(Options{Bridge: b, Store: store, Watchers: func(string) int { return 3 }, Now: func() time.Time { return now }})
	a.SetToken(token)
	mux := http.NewServeMux()
	a.Handle(mux)
	return b, store, mux, &now
}

func call(mux http.Handler, method, path, token, body string) (int, string) {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

func TestTokenIsRequired(t *testing.T) {
	_, _, mux, _ := setup(t, "")
	if code, body := call(mux, "GET", "/api/v1/users", "anything", ""); code != 403 || !strings.Contains(body, "http.token") {
		t.Errorf("no token configured: %d %s", code, body)
	}
	_, _, mux, _ = setup(t, "tok")
	for _, tok := range []string{"", "tok2", "to"} {
		if code, _ := call(mux, "GET", "/api/v1/users", tok, ""); code != 401 {
			t.Errorf("token %q: %d, want 401", tok, code)
		}
	}
	if code, _ := call(mux, "GET", "/api/v1/users", "tok", ""); code != 200 {
		t.Errorf("right token: %d", code)
	}
}

func TestUsersAndPresence(t *testing.T) {
	b, store, mux, now := setup(t, "tok")
	code, body := call(mux, "GET", "/api/v1/users", "tok", "")
	var list struct{ Users []User }
	if err := json.Unmarshal([]byte(body), &list); err != nil || code != 200 || len(list.Users) != 1 {
		t.Fatalf("%d %s %v", code, body, err)
	}
	u := list.Users[0]
	if u.ID != "debbie" || u.State != "idle" || u.Watchers != 3 || len(u.Devices) != 1 || u.Devices[0].State != "idle" {
		t.Errorf("user %+v", u)
	}
	// By extension too; an unknown one is 404.
	if code, _ := call(mux, "GET", "/api/v1/users/100", "tok", ""); code != 200 {
		t.Errorf("by extension: %d", code)
	}
	if code, _ := call(mux, "GET", "/api/v1/users/999", "tok", ""); code != 404 {
		t.Errorf("unknown user: %d", code)
	}

	// A calendar sets a meeting for 90 minutes.
	code, body = call(mux, "PUT", "/api/v1/users/debbie/presence", "tok", `{"activity":"meeting","note":"Board","expires_in":"90m"}`)
	if code != 200 || !strings.Contains(body, `"meeting"`) {
		t.Fatalf("PUT: %d %s", code, body)
	}
	st, _ := b.State("debbie")
	if !st.Person.Has(bridge.ActivityMeeting) || st.Person.Note != "Board" || !st.Person.Expires.Equal(now.Add(90*time.Minute)) {
		t.Errorf("bridge person %+v", st.Person)
	}
	if p, ok := store["api/debbie"]; !ok || p.Note != "Board" {
		t.Errorf("not saved: %+v", store)
	}
	// DND turns the lamp.
	call(mux, "PUT", "/api/v1/users/100/presence", "tok", `{"activity":"dnd"}`)
	if st, _ := b.State("debbie"); st.Phone != bridge.PhoneDND {
		t.Errorf("lamp %v after dnd", st.Phone)
	}
	// Bad requests change nothing.
	for _, bad := range []string{`{"activity":"lunch"}`, `{}`, `{"activity":"away","expires_in":"soon"}`,
		`{"activity":"away","expires":"2020-01-01T00:00:00Z"}`, `{"activity":"away","colour":"red"}`, `not json`} {
		if code, body := call(mux, "PUT", "/api/v1/users/debbie/presence", "tok", bad); code != 400 {
			t.Errorf("%s: %d %s", bad, code, body)
		}
	}
	if st, _ := b.State("debbie"); st.Phone != bridge.PhoneDND {
		t.Errorf("a bad request changed the lamp to %v", st.Phone)
	}
	if code, _ := call(mux, "DELETE", "/api/v1/users/debbie/presence", "tok", ""); code != 204 {
		t.Errorf("DELETE: %d", code)
	}
	if st, _ := b.State("debbie"); st.Phone != bridge.PhoneIdle || !st.Person.IsZero() {
		t.Errorf("after DELETE: %v %+v", st.Phone, st.Person)
	}
	if _, ok := store["api/debbie"]; ok {
		t.Error("saved state not deleted")
	}
}

// TestOwnCredentials: a user signed in with their own SIP credentials
// reads everyone and sets only their own state; reload is the token's.
func TestOwnCredentials(t *testing.T) {
	dir, _ := bridge.NewDirectory([]bridge.User{{ID: "debbie", Extensions: []string{"100"}}, {ID: "bob", Extensions: []string{"101"}}})
	b := bridge.New(dir)
	a := New(Options{Bridge: b, Reload: func() (ReloadResult, error) { return ReloadResult{}, nil },
		CheckUser: func(user, pw string) (string, bool) { return "debbie", user == "debbie" && pw == "pw" }})
	mux := http.NewServeMux()
	a.Handle(mux)
	do := func(method, path, user, pw, body string) int {
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		req.SetBasicAuth(user, pw)
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		return rec.Code
	}
	for _, c := range []struct {
		method, path, user, pw, body string
		want                         int
	}{
		{"GET", "/api/v1/users", "debbie", "pw", "", 200},
		{"GET", "/api/v1/users", "debbie", "nope", "", 401},
		{"GET", "/api/v1/whoami", "debbie", "pw", "", 200},
		{"PUT", "/api/v1/users/100/presence", "debbie", "pw", `{"activity":"dnd"}`, 200},
		{"PUT", "/api/v1/users/bob/presence", "debbie", "pw", `{"activity":"dnd"}`, 403},
		{"DELETE", "/api/v1/users/bob/presence", "debbie", "pw", "", 403},
		{"POST", "/api/v1/reload", "debbie", "pw", "", 403},
	} {
		if got := do(c.method, c.path, c.user, c.pw, c.body); got != c.want {
			t.Errorf("%s %s as %s: %d, want %d", c.method, c.path, c.user, got, c.want)
		}
	}
	if st, _ := b.State("bob"); st.Phone == bridge.PhoneDND {
		t.Error("debbie set bob's state")
	}
}

// TestSmallThingsAdminsTripOver: the bearer scheme in any case; data after
// the JSON object refused; wrong credentials (token or Basic) logged with
// their source and counted, missing ones not.
func TestSmallThingsAdminsTripOver(t *testing.T) {
	dir, _ := bridge.NewDirectory([]bridge.User{{ID: "debbie", Name: "Debbie", Extensions: []string{"100"}}})
	var logged strings.Builder
	failures := 0
	a := New(Options{Bridge: bridge.New(dir), Store: savedPersons{},
		CheckUser:  func(u, p string) (string, bool) { return "debbie", u == "debbie" && p == "pw" },
		AuthFailed: func() { failures++ },
		Log:        slog.New(slog.NewTextHandler(&logged, nil))})
	a.SetToken("t0k")
	mux := http.NewServeMux()
	a.Handle(mux)
	do := func(method, auth, body string) int {
		req := httptest.NewRequest(method, "/api/v1/users/100/presence", strings.NewReader(body))
		req.RemoteAddr = "192.0.2.9:4711"
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		return rec.Code
	}
	if code := do("PUT", "bearer t0k", `{"activity":"dnd"}`); code != 200 {
		t.Errorf("lower-case bearer: %d", code)
	}
	if code := do("PUT", "BEARER t0k", `{"activity":"dnd"} {"activity":"away"}`); code != 400 {
		t.Errorf("a second JSON value after the body: %d, want 400", code)
	}
	if code := do("PUT", "Bearer t0k", `{"activity":"dnd"} trailing`); code != 400 {
		t.Errorf("garbage after the body: %d, want 400", code)
	}
	if code := do("PUT", "", `{"activity":"dnd"}`); code != 401 || failures != 0 {
		t.Errorf("no credentials: %d, %d failures counted (want 401, none)", code, failures)
	}
	if code := do("PUT", "Bearer wrong", `{}`); code != 401 || failures != 1 {
		t.Errorf("wrong token: %d, %d failures", code, failures)
	}
	if code := do("PUT", "Basic "+base64.StdEncoding.EncodeToString([]byte("debbie:nope")), `{}`); code != 401 || failures != 2 {
		t.Errorf("wrong Basic password: %d, %d failures", code, failures)
	}
	if n := strings.Count(logged.String(), `msg="authentication failed" method=HTTP source=192.0.2.9`); n != 2 {
		t.Errorf("%d failures logged with their source, want 2:\n%s", n, logged.String())
	}
}
