package kvsecrets

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

// SecretState is what a Provider does with a secret now.
type SecretState string

const (
	// StateFresh: the value is served and its last read succeeded.
	StateFresh SecretState = "fresh"
	// StateStale: the value is served, but refreshes have failed since
	// SecretStatus.FailingSince; it is served until ServedUntil.
	StateStale SecretState = "stale"
	// StateFailing: no value is served: the vault refused the secret
	// (deleted, disabled, forbidden), it could not be read and nothing was
	// cached, or MaxStale passed. SecretStatus.Err says which.
	StateFailing SecretState = "failing"
	// StateNotLoaded: the secret has not been read (or was dropped for
	// idleness, or evicted); the next read goes to the vault.
	StateNotLoaded SecretState = "notLoaded"
)

// SecretStatus is the health of one secret, as [Provider.Status] reports
// it. It holds no value: it prints, logs and marshals as it is.
type SecretStatus struct {
	// Name is the name as given; "" for an invalid name, which is not
	// repeated (it might be a value passed by mistake).
	Name  string      `json:"name"`
	State SecretState `json:"state"`
	// Version is the version served; "" when none is.
	Version string `json:"version,omitempty"`
	// ReadAt is when the value served was read; ServedUntil is ReadAt +
	// Options.MaxStale, past which it is not served however refreshes go.
	ReadAt      time.Time `json:"readAt,omitzero"`
	ServedUntil time.Time `json:"servedUntil,omitzero"`
	// FailingSince is when reads of a secret that had been loaded began to
	// fail; zero while they succeed, and for a secret never loaded.
	FailingSince time.Time `json:"failingSince,omitzero"`
	// Failures counts the transient failures in a row.
	Failures int `json:"failures,omitempty"`
	// Err is the last failure when the secret is stale or failing: a
	// *SecretError that wraps the sentinel (ErrUnavailable, ErrNotFound…).
	// ErrorClass names the sentinel: "unavailable", "notFound",
	// "disabled", "forbidden", "unauthenticated", "misconfigured",
	// "expired", "notYetValid", "closed" or "invalidName".
	Err        error  `json:"-"`
	ErrorClass string `json:"error,omitempty"`
	// NextRefresh is when the Provider next looks at the secret (a
	// refresh, a retry, the MaxStale deadline, or forgetting a failure);
	// zero when nothing is planned. Reading is set while a read of the
	// vault is under way.
	NextRefresh time.Time `json:"nextRefresh,omitzero"`
	Reading     bool      `json:"reading,omitempty"`
}

// Served reports whether the secret's value is served: fresh, or stale
// within MaxStale.
func (s SecretStatus) Served() bool { return s.State == StateFresh || s.State == StateStale }

// healthNote is what an entry keeps about failures since the last success
// of a secret it had loaded. Entries that never loaded keep none, so that
// misses cost no more.
type healthNote struct {
	since time.Time
	err   *SecretError
}

// noteHealthLocked records the outcome of a read of e, whose state was
// prev, for Status. e.mu is held.
func (e *entry) noteHealthLocked(prev *state, serr *SecretError, now time.Time) {
	x := e.x.Load()
	if serr == nil {
		if x != nil && x.live != nil {
			x.live.health = nil
		}
		return
	}
	if x == nil || x.live == nil || x.live.health == nil {
		if !prev.hasValue && e.lastVersion == "" {
			return // never loaded: its state says everything
		}
		e.liveLocked().health = &healthNote{since: now}
	}
	x = e.x.Load()
	x.live.health.err = serr
}

// Status reports the health of the named secret (its latest version) from
// memory: it makes no request and does not count as a read.
func (p *Provider) Status(name string) SecretStatus {
	s := SecretStatus{Name: name, State: StateNotLoaded}
	if err := checkName(name); err != nil {
		s.Name = ""
		return s.failing(err)
	}
	if p.closed.Load() {
		return s.failing(&SecretError{Name: name, Kind: ErrClosed})
	}
	e := p.idx.load(strings.ToLower(name))
	if e == nil {
		return s
	}
	return p.statusOf(e, s, time.Now())
}

// Health reports the status of each named secret, or, with no names, of
// every secret the Provider holds (latest versions, ordered by name).
func (p *Provider) Health(names ...string) []SecretStatus {
	if len(names) == 0 {
		for _, e := range p.idx.entries() {
			if e.kind == kindLatest {
				names = append(names, e.name)
			}
		}
		slices.SortFunc(names, func(a, b string) int { return strings.Compare(strings.ToLower(a), strings.ToLower(b)) })
	}
	out := make([]SecretStatus, len(names))
	for i, n := range names {
		out[i] = p.Status(n)
	}
	return out
}

func (s SecretStatus) failing(err error) SecretStatus {
	s.State, s.Err, s.ErrorClass = StateFailing, err, errorClass(err)
	return s
}

func (p *Provider) statusOf(e *entry, s SecretStatus, now time.Time) SecretStatus {
	e.mu.Lock()
	st := e.state.Load()
	var note healthNote
	if x := e.x.Load(); x != nil && x.live != nil && x.live.health != nil {
		note = *x.live.health
	}
	s.Failures = int(e.failures)
	s.Reading = e.flights != nil
	e.mu.Unlock()
	p.sched.mu.Lock()
	if i := e.heapIdx; i >= 0 && int(i) < len(p.sched.h) {
		s.NextRefresh = time.Unix(0, p.sched.h[i].at)
	}
	p.sched.mu.Unlock()
	s.FailingSince = note.since
	switch {
	case st == deadState:
		return SecretStatus{Name: s.Name, State: StateNotLoaded}
	case st.hasValue && !st.tooOld(now, p.cfg.maxStale):
		s.Version, s.ReadAt = st.version, st.fetchedAt()
		s.ServedUntil = s.ReadAt.Add(p.cfg.maxStale)
		if err := st.checkValidity(now, s.Name, ""); err != nil {
			return s.failing(err)
		}
		if !st.stale {
			s.State = StateFresh
			return s
		}
		s.State = StateStale
		if note.err != nil {
			s.Err, s.ErrorClass = note.err.as(s.Name), errorClass(note.err)
		}
		return s
	case st.hasValue:
		return s.failing(&SecretError{Name: s.Name, Kind: ErrUnavailable, detail: "no successful read within MaxStale"})
	case st.err != nil:
		if s.FailingSince.IsZero() && st.remembered(now) {
			s.FailingSince = time.Unix(0, st.at).Add(-p.cfg.negativeTTL)
		}
		return s.failing(st.err.as(s.Name))
	}
	return s
}

// errorClasses name the sentinels in SecretStatus.ErrorClass.
var errorClasses = []struct {
	err  error
	name string
}{
	{ErrUnavailable, "unavailable"}, {ErrNotFound, "notFound"}, {ErrDisabled, "disabled"},
	{ErrForbidden, "forbidden"}, {ErrUnauthenticated, "unauthenticated"},
	{ErrMisconfigured, "misconfigured"}, {ErrExpired, "expired"}, {ErrNotYetValid, "notYetValid"},
	{ErrClosed, "closed"}, {ErrInvalidName, "invalidName"},
}

func errorClass(err error) string {
	for _, c := range errorClasses {
		if errors.Is(err, c.err) {
			return c.name
		}
	}
	return "unavailable"
}

// HealthHandler returns an http.Handler for readiness probes. It answers
// GET and HEAD with 200 while every named secret is served (fresh, or stale
// within Options.MaxStale) and 503 otherwise, with a JSON body naming each
// secret and its state (SecretStatus without Err), never a value:
//
//	{"ready":false,"secrets":[{"name":"StripeKey","state":"stale",...},
//	 {"name":"MapsKey","state":"failing","error":"forbidden",...}]}
//
// A probe counts as a read of the secrets it names, so that they stay
// cached and refreshed while probes come, and one that finds a secret not
// loaded starts reading it in the background (the probe does not wait): a
// service becomes ready once its secrets are read, whether or not it has
// read them itself. With no names, it reports every secret the Provider
// holds; an invalid name panics at once, since no probe could ever succeed.
func (p *Provider) HealthHandler(names ...string) http.Handler {
	for _, n := range names {
		if err := checkName(n); err != nil {
			panic(fmt.Sprintf("kvsecrets: HealthHandler: %v", err))
		}
	}
	names = slices.Clone(names)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		body := struct {
			Ready   bool           `json:"ready"`
			Secrets []SecretStatus `json:"secrets"`
		}{Ready: true, Secrets: p.Health(names...)}
		for i, s := range body.Secrets {
			body.Ready = body.Ready && s.Served()
			if len(names) > 0 {
				p.probed(names[i], s)
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if !body.Ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		if r.Method == http.MethodGet {
			json.NewEncoder(w).Encode(body)
		}
	})
}

// probed counts a probe of name as a read and starts reading a secret not
// loaded.
func (p *Provider) probed(name string, s SecretStatus) {
	if p.closed.Load() {
		return
	}
	if s.State != StateNotLoaded {
		if e := p.idx.load(strings.ToLower(name)); e != nil {
			p.touch(e)
		}
		return
	}
	e, err := p.entryFor(name)
	if err != nil {
		return
	}
	if st := e.state.Load(); !st.hasValue && st.err == nil {
		p.startFlight(e, flightLoad, st)
	}
}
