package presence

import "github.com/lamplighter/lamplighter/presence/sipmsg"

// Tenants: when the directory has tenants (bridge.Directory.HasTenants), a
// request is for the tenant its Request-URI's domain names, and stays in
// it: an unknown domain is no one's (404); a To, a From or an
// authenticated watcher of another tenant is refused (403) unless the
// tenancy lets that tenant's watchers see this one's people (they log in
// as username@their-domain, auth.go); digest credentials are those of the
// tenant, under its realm. With no tenants every domain reaches the one
// directory, as always.

// requestTenant returns the tenant req is for, or answers it (404 for a
// domain that is no tenant's, 403 for a request that crosses tenants)
// and returns false. id is who sent it.
func (s *Server) requestTenant(req *sipmsg.Request, tx serverTx, id identity) (string, bool) {
	dir := s.states.Directory()
	if !dir.HasTenants() {
		return "", true
	}
	t, ok := dir.Tenant(req.URI.Host)
	if !ok {
		s.reply(req, tx, 404, "Not Found")
		return "", false
	}
	cross := false
	if to, ok := dir.Tenant(req.To.URI.Host); !ok || to != t {
		cross = true // the To names a presentity elsewhere than the Request-URI
	}
	switch {
	case id.UserID != "":
		if u, ok := dir.User(id.UserID); !ok || !dir.Sees(u.Tenant, t) {
			cross = true
		}
	case id.Trusted:
		// A trusted sender speaks for its From: not for another
		// tenant's (an address or the default domain is the default's).
		if from, ok := dir.Tenant(req.From.URI.Host); ok && !dir.Sees(from, t) {
			cross = true
		}
	}
	if cross {
		s.log.Info("a request across tenants refused", "method", req.Method, "request_uri_domain", req.URI.Host,
			"to_domain", req.To.URI.Host, "from_domain", req.From.URI.Host, "watcher", id.UserID, "source", req.Source)
		s.reply(req, tx, 403, "Forbidden")
		return "", false
	}
	return t, true
}
