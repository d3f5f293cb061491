package presence

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/icholy/digest"

	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// Credential is one user's SIP login for SUBSCRIBE, PUBLISH and REGISTER.
type Credential struct {
	Username string // the digest username
	UserID   string // the directory user it authenticates as
	Password string
	// Tenant is the user's tenant ("" the default domain): the username
	// is checked only for requests to that tenant, under its realm.
	Tenant string
	// Pending: the login is known but its password not yet (a PBX's,
	// not read since the start). It lets no one in, and ends no
	// subscription it let in before.
	Pending bool
}

// credKey is a credential's key: its username, with @tenant for a
// tenant's (usernames are unique per tenant only).
func credKey(tenant, username string) string {
	if tenant == "" {
		return username
	}
	return username + "@" + tenant
}

// identity is who sent a request, once authenticated.
type identity struct {
	UserID   string // "" when a trusted request names no known user
	Trusted  bool   // came from a trusted network, no digest checked
	Username string // the digest username that passed
	Flow     bool   // let in by the flow its user registered on (proxy mode)
}

// authOutcome is the result of checking a request's credentials.
type authOutcome int

const (
	authOK        authOutcome = iota
	authChallenge             // no or unusable credentials: 401 with a fresh challenge
	authStale                 // right password, expired nonce: 401 stale=true
	authFailed                // wrong credentials: 401, counted as a failure
	authReplay                // a nonce count used before: 401, logged
)

// authenticator checks digest credentials (RFC 7616, 8760: SHA-256 and
// MD5, qop=auth) against the configured users, and lets trusted networks
// in. Nonces are stateless to issue and bound to the host and dialog
// they were issued for (nonce.go), valid for nonceTTL; the counts used
// with each nonce that passed are kept (bounded) so that none serves
// twice.
type authenticator struct {
	realm string   // the default domain's realm
	algs  []string // challenges offered, in order
	// tenantOf names the tenant of a request's domain (nil: none) and
	// realms their realms where they are not the domain itself; sees
	// says whose people a tenant's watchers may watch.
	tenantOf func(host string) (string, bool)
	sees     func(watcher, target string) bool
	realms   map[string]string
	// byRealm holds each realm's challenge texts, made when first used.
	byRealm sync.Map // realm → *challengeText
	key     [32]byte
	macs    *nonceMACs
	uses    *nonceUses
	trusted []netip.Prefix
	// flowUser, in proxy mode, names the user a request's registered
	// flow stands for ("" for none).
	flowUser func(*sipmsg.Request) string
	// isUser, in proxy mode, says whether a user id is still in the
	// directory: what a flow's grant holds by.
	isUser   func(id string) bool
	creds    atomic.Pointer[map[string]Credential] // by username
	nonceTTL time.Duration
	now      func() time.Time
}

// challengeText is a realm's WWW-Authenticate values around the nonce,
// one per algorithm, written once: a challenge only puts its nonce
// between them (a flood of unauthenticated requests spent a third of its
// CPU writing whole challenges).
type challengeText struct {
	prefix      []string // `Digest realm="R", nonce="`
	freshSuffix []string // `", algorithm=A, qop="auth"`
	staleSuffix []string // `", stale=true, algorithm=A, qop="auth"`
}

// texts returns the challenge texts of a realm.
func (a *authenticator) texts(realm string) *challengeText {
	if t, ok := a.byRealm.Load(realm); ok {
		return t.(*challengeText)
	}
	t := &challengeText{}
	for _, alg := range a.algs {
		const mark = "NONCE"
		c := digest.Challenge{Realm: realm, Nonce: mark, Algorithm: alg, QOP: []string{"auth"}}
		pre, post, _ := strings.Cut(c.String(), `nonce="`+mark)
		t.prefix, t.freshSuffix = append(t.prefix, pre+`nonce="`), append(t.freshSuffix, post)
		c.Stale = true
		_, post, _ = strings.Cut(c.String(), `nonce="`+mark)
		t.staleSuffix = append(t.staleSuffix, post)
	}
	got, _ := a.byRealm.LoadOrStore(realm, t)
	return got.(*challengeText)
}

// loginKey is the credential key a digest username names for a request
// to tenant: the tenant's own username, or username@domain of a tenant
// whose watchers may watch this one's people.
func (a *authenticator) loginKey(tenant, username string) string {
	if name, domain, ok := strings.Cut(username, "@"); ok && a.tenantOf != nil && a.sees != nil {
		if from, known := a.tenantOf(domain); known && a.sees(from, tenant) {
			return credKey(from, name)
		}
	}
	return credKey(tenant, username)
}

// tenantRealm returns the tenant a request is for and its realm: the
// default realm for the default domain (and for a domain that is no
// one's: the request is refused after authentication).
func (a *authenticator) tenantRealm(req *sipmsg.Request) (string, string) {
	if a.tenantOf == nil {
		return "", a.realm
	}
	t, ok := a.tenantOf(req.URI.Host)
	if !ok || t == "" {
		return "", a.realm
	}
	if r, ok := a.realms[t]; ok {
		return t, r
	}
	return t, t
}

// maxNonceUses bounds the nonces whose counts are kept: about 6 MiB.
const maxNonceUses = 1 << 16

func newAuthenticator(realm string, algs []string, trusted []netip.Prefix, creds []Credential) *authenticator {
	if len(algs) == 0 {
		algs = []string{"MD5"}
	}
	a := &authenticator{realm: realm, algs: algs, trusted: trusted, nonceTTL: 5 * time.Minute, now: time.Now,
		uses: newNonceUses(maxNonceUses)}
	if _, err := rand.Read(a.key[:]); err != nil {
		panic("presence: no randomness: " + err.Error())
	}
	a.macs = &nonceMACs{key: a.key}
	a.texts(realm)
	a.setCredentials(creds)
	return a
}

func (a *authenticator) setCredentials(creds []Credential) {
	m := make(map[string]Credential, len(creds))
	for _, c := range creds {
		m[credKey(c.Tenant, c.Username)] = c
	}
	a.creds.Store(&m)
}

// isTrusted reports whether a request's source address is in a trusted
// network.
func (a *authenticator) isTrusted(source string) bool {
	host, _, err := net.SplitHostPort(source)
	if err != nil {
		host = source
	}
	ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil {
		return false
	}
	return a.isTrustedIP(ip)
}

// isTrustedIP reports whether ip is in a trusted network.
func (a *authenticator) isTrustedIP(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range a.trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// userByName returns the credential for a digest username in the
// default domain, or for credKey(tenant, username).
func (a *authenticator) userByName(name string) (Credential, bool) {
	c, ok := (*a.creds.Load())[name]
	return c, ok
}

// check authenticates req. A trusted request is accepted as the user its
// From names (if any); any other needs a valid Authorization (or
// Proxy-Authorization) header.
func (a *authenticator) check(req *sipmsg.Request) (identity, authOutcome) {
	tenant, realm := a.tenantRealm(req)
	if trusted := req.Peer.IsValid() && a.isTrustedIP(req.Peer.Addr()) || !req.Peer.IsValid() && a.isTrusted(req.Source); trusted {
		id := identity{Trusted: true}
		from := tenant
		if a.tenantOf != nil {
			if ft, ok := a.tenantOf(req.From.URI.Host); ok {
				from = ft // the From's own tenant: checked against the target's (tenant.go)
			}
		}
		if c, ok := a.userByName(credKey(from, req.From.URI.User)); ok {
			id.UserID = c.UserID
		}
		return id, authOK
	}
	if a.flowUser != nil {
		if u := a.flowUser(req); u != "" {
			return identity{UserID: u, Flow: true}, authOK
		}
	}
	h, ok := req.Get(sipmsg.Authorization)
	if !ok {
		h, ok = req.Get(sipmsg.ProxyAuthorization)
	}
	if !ok {
		return identity{}, authChallenge
	}
	cred, ok := parseCredentials(h)
	if !ok || cred.Realm != realm || cred.Username == "" {
		return identity{}, authChallenge
	}
	key := a.loginKey(tenant, cred.Username)
	user, ok := a.userByName(key)
	if ok && user.Pending {
		return identity{}, authChallenge // not known yet: ask again, do not count a failure
	}
	if !ok || user.Password == "" {
		return identity{}, authFailed
	}
	alg := strings.ToUpper(cred.Algorithm)
	if alg == "" {
		alg = "MD5"
	}
	if !slices.Contains(a.algs, alg) {
		return identity{}, authChallenge
	}
	if cred.QOP != "" && cred.QOP != "auth" {
		return identity{}, authChallenge
	}
	if !uriMatches(cred.URI, req.URI) {
		return identity{}, authFailed
	}
	var ip [16]byte
	nonce := a.macs.check(cred.Nonce, requestIP(ip[:0], req), req.CallID, a.now(), a.nonceTTL)
	if !nonce.ours {
		return identity{}, authChallenge
	}
	chal := &digest.Challenge{Realm: realm, Nonce: cred.Nonce, Algorithm: cred.Algorithm}
	if cred.QOP != "" {
		chal.QOP = []string{cred.QOP}
	}
	want, err := digest.Digest(chal, digest.Options{
		Method: req.Method, URI: cred.URI, Username: cred.Username, Password: user.Password,
		Count: cred.Nc, Cnonce: cred.Cnonce,
	})
	if err != nil || subtle.ConstantTimeCompare([]byte(strings.ToLower(want.Response)), []byte(strings.ToLower(cred.Response))) != 1 {
		return identity{}, authFailed
	}
	// The right password, under a nonce that is ours: it must also be
	// young, for this host and dialog, and its count new (RFC 7616
	// §3.3). A nonce from another dialog is a client's to renew
	// (stale); a count used before is a replay: challenged afresh.
	if !nonce.fresh || !nonce.bound {
		return identity{}, authStale
	}
	nc := uint32(0)
	if cred.QOP != "" {
		if cred.Nc <= 0 || cred.Nc > 0xffffffff {
			return identity{}, authChallenge
		}
		nc = uint32(cred.Nc)
	}
	if !a.uses.use(nonce.raw, nc) {
		return identity{}, authReplay
	}
	// The name outlives the request, whose bytes may be reused.
	return identity{UserID: user.UserID, Username: strings.Clone(key)}, authOK
}

// Grants: a subscription records what let its watcher in, so that a
// reload or a restart can tell whether the config still does. A grant is
// "trusted" (a trusted network), or "digest:USERNAME:SALT:MAC" where MAC
// is an HMAC, keyed by a random salt, of the username, user id and
// password that passed: a changed password no longer matches, and the
// state file holds no password or unsalted hash.
const grantTrusted = "trusted"

// grant returns the grant for an authenticated identity.
func (a *authenticator) grant(id identity) string {
	if id.Flow {
		return grantFlow
	}
	if id.Username == "" {
		return grantTrusted
	}
	c, ok := a.userByName(id.Username)
	if !ok {
		return grantTrusted
	}
	var salt [8]byte
	_, _ = rand.Read(salt[:])
	saltHex := hex.EncodeToString(salt[:])
	return "digest:" + id.Username + ":" + saltHex + ":" + grantMAC(saltHex, c)
}

func grantMAC(salt string, c Credential) string {
	m := hmac.New(sha256.New, []byte(salt))
	m.Write([]byte(c.Username + "\x00" + c.UserID + "\x00" + c.Password))
	return hex.EncodeToString(m.Sum(nil)[:16])
}

// Reasons a subscription ends when the config no longer lets its watcher
// in (RFC 6665 §4.1.3): rejected (the watcher is gone or no longer
// trusted: do not come back) or deactivated (the password changed: a new
// SUBSCRIBE with the new password is welcome).
const (
	reasonRejected    = "rejected"
	reasonDeactivated = "deactivated"
)

// revoked checks a grant against the current config: "" while it holds,
// else the reason to end the subscription. source is where the watcher's
// requests come from; watcher the user id it authenticated as. Grants
// saved before grants existed ("") hold for trusted sources and for
// watchers who still have credentials.
func (a *authenticator) revoked(grant, source, watcher string) string {
	switch {
	case grant == grantFlow:
		// The PBX decides who registers; the directory who is a user.
		if a.isUser != nil && a.isUser(watcher) {
			return ""
		}
		return reasonRejected
	case grant == grantTrusted:
		if a.isTrusted(source) {
			return ""
		}
		return reasonRejected
	case grant == "":
		if a.isTrusted(source) {
			return ""
		}
		for _, c := range *a.creds.Load() {
			if watcher != "" && c.UserID == watcher && c.Password != "" {
				return ""
			}
		}
		return reasonRejected
	}
	rest, ok := strings.CutPrefix(grant, "digest:")
	parts := strings.Split(rest, ":")
	if !ok || len(parts) != 3 {
		return reasonRejected
	}
	c, ok := a.userByName(parts[0])
	if ok && c.Pending && (watcher == "" || c.UserID == watcher) {
		return "" // checked when the password is read
	}
	if !ok || c.Password == "" || (watcher != "" && c.UserID != watcher) {
		return reasonRejected
	}
	if !hmac.Equal([]byte(grantMAC(parts[1], c)), []byte(parts[2])) {
		return reasonDeactivated
	}
	return ""
}

// uriMatches checks that the digest-uri names the request's target (user
// and host), as RFC 3261 §22.4 asks, tolerating parameter differences.
func uriMatches(digestURI string, target sipmsg.URI) bool {
	u, err := sipmsg.ParseURI(digestURI)
	if err != nil {
		return false
	}
	return strings.EqualFold(u.User, target.User) && strings.EqualFold(u.Host, target.Host)
}

// nonceFor is a fresh nonce for req, in hex.
func (a *authenticator) nonceFor(req *sipmsg.Request) string {
	var ip [16]byte
	raw := a.macs.make(a.now().Unix(), requestIP(ip[:0], req), req.CallID)
	return hex.EncodeToString(raw[:])
}

// appendChallenges appends the WWW-Authenticate (or, for a proxy,
// Proxy-Authenticate) header fields of a 401 for req to b, one per
// configured algorithm, under one fresh nonce bound to req's host and
// Call-ID.
func (a *authenticator) appendChallenges(b []byte, header string, req *sipmsg.Request, stale bool) []byte {
	var hexNonce [2 * nonceBytes]byte
	var ip [16]byte
	raw := a.macs.make(a.now().Unix(), requestIP(ip[:0], req), req.CallID)
	hex.Encode(hexNonce[:], raw[:])
	_, realm := a.tenantRealm(req)
	t := a.texts(realm)
	suffix := t.freshSuffix
	if stale {
		suffix = t.staleSuffix
	}
	for i := range t.prefix {
		b = append(b, header...)
		b = append(b, ": "...)
		b = append(b, t.prefix[i]...)
		b = append(b, hexNonce[:]...)
		b = append(b, suffix[i]...)
		b = append(b, "\r\n"...)
	}
	return b
}

// challenges are the challenge values for req (appendChallenges), as
// strings.
func (a *authenticator) challenges(req *sipmsg.Request, stale bool) []string {
	n := a.nonceFor(req)
	_, realm := a.tenantRealm(req)
	t := a.texts(realm)
	suffix := t.freshSuffix
	if stale {
		suffix = t.staleSuffix
	}
	out := make([]string, len(t.prefix))
	for i := range out {
		out[i] = t.prefix[i] + n + suffix[i]
	}
	return out
}

// parseCredentials reads a Digest Authorization or Proxy-Authorization
// value (RFC 7616 §3.4) as digest.ParseCredentials does, straight from
// the header's bytes: every request of a flood with credentials is read
// before it can be refused, and the library's reader cost as much as the
// rest of the refusal (a scanner and a map per header).
func parseCredentials(h string) (digest.Credentials, bool) {
	var c digest.Credentials
	scheme, rest, _ := strings.Cut(strings.TrimSpace(h), " ")
	if !strings.EqualFold(scheme, "Digest") {
		return c, false
	}
	for p := range sipmsg.SplitList(rest) {
		name, value, ok := strings.Cut(p, "=")
		if !ok {
			return c, false
		}
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if len(value) >= 2 && value[0] == '"' {
			if value[len(value)-1] != '"' {
				return c, false
			}
			value = value[1 : len(value)-1]
			if strings.IndexByte(value, '\\') >= 0 { // quoted-pair (RFC 7230 §3.2.6)
				var b strings.Builder
				for i := 0; i < len(value); i++ {
					if value[i] == '\\' && i+1 < len(value) {
						i++
					}
					b.WriteByte(value[i])
				}
				value = b.String()
			}
		}
		switch strings.ToLower(name) {
		case "username":
			c.Username = value
		case "realm":
			c.Realm = value
		case "nonce":
			c.Nonce = value
		case "uri":
			c.URI = value
		case "response":
			c.Response = value
		case "algorithm":
			c.Algorithm = value
		case "cnonce":
			c.Cnonce = value
		case "opaque":
			c.Opaque = value
		case "qop":
			c.QOP = value
		case "nc":
			nc, err := strconv.ParseUint(value, 16, 32)
			if err != nil {
				return c, false
			}
			c.Nc = int(nc)
		case "userhash":
			c.Userhash = strings.EqualFold(value, "true")
		}
	}
	return c, true
}
