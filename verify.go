package kvsecrets

import (
	"context"
	"crypto/subtle"
	"errors"
	"slices"
	"strings"
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
// The latest version is the one Key Vault answers for the name. A replaced
// version is accepted only if it is one of the Options.VerifyPrevious
// (default 2) versions the latest most recently replaced, is enabled, and
// was replaced (the next newer version created) less than
// Options.VerifyOverlap ago (default 24h). Key Vault stamps versions to the
// second and lists them in no particular order: versions created in the
// same second are ordered by when this Provider saw each become the latest,
// and where it cannot tell them apart they are accepted together only if
// all fit within VerifyPrevious, so a version more rotations old than that
// is never accepted. Every accepted version, the latest included, matches
// only within its nbf and exp, and a replaced one only until its overlap
// ends: these are checked against the clock each time a key is presented.
// An empty key never matches. Comparisons take the same time whatever the
// key's contents.
//
// The accepted versions are read through the versions list and cached like
// Get's values: one read per burst, refreshed in the background ahead of
// TTL, served stale through outages up to MaxStale, re-read at once when a
// rotation is seen (by Get, Refresh, Rotate or an Event Grid event), and
// dropped at once when any read of the secret gets a not-found, disabled or
// forbidden answer. A cached Verify makes no request and allocates nothing
// (when the secret has no tags). [Provider.PreloadVerify] reads key sets at
// start-up.
func (p *Provider) Verify(ctx context.Context, name, presented string) (Secret, error) {
	if e := (*p.idx.read.Load())[name]; e != nil {
		if ve := e.verifier(); ve != nil {
			if st := ve.state.Load(); st.ready && !p.closed.Load() {
				p.touch(ve)
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
	ve := p.keySet(e)
	st, err := p.read(ctx, ve, name)
	if err != nil {
		return Secret{}, err
	}
	return matchKey(st, presented)
}

// PreloadVerify reads the accepted versions of the named secrets in
// parallel (at most Options.PreloadConcurrency at once), as a first Verify
// of each would, so that Verify on request paths makes no vault request.
// Every success stays cached; the result joins one error per failed
// secret, each naming it. Invalid names are reported before any request.
func (p *Provider) PreloadVerify(ctx context.Context, names ...string) error {
	return p.preload(ctx, "PreloadVerify", names, func(name string) error {
		_, err := p.Verify(ctx, name, "")
		if errors.Is(err, ErrMismatch) {
			return nil // the key set is cached; "" matches nothing
		}
		return err
	})
}

// matchKey compares presented with every accepted version in constant time
// and returns the one that matched within its window (nbf, exp, the end
// of its overlap), checked against the clock now.
func matchKey(st *state, presented string) (Secret, error) {
	ks := st.keys
	if presented == "" {
		return Secret{}, ks.mismatch // no key is never a key, whatever the vault holds
	}
	var now time.Time
	if ks.bounded {
		now = time.Now()
	}
	found := -1
	for i := range ks.accepted {
		eq := constantTimeEqual(ks.accepted[i].Value(), presented)
		if eq && found < 0 && (!ks.bounded || ks.windows[i].open(now)) {
			found = i
		}
	}
	if found < 0 {
		return Secret{}, ks.mismatch
	}
	return ks.accepted[found].clone(), nil
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

// fetchKeySet reads the versions Verify accepts: the latest (what GET
// /secrets/{name} answers), then those it replaced that selectPrevious
// keeps, each with the window in which it matches.
func (p *Provider) fetchKeySet(ctx context.Context, e *entry) (fetched, error) {
	latest, err := p.getSecret(ctx, e, "")
	if err != nil {
		return fetched{}, err
	}
	listed, err := p.listVersions(ctx, e)
	if err != nil {
		return fetched{}, err
	}
	history := p.sawLatest(e.parent(), latest.Version)
	accepted := []Secret{latest}
	windows := []keyWindow{{from: latest.NotBefore, until: latest.Expires}}
	for _, c := range selectPrevious(latest, listed, history, time.Now(), p.cfg.verifyOverlap, p.cfg.verifyPrevious) {
		old, err := p.getSecret(ctx, e, c.version)
		if err != nil {
			var re *azcore.ResponseError
			if errors.Is(err, errDisabledAnswer) || (errors.As(err, &re) && (re.StatusCode == 403 || re.StatusCode == 404)) {
				continue // disabled or gone since the list was read
			}
			return fetched{}, err
		}
		w := keyWindow{from: old.NotBefore, until: c.overlapEnd}
		if !old.Expires.IsZero() && old.Expires.Before(w.until) {
			w.until = old.Expires
		}
		accepted = append(accepted, old)
		windows = append(windows, w)
	}
	return fetched{sec: latest, accepted: accepted, windows: windows}, nil
}

// listedVersion is one version of the versions list.
type listedVersion struct {
	version          string
	created, expires time.Time
	notBefore        time.Time
	enabled          bool
	rank             int // index in the Provider's history of latest versions; -1 if never seen as the latest
}

// listVersions reads every page of the versions list of e's secret.
func (p *Provider) listVersions(ctx context.Context, e *entry) ([]listedVersion, error) {
	var out []listedVersion
	p.vaultRequests.Add(1)
	pager := p.client.NewListSecretPropertiesVersionsPager(e.name, nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		for _, sp := range page.Value {
			if sp == nil || sp.ID == nil {
				continue
			}
			_, version, ok := parseSecretID(string(*sp.ID))
			if !ok {
				continue
			}
			lv := listedVersion{version: version, enabled: true}
			if a := sp.Attributes; a != nil {
				if a.Created != nil {
					lv.created = *a.Created
				}
				if a.Expires != nil {
					lv.expires = *a.Expires
				}
				if a.NotBefore != nil {
					lv.notBefore = *a.NotBefore
				}
				if a.Enabled != nil {
					lv.enabled = *a.Enabled
				}
			}
			out = append(out, lv)
		}
	}
	return out, nil
}

// sawLatest records that version was read as the latest of le's name and
// returns the history of latest versions, oldest first.
func (p *Provider) sawLatest(le *entry, version string) []string {
	if le == nil {
		return []string{version}
	}
	le.mu.Lock()
	defer le.mu.Unlock()
	le.noteLatest(version)
	return slices.Clone(le.history())
}

// previousVersion is a version Verify accepts besides the latest, until
// overlapEnd (or its exp, if earlier).
type previousVersion struct {
	version    string
	overlapEnd time.Time
}

// selectPrevious decides which versions the latest replaced that Verify
// still accepts. Key Vault lists versions in no chronological order and
// stamps them to the second, so the rule is:
//
//   - Versions created after the latest are newer than the latest read and
//     are left to the next read. The others are ordered by created, newest
//     first.
//   - Versions created in the same second are ordered by when this Provider
//     saw each become the latest (history); where it did not see every one of
//     them, they cannot be told apart and form one group.
//   - Each version takes a place, whether or not it is accepted (a version
//     disabled or expired still counts as a rotation); only the first limit
//     places are accepted, and a group is accepted whole or not at all: it
//     is left out when it does not fit, so that a version more than limit
//     rotations old is never accepted.
//   - A version is accepted while it was replaced less than overlap ago
//     (replaced: when the next newer version was created), and only if it
//     is enabled and not expired.
func selectPrevious(latest Secret, listed []listedVersion, history []string, now time.Time, overlap time.Duration, limit int) []previousVersion {
	latestCreated := latest.Created
	for _, lv := range listed {
		if lv.version == latest.Version && latestCreated.IsZero() {
			latestCreated = lv.created
		}
	}
	var cands []listedVersion
	for _, lv := range listed {
		if lv.version == latest.Version || (!latestCreated.IsZero() && lv.created.After(latestCreated)) {
			continue
		}
		lv.rank = slices.Index(history, lv.version)
		cands = append(cands, lv)
	}
	slices.SortFunc(cands, func(a, b listedVersion) int {
		if c := b.created.Compare(a.created); c != 0 {
			return c
		}
		if a.rank != b.rank {
			return b.rank - a.rank
		}
		return strings.Compare(a.version, b.version)
	})

	var out []previousVersion
	replaced := latestCreated // when the next candidate was replaced
	places := 0
	for len(cands) > 0 {
		n := 1 // the group: cands[:n], created in the same second
		for n < len(cands) && cands[n].created.Equal(cands[0].created) {
			n++
		}
		group := cands[:n]
		cands = cands[n:]
		ordered := true
		for _, c := range group {
			ordered = ordered && (c.rank >= 0 || len(group) == 1)
		}
		if !ordered {
			// Members cannot be told apart: all or none.
			if places+len(group) > limit || now.Sub(replaced) >= overlap {
				return out
			}
			places += len(group)
			for _, c := range group {
				if usable(c, now) {
					out = append(out, previousVersion{c.version, replaced.Add(overlap)})
				}
			}
			replaced = group[0].created
			continue
		}
		for _, c := range group {
			if places >= limit || now.Sub(replaced) >= overlap {
				return out
			}
			places++
			if usable(c, now) {
				out = append(out, previousVersion{c.version, replaced.Add(overlap)})
			}
			replaced = c.created
		}
	}
	return out
}

// usable reports whether a listed version may be accepted at all: enabled
// and not expired.
func usable(lv listedVersion, now time.Time) bool {
	return lv.enabled && (lv.expires.IsZero() || now.Before(lv.expires))
}
