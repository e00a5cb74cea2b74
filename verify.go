package kvsecrets

import (
	"context"
	"crypto/subtle"
	"errors"
	"slices"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
)

// ErrMismatch: a key presented to [Provider.Verify] matches none of the
// versions it accepts. The error never contains the presented key.
var ErrMismatch = errors.New("kvsecrets: presented key does not match")

// Verify checks a key presented by a client — an API key your service
// issued and keeps in Key Vault — against the secret's latest version and,
// during the overlap after a rotation, the versions it replaced, so that
// clients still holding the previous key keep working while they move to
// the new one. It returns the version that matched, or an error wrapping
// ErrMismatch.
//
// A previous version is accepted while it is enabled, unexpired, within
// its nbf, and replaced less than Options.VerifyOverlap ago (default 24h; a
// version is replaced when the next newer one is created), and only the
// Options.VerifyPrevious newest such versions (default 2). Comparisons take
// the same time whatever the key's contents.
//
// The accepted versions are read through the versions list and cached like
// Get's values: one read per burst, refreshed in the background ahead of
// TTL, served stale through outages up to MaxStale, dropped at once on a
// revocation, and re-read at once when a rotation is seen. A cached Verify
// makes no request and allocates nothing (when the secret has no tags).
func (p *Provider) Verify(ctx context.Context, name, presented string) (Secret, error) {
	if e := (*p.idx.read.Load())[name]; e != nil {
		if ve := e.verifier.Load(); ve != nil {
			if st := ve.state.Load(); st.ready && !p.closed.Load() {
				p.hits.inc()
				return matchKey(st, presented)
			}
		}
	}
	if p.closed.Load() {
		return Secret{}, &SecretError{Name: name, Kind: ErrClosed}
	}
	e, err := p.entryFor(name)
	if err != nil {
		return Secret{}, err
	}
	ve, created := e.keySet()
	if created {
		p.entries.Add(1)
	}
	st, err := p.read(ctx, ve, name)
	if err != nil {
		return Secret{}, err
	}
	return matchKey(st, presented)
}

// matchKey compares presented with every accepted version in constant time
// and returns the one that matched.
func matchKey(st *state, presented string) (Secret, error) {
	found := -1
	for i := range st.accepted {
		if constantTimeEqual(st.accepted[i].Value(), presented) && found < 0 {
			found = i
		}
	}
	if found < 0 {
		return Secret{}, st.mismatch
	}
	return st.accepted[found].clone(), nil
}

// constantTimeEqual reports whether a == b in time that depends only on
// their lengths, without converting them to byte slices.
func constantTimeEqual(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	var v byte
	for i := 0; i < len(a); i++ {
		v |= a[i] ^ b[i]
	}
	return subtle.ConstantTimeByteEq(v, 0) == 1
}

// fetchKeySet reads the versions Verify accepts: the latest, then the
// newest previous versions still within the overlap.
func (p *Provider) fetchKeySet(ctx context.Context, e *entry) (fetched, error) {
	latest, err := p.getSecret(ctx, e, "")
	if err != nil {
		return fetched{}, err
	}
	type prop struct {
		version                     string
		created, expires, notBefore time.Time
		enabled                     bool
	}
	var props []prop
	p.vaultRequests.Add(1)
	pager := p.client.NewListSecretPropertiesVersionsPager(e.name, nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return fetched{}, err
		}
		for _, sp := range page.Value {
			if sp == nil || sp.ID == nil {
				continue
			}
			_, version, ok := parseSecretID(string(*sp.ID))
			if !ok {
				continue
			}
			pr := prop{version: version, enabled: true}
			if a := sp.Attributes; a != nil {
				if a.Created != nil {
					pr.created = *a.Created
				}
				if a.Expires != nil {
					pr.expires = *a.Expires
				}
				if a.NotBefore != nil {
					pr.notBefore = *a.NotBefore
				}
				if a.Enabled != nil {
					pr.enabled = *a.Enabled
				}
			}
			props = append(props, pr)
		}
	}
	// Newest first; the list's order is not documented.
	slices.SortStableFunc(props, func(a, b prop) int { return b.created.Compare(a.created) })

	accepted := []Secret{latest}
	now := time.Now()
	replacedAt := time.Time{} // when the version after the one looked at was created
	for _, pr := range props {
		if pr.version == latest.Version {
			replacedAt = pr.created
			continue
		}
		if replacedAt.IsZero() {
			continue // newer than the latest we read: created meanwhile; the next refresh sees it
		}
		replaced := replacedAt
		replacedAt = pr.created
		if now.Sub(replaced) >= p.cfg.verifyOverlap {
			break // this one and every older one were replaced too long ago
		}
		if len(accepted)-1 >= p.cfg.verifyPrevious {
			break
		}
		if !pr.enabled || (!pr.expires.IsZero() && !now.Before(pr.expires)) || (!pr.notBefore.IsZero() && now.Before(pr.notBefore)) {
			continue
		}
		old, err := p.getSecret(ctx, e, pr.version)
		if err != nil {
			var re *azcore.ResponseError
			if errors.Is(err, errDisabledAnswer) || (errors.As(err, &re) && (re.StatusCode == 403 || re.StatusCode == 404)) {
				continue // disabled or gone since the list was read
			}
			return fetched{}, err
		}
		accepted = append(accepted, old)
	}
	return fetched{sec: latest, accepted: accepted}, nil
}
