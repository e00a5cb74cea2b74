package kvsecrets

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Notices: the one way into a Provider for news of a new version, whatever
// carried it — Key Vault's Event Grid webhook, a message engine that fans
// a delivery out to every instance, a script. Each is acted on as the
// webhook acts on SecretNewVersionCreated: a cached secret not already at
// that version is re-read, with the refreshes of one secret coalesced
// within Options.EventCoalesceWindow and spread over Options.EventSpread.

// Notice says that a secret has a new version: what Key Vault's
// SecretNewVersionCreated event says, from whatever transport carried it.
// It carries no value: the Provider reads the value from the vault.
type Notice struct {
	// Vault is the vault's host (myvault.vault.azure.net) or URL; "" means
	// the Provider's own vault. A notice for another vault that references
	// have made the Provider read goes to it; any other is ignored.
	Vault string
	// Name is the secret's name.
	Name string
	// Version is the new version's id; "" when unknown, in which case the
	// secret is re-read whatever version it serves.
	Version string
	// Delay and Spread, when either is positive, put the refresh at Delay
	// plus a random time up to Spread from now, instead of a random time
	// up to Options.EventSpread: a fan-out that knows how many instances
	// hear each notice can give each notice its own slice of time, so that
	// the fleet's reads fit the vault's rate (see NotifyAll for the
	// arithmetic).
	Delay, Spread time.Duration
}

// Notify acts on a notice as EventGridHandler acts on a
// SecretNewVersionCreated event: if the secret is cached (through Get or
// Verify) and not already served at Version, it is re-read in the
// background, once per Options.EventCoalesceWindow however many notices
// arrive, after a random delay up to Options.EventSpread (or the notice's
// own Spread). Notify never
// waits for the vault. It reports whether a refresh was started or planned;
// false means the notice was not news: another vault, a secret not cached,
// a version already served, or a closed Provider.
//
// An invalid Name or Version is refused with ErrInvalidName or
// ErrInvalidVersion, a Vault that is neither a host nor an https URL of a
// host alone, or a Delay or Spread outside 0 to 24 hours, with an error
// naming the field; none changes anything. A notice comes from outside,
// and a forged one can cause at most a coalesced re-read, which never
// postpones the secret's own scheduled refresh.
func (p *Provider) Notify(n Notice) (bool, error) {
	if err := checkName(n.Name); err != nil {
		return false, err
	}
	if n.Version != "" {
		if err := checkVersion(n.Version); err != nil {
			return false, err
		}
	}
	if n.Delay < 0 || n.Spread < 0 || n.Delay > maxNoticeDelay || n.Spread > maxNoticeDelay {
		return false, fmt.Errorf("kvsecrets: Notify: Notice.Delay and Spread must be between 0 and %v", maxNoticeDelay)
	}
	target := p
	if n.Vault != "" {
		host, ok := noticeHost(n.Vault)
		if !ok {
			return false, errors.New("kvsecrets: Notify: Notice.Vault is neither a host name nor an https URL of a host alone (no user, path, query or fragment)")
		}
		if host != p.host {
			p.mu.Lock()
			target = p.others[host]
			p.mu.Unlock()
		}
	}
	p.notices.Add(1)
	if target == nil || target.isClosed() {
		return false, nil
	}
	delay := randUpTo(target.cfg.eventSpread)
	if n.Delay > 0 || n.Spread > 0 {
		delay = n.Delay + randUpTo(n.Spread)
	}
	return target.newVersion(n.Name, n.Version, "notice", true, target.cfg.eventWindow, delay), nil
}

// maxNoticeDelay bounds Notice.Delay and Notice.Spread: a notice is news
// for now, not for next year.
const maxNoticeDelay = 24 * time.Hour

// noticeHost returns the lower-case host[:port] (without :443) that a
// Notice.Vault names: a bare host, or an https URL of a host alone.
func noticeHost(v string) (string, bool) {
	if len(v) > 300 {
		return "", false
	}
	host := v
	if strings.Contains(v, "://") {
		u, err := url.Parse(v)
		if err != nil || !strings.EqualFold(u.Scheme, "https") || u.Host == "" || u.User != nil ||
			(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
			return "", false
		}
		host = u.Host
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '.' || c == '-' || c == ':') {
			return "", false
		}
	}
	if host == "" {
		return "", false
	}
	return strings.TrimSuffix(strings.ToLower(host), ":443"), true
}

// NotifyAll tells the Provider that any of its cached secrets may have a
// new version — after a gap in a stream of notices, say, during which some
// may have been missed: each secret it has read through Get or Verify is
// re-read once, at a random time within spread so that a fleet doing the
// same at once stays within the vault's rate (a fleet of N instances
// reading M secrets needs about N×M/400 seconds at Key Vault's 4,000 reads
// per 10 s). It returns the number of re-reads planned.
func (p *Provider) NotifyAll(spread time.Duration) int {
	if p.isClosed() {
		return 0
	}
	n := 0
	for _, e := range p.idx.entries() {
		if e.kind == kindPinned {
			continue
		}
		if p.refreshAfter(e, p.cfg.eventWindow, randUpTo(spread)) {
			n++
		}
	}
	return n
}

// randUpTo returns a random duration in [0, d), or 0.
func randUpTo(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

// newVersion is the common path of events and notices about a new
// version of a cached secret: a refresh after delay, coalesced within
// window. With checkVersion, a version already served is no news. The
// caller has checked name and version.
func (p *Provider) newVersion(name, version, source string, checkVersion bool, window, delay time.Duration) bool {
	e := p.idx.load(strings.ToLower(name))
	if e == nil {
		return false // not cached here
	}
	target := e
	e.mu.Lock()
	known := e.lastVersion
	e.mu.Unlock()
	if known == "" {
		// Not read through Get: through Verify only, or not at all (then
		// the next read goes to the vault anyway).
		ve := e.verifier()
		if ve == nil {
			return false
		}
		st := ve.state.Load()
		if !st.hasValue {
			return false
		}
		target, known = ve, st.version
	}
	if checkVersion && version != "" && strings.EqualFold(version, known) {
		return false // already serving it: a replay, or our own rotation
	}
	p.eventsActedOn.Add(1)
	p.cfg.logger.Info("kvsecrets: refreshing secret on news of a new version",
		slog.String("secret", name), slog.String("source", source), slog.String("version", version))
	p.refreshAfter(target, window, delay)
	return true
}

// refreshAfter starts a refresh of e after delay, or folds it into one
// planned or started within the coalescing window. It reports false when
// e is idle (nobody reads it: it is dropped instead) or folded.
func (p *Provider) refreshAfter(e *entry, window, delay time.Duration) bool {
	now := time.Now()
	e.mu.Lock()
	x := e.events()
	switch {
	case now.Sub(x.eventAt) >= window && delay == 0:
		x.eventAt = now
		e.mu.Unlock()
		// The scheduled cases below check idleness in due; this one does
		// it here, so that news cannot keep unread secrets refreshed.
		if p.idleNow(e) {
			return false
		}
		p.rereadSoon(e)
	case now.Sub(x.eventAt) >= window:
		x.eventAt = now.Add(delay)
		at := x.eventAt
		e.mu.Unlock()
		p.scheduleBy(e, at)
	case now.Before(x.eventAt):
		// A refresh is planned: fold into it. One planned more than a
		// window ahead (a notice with a long Delay) is brought forward to
		// when this one would come, but not nearer than a window, so that
		// a burst of notices still makes one refresh per window.
		at := now.Add(max(delay, window))
		if x.eventAt.Sub(now) <= window || !at.Before(x.eventAt) {
			e.mu.Unlock()
			return false
		}
		x.eventAt = at
		e.mu.Unlock()
		p.scheduleBy(e, at)
	default:
		x.eventAt = x.eventAt.Add(window)
		at := x.eventAt
		e.mu.Unlock()
		p.scheduleBy(e, at)
	}
	return true
}

// rotateHooks are the functions AddOnRotate registered, shared by a
// Provider and the Providers it makes for other vaults.
type rotateHooks struct {
	mu  sync.Mutex
	fns []*func(RotationEvent)
}

// AddOnRotate registers fn to be called, as Options.OnRotate is, each
// time a cached secret is seen with a new version, by this Provider or one
// it made for references to other vaults; it returns a function that
// removes fn (a call under way completes). Hooks run after Options.OnRotate,
// in the order they were added; a panic is recovered and logged. It lets
// code that gets a Provider after NewProvider — a fan-out across
// instances, a metrics exporter — follow rotations.
func (p *Provider) AddOnRotate(fn func(RotationEvent)) (remove func()) {
	h := p.hooks
	f := &fn
	h.mu.Lock()
	h.fns = append(h.fns, f)
	h.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			h.mu.Lock()
			defer h.mu.Unlock()
			for i, g := range h.fns {
				if g == f {
					h.fns = append(h.fns[:i:i], h.fns[i+1:]...)
					return
				}
			}
		})
	}
}

func (h *rotateHooks) list() []*func(RotationEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.fns
}

// entries returns every live entry once.
func (x *index) entries() []*entry {
	x.mu.Lock()
	defer x.mu.Unlock()
	m := x.dirty
	if m == nil {
		m = *x.read.Load()
	}
	seen := make(map[*entry]bool, len(m))
	out := make([]*entry, 0, len(m))
	for _, e := range m {
		if !seen[e] && !e.dead() {
			seen[e] = true
			out = append(out, e)
		}
	}
	return out
}

func (p *Provider) isClosed() bool { return p.closed.Load() }
