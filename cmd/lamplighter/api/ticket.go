package api

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// A switchboard page signed in with a tenant's token (or the API token)
// shows that tenant's people (or everyone). A browser's EventSource
// cannot send an Authorization header, so the page trades its
// credentials for a stream ticket (POST /api/v1/stream-ticket), which it
// puts in the stream's URL: an HMAC of who it stands for and until when,
// under a key made at start (a restart makes the page ask again).

// TicketTTL is how long a stream ticket is good for; the page asks for a
// new one when its stream ends.
const TicketTTL = time.Hour

// ticketKey is made once per API.
func (a *API) ticketKey() []byte {
	a.keyOnce.Do(func() {
		a.key = make([]byte, 32)
		if _, err := rand.Read(a.key); err != nil {
			panic("api: no randomness: " + err.Error())
		}
	})
	return a.key
}

// StreamTicket is a ticket for c's switchboard stream, good until TicketTTL
// from now.
func (a *API) StreamTicket(c Caller) string {
	admin := "0"
	if c.Admin {
		admin = "1"
	}
	payload := strings.Join([]string{admin, c.Tenant, c.UserID, strconv.FormatInt(a.opt.Now().Add(TicketTTL).Unix(), 10)}, "\x00")
	m := hmac.New(sha256.New, a.ticketKey())
	m.Write([]byte(payload))
	return base64.RawURLEncoding.EncodeToString([]byte(payload)) + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// errTicket is a ticket that is not ours or has run out.
var errTicket = errors.New("a stream ticket that is not good (any more): sign in again")

// TicketCaller returns whom a stream ticket stands for.
func (a *API) TicketCaller(ticket string) (Caller, error) {
	p64, mac64, ok := strings.Cut(ticket, ".")
	payload, err1 := base64.RawURLEncoding.DecodeString(p64)
	mac, err2 := base64.RawURLEncoding.DecodeString(mac64)
	if !ok || err1 != nil || err2 != nil {
		return Caller{}, errTicket
	}
	m := hmac.New(sha256.New, a.ticketKey())
	m.Write(payload)
	if !hmac.Equal(mac, m.Sum(nil)) {
		return Caller{}, errTicket
	}
	f := strings.Split(string(payload), "\x00")
	if len(f) != 4 {
		return Caller{}, errTicket
	}
	until, err := strconv.ParseInt(f[3], 10, 64)
	if err != nil || a.opt.Now().Unix() > until {
		return Caller{}, errTicket
	}
	return Caller{Admin: f[0] == "1", Tenant: f[1], UserID: f[2]}, nil
}

func (a *API) streamTicket(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"ticket": a.StreamTicket(callerOf(r))})
}
