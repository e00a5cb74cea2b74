package kvsecrets

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
)

// This file is the refresh engine: everything that reads the vault and
// decides what happens next: shared reads (flights), the refresh schedule,
// expiry, retries with backoff, stale serving, revocation and rotation
// callbacks. Writing new versions is in rotation.go.

// startFlight returns the read of e of the given kind in progress, starting
// one if there is none. A caller that decided to read because of the state
// seen passes it: if the state has changed since (a read finished in
// between), the caller gets a finished flight with the new state instead of
// a second read.
func (p *Provider) startFlight(e *entry, kind int, seen *state) (*flight, *SecretError) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if f := e.flights[kind]; f != nil {
		return f, nil
	}
	if st := e.state.Load(); seen != nil && st != seen {
		return &flight{done: closedChan, st: st}, nil
	}
	if !p.track() {
		return nil, &SecretError{Name: e.name, Version: e.version, Kind: ErrClosed}
	}
	e.seq++
	f := &flight{seq: e.seq, done: make(chan struct{})}
	e.flights[kind] = f
	go p.runFlight(e, f, kind, e.seq)
	return f, nil
}

// freshFlight returns a forced read of e that starts after the call: a
// read already in flight may have started before a change the caller
// knows of, so it is waited out, not joined.
func (p *Provider) freshFlight(ctx context.Context, e *entry) (*flight, error) {
	e.mu.Lock()
	since := e.seq
	e.mu.Unlock()
	return p.freshFlightSince(ctx, e, since)
}

// freshFlightSince returns a forced read of e that started after e's
// fetch sequence was since.
func (p *Provider) freshFlightSince(ctx context.Context, e *entry, since uint64) (*flight, error) {
	for {
		f, serr := p.startFlight(e, flightForced, nil)
		if serr != nil {
			return nil, serr
		}
		if f.seq > since {
			return f, nil
		}
		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// rereadSoon makes e read again now without waiting: at once, or, if a
// forced read is in flight (it may have started before the change that
// calls for this one), as soon as it ends.
func (p *Provider) rereadSoon(e *entry) {
	e.mu.Lock()
	if e.flights[flightForced] != nil {
		e.rerun = true
		e.mu.Unlock()
		return
	}
	e.mu.Unlock()
	p.startFlight(e, flightForced, nil)
}

// runFlight reads the vault once on a context of its own, applies the
// answer to the entry, completes the flight, and then makes any OnRotate
// calls the answer caused.
func (p *Provider) runFlight(e *entry, f *flight, kind int, seq uint64) {
	defer p.wg.Done()
	if e.state.Load().hasValue {
		p.refreshes.Add(1)
	}
	start := time.Now()
	got, fetchErr := p.fetch(e)
	st, serr, after := p.apply(e, seq, got, fetchErr, false)
	if log := p.cfg.logger; log.Enabled(p.ctx, slog.LevelDebug) {
		attrs := []slog.Attr{slog.String("secret", e.name), slog.Duration("took", time.Since(start))}
		if serr != nil {
			attrs = append(attrs, slog.Any("error", serr))
		} else {
			attrs = append(attrs, slog.String("version", got.sec.Version))
		}
		log.LogAttrs(p.ctx, slog.LevelDebug, "kvsecrets: read secret", attrs...)
	}
	e.mu.Lock()
	e.flights[kind] = nil
	rerun := kind == flightForced && e.rerun
	e.rerun = false
	e.mu.Unlock()
	f.st, f.err = st, serr
	for _, fn := range after {
		fn()
	}
	if rerun {
		// Before done closes, so that a caller waiting this read out
		// (freshFlight) finds the next one.
		p.startFlight(e, flightForced, nil)
	}
	p.drainRotations(e)
	close(f.done)
}

// fetch reads e from the vault. It never holds a lock.
func (p *Provider) fetch(e *entry) (got fetched, err error) {
	ctx, cancel := context.WithTimeoutCause(p.ctx, p.cfg.fetchTimeout, errFetchTimeout)
	defer cancel()
	defer func() {
		if r := recover(); r != nil {
			// The panic value is not logged: it might hold response data.
			p.cfg.logger.Error("kvsecrets: panic while reading a secret",
				slog.String("secret", e.name), slog.String("panic", fmt.Sprintf("%T", r)),
				slog.String("stack", string(debug.Stack())))
			err = errors.New("kvsecrets: internal error while reading the secret")
		}
	}()
	cold := !e.state.Load().hasValue
	for attempt := 1; ; attempt++ {
		if e.kind == kindVerifier {
			got, err = p.fetchKeySet(ctx, e)
		} else {
			got.sec, err = p.getSecret(ctx, e, e.version)
		}
		// A throttled or unavailable vault is asked again within
		// FetchTimeout when there is no value to serve meanwhile, after a
		// jittered, growing pause (1, 2, 4, 8 s…, or the Retry-After), so
		// that a fleet starting at once spreads its reads over the
		// throttle's windows instead of failing together. A cached value's
		// refresh leaves retries to the scheduler.
		wait, again := p.retryThrottled(err, attempt)
		if !cold || !again {
			break
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
			continue
		case <-ctx.Done():
			t.Stop()
		}
		break
	}
	if err != nil && ctx.Err() != nil {
		if cause := context.Cause(ctx); cause != nil {
			err = errors.Join(cause, err)
		}
	}
	return got, err
}

// retryThrottled reports whether err is a throttling or unavailable answer
// (429, 503) worth asking again after the returned pause.
func (p *Provider) retryThrottled(err error, attempt int) (time.Duration, bool) {
	var re *azcore.ResponseError
	if err == nil || !errors.As(err, &re) || (re.StatusCode != http.StatusTooManyRequests && re.StatusCode != http.StatusServiceUnavailable) {
		return 0, false
	}
	d := time.Second << min(attempt-1, 5)
	if !p.cfg.noJitter {
		d = d/2 + rand.N(d) // 0.5-1.5 of the step
	}
	return max(d, min(retryAfter(re.RawResponse), maxRetryAfter)), true
}

// getSecret reads one version ("" for the latest) of e's secret.
func (p *Provider) getSecret(ctx context.Context, e *entry, version string) (Secret, error) {
	p.vaultRequests.Add(1)
	resp, err := p.client.GetSecret(ctx, e.name, version, nil)
	if err != nil {
		return Secret{}, err
	}
	return fromSDK(e.name, version, resp.Secret)
}

// closedChan is the done channel of flights that finished before they began.
var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// errNoValue is the cause when the vault's answer has no value.
var errNoValue = errors.New("kvsecrets: the vault's answer has no value")

// errDisabledAnswer is the cause when a 200 answer says the secret is disabled.
var errDisabledAnswer = errors.New("kvsecrets: the vault's answer marks the secret disabled")

// fromSDK converts the SDK's secret, taking name and version from its id.
func fromSDK(name, version string, s azsecrets.Secret) (Secret, error) {
	if s.Attributes != nil && s.Attributes.Enabled != nil && !*s.Attributes.Enabled {
		return Secret{}, errDisabledAnswer
	}
	if s.Value == nil {
		return Secret{}, errNoValue
	}
	out := Secret{Name: name, Version: version, value: newRedacted(*s.Value)}
	if s.ID != nil {
		if name, version, ok := parseSecretID(string(*s.ID)); ok {
			out.Name, out.Version = name, version
		}
	}
	if s.ContentType != nil {
		out.ContentType = *s.ContentType
	}
	if len(s.Tags) > 0 {
		out.Tags = make(map[string]string, len(s.Tags))
		for k, v := range s.Tags {
			if v != nil {
				out.Tags[k] = *v
			} else {
				out.Tags[k] = ""
			}
		}
	}
	if a := s.Attributes; a != nil {
		t := func(p *time.Time) time.Time {
			if p == nil {
				return time.Time{}
			}
			return *p
		}
		out.NotBefore, out.Expires, out.Created, out.Updated = t(a.NotBefore), t(a.Expires), t(a.Created), t(a.Updated)
	}
	return out, nil
}

// parseSecretID splits https://vault/secrets/NAME/VERSION. It never panics.
func parseSecretID(id string) (name, version string, ok bool) {
	u, err := url.Parse(id)
	if err != nil {
		return "", "", false
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	if len(parts) != 3 || parts[0] != "secrets" || checkName(parts[1]) != nil || checkVersion(parts[2]) != nil {
		return "", "", false
	}
	return parts[1], parts[2], true
}

// apply records the outcome of fetch seq in e and decides what happens next:
// the next refresh, a retry, dropping the value. It returns the entry's
// state, the read's own failure, and work to do outside the lock (logs).
// rotated forces an OnRotate call for a new version even if none was known
// before (Rotate wrote it).
func (p *Provider) apply(e *entry, seq uint64, got fetched, fetchErr error, rotated bool) (*state, *SecretError, []func()) {
	now := time.Now()
	var serr *SecretError
	var fail failure
	if fetchErr != nil {
		if errors.Is(fetchErr, errDisabledAnswer) {
			fail = failure{err: &SecretError{Name: e.name, Version: e.version, Kind: ErrDisabled, Err: fetchErr}, authoritative: true}
		} else {
			fail = classify(e.name, e.version, fetchErr)
		}
		serr = fail.err
	}

	e.mu.Lock()
	defer e.mu.Unlock()
	prev := e.state.Load()
	if seq < prev.seq {
		// A newer read has already answered; this one is out of date.
		return prev, serr, nil
	}
	var next *state
	var after []func()
	switch {
	case fetchErr == nil:
		next, after = p.applyValue(e, seq, got, now, rotated)
	case fail.authoritative:
		next, after = p.applyRefusal(e, seq, prev, fail, now)
	default:
		next, after = p.applyTransient(e, seq, prev, fail, now)
	}
	e.state.Store(next)
	return next, serr, after
}

// applyValue is apply for a successful read: the new state, a rotation
// event if the version changed, the next refresh and an expiry warning.
// e.mu is held.
func (p *Provider) applyValue(e *entry, seq uint64, got fetched, now time.Time, rotated bool) (*state, []func()) {
	sec := got.sec
	log := p.cfg.logger
	var after []func()
	next := valueState(got, now, seq, p.cfg.enforceValidity)
	if e.kind == kindLatest && e.lastVersion != sec.Version && (e.lastVersion != "" || rotated) {
		p.rotations.Add(1)
		e.pending = append(e.pending, RotationEvent{
			Vault: p.vaultURL, Name: sec.Name, OldVersion: e.lastVersion, NewVersion: sec.Version,
			Secret: sec, Detected: now,
		})
		old := e.lastVersion
		after = append(after, func() {
			log.Info("kvsecrets: secret rotated", slog.String("secret", sec.Name),
				slog.String("oldVersion", old), slog.String("newVersion", sec.Version))
		})
		if ve := e.verifier.Load(); ve != nil {
			// Verify must accept the new key at once.
			after = append(after, func() { p.rereadSoon(ve) })
		}
	}
	e.lastVersion = sec.Version
	if e.kind == kindLatest {
		e.noteLatest(sec.Version)
	}
	e.failures = 0
	if e.kind != kindPinned {
		p.scheduleAt(e, p.nextRefresh(now, sec.Expires))
	}
	if exp := sec.Expires; e.kind != kindVerifier && !exp.IsZero() && e.warned != sec.Version && now.Add(p.cfg.expiryWarning).After(exp) {
		e.warned = sec.Version
		msg := "kvsecrets: secret expires soon; rotate it"
		if !now.Before(exp) {
			msg = "kvsecrets: secret has expired; rotate it"
		}
		after = append(after, func() {
			log.Warn(msg, slog.String("secret", sec.Name), slog.String("version", sec.Version),
				slog.Time("expires", exp))
		})
	}
	return next, after
}

// applyRefusal is apply for an authoritative refusal (not found, disabled,
// forbidden): the value is dropped at once and the answer remembered for
// NegativeTTL. e.mu is held.
func (p *Provider) applyRefusal(e *entry, seq uint64, prev *state, fail failure, now time.Time) (*state, []func()) {
	next := &state{err: fail.err, errUntil: now.Add(p.cfg.negativeTTL), seq: seq}
	e.failures = 0
	p.unschedule(e)
	// Every other view of the secret the answer concerns stops too, before
	// the read that saw it completes (see spreadRefusal).
	hadValue := prev.hasValue
	after := []func(){func() { p.spreadRefusal(e, fail, hadValue) }}
	if !prev.hasValue {
		return next, after
	}
	p.revocations.Add(1)
	return next, append(after, func() {
		p.cfg.logger.Warn("kvsecrets: cached secret dropped: the vault refused it",
			slog.String("secret", e.name), slog.String("version", e.version), slog.Any("error", fail.err))
	})
}

// spreadRefusal makes the other views of a secret honour an authoritative
// refusal that a read of e received. A refusal of the latest version (by
// Get's reads, Refresh, an event, or Verify's key set) stops both the
// latest entry and the key set; not found and forbidden, which concern
// every version, stop the pinned versions too.
//
// A pinned version's refusal may concern that version alone, or be a
// version that never existed (a caller's mistake must not drop anything),
// so it is not copied: when the version is known to have existed (it was
// served, Verify accepts it, or it was the latest) or the answer is
// disabled or forbidden, the latest entry and the key set are read again,
// and the read that saw the refusal completes once they have.
func (p *Provider) spreadRefusal(e *entry, fail failure, hadValue bool) {
	le := e
	if e.parent != nil {
		le = e.parent
	}
	if e.kind == kindPinned {
		ve := le.verifier.Load()
		le.mu.Lock()
		loaded, known := le.lastVersion != "", strings.EqualFold(le.lastVersion, e.version) || slices.Contains(le.history, strings.ToLower(e.version))
		le.mu.Unlock()
		if ve != nil {
			for _, s := range ve.state.Load().accepted {
				known = known || strings.EqualFold(s.Version, e.version)
			}
		}
		if !hadValue && !known && fail.err.Kind == ErrNotFound {
			return
		}
		var flights []*flight
		for _, t := range []*entry{le, ve} {
			if t == nil || (t == le && !loaded) {
				continue
			}
			if f, err := p.freshFlight(p.ctx, t); err == nil {
				flights = append(flights, f)
			}
		}
		for _, f := range flights {
			select {
			case <-f.done:
			case <-p.ctx.Done():
			}
		}
		return
	}
	targets := []*entry{le}
	if ve := le.verifier.Load(); ve != nil {
		targets = append(targets, ve)
	}
	if k := fail.err.Kind; k == ErrNotFound || k == ErrForbidden {
		if m := le.versions.Load(); m != nil {
			for _, pe := range *m {
				targets = append(targets, pe)
			}
		}
	}
	for _, t := range targets {
		if t != e {
			p.refuse(t, fail)
		}
	}
}

// refuse stores a refusal learned by a read of another view in t, as if
// t's own read had received it. Reads of t already in flight are out of
// date once it is stored and will not overwrite it.
func (p *Provider) refuse(t *entry, fail failure) {
	err := *fail.err
	err.Version = t.version
	now := time.Now()
	t.mu.Lock()
	prev := t.state.Load()
	if prev.err != nil && !prev.hasValue && prev.err.Kind == err.Kind && now.Before(prev.errUntil) {
		t.mu.Unlock()
		return // already refused
	}
	t.seq++
	t.failures = 0
	p.unschedule(t)
	t.state.Store(&state{err: &err, errUntil: now.Add(p.cfg.negativeTTL), seq: t.seq})
	t.mu.Unlock()
	if prev.hasValue {
		p.revocations.Add(1)
		p.cfg.logger.Warn("kvsecrets: cached secret dropped: the vault refused it",
			slog.String("secret", t.name), slog.String("version", t.version), slog.Any("error", &err))
	}
}

// applyTransient is apply for a failure worth retrying: a cached value is
// served stale up to MaxStale, and a secret that was loaded is retried in
// the background with backoff. e.mu is held.
func (p *Provider) applyTransient(e *entry, seq uint64, prev *state, fail failure, now time.Time) (*state, []func()) {
	log := p.cfg.logger
	latest := e.kind != kindPinned // refreshed in the background
	wasLoaded := prev.hasValue || (latest && e.lastVersion != "")
	if wasLoaded {
		p.refreshFailures.Add(1)
	}
	e.failures++
	wait := p.backoff(e.failures, fail.retryAfter)
	switch {
	case prev.hasValue && now.Sub(prev.fetched) < p.cfg.maxStale:
		deadline := prev.fetched.Add(p.cfg.maxStale)
		retry := now.Add(wait)
		if deadline.Before(retry) {
			retry = deadline
		}
		if latest {
			p.scheduleAt(e, retry)
		}
		return prev.staleCopy(seq), []func(){func() {
			log.Warn("kvsecrets: refresh failed; serving the cached value",
				slog.String("secret", e.name), slog.String("version", e.version), slog.Any("error", fail.err),
				slog.Time("servedUntil", deadline), slog.Duration("retryIn", retry.Sub(now)))
		}}
	case prev.hasValue:
		p.staleDrops.Add(1)
		if latest {
			p.scheduleAt(e, now.Add(wait))
		}
		return &state{err: fail.err, seq: seq}, []func(){func() {
			log.Warn("kvsecrets: refresh failed past MaxStale; cached value dropped",
				slog.String("secret", e.name), slog.String("version", e.version), slog.Any("error", fail.err))
		}}
	default:
		if wasLoaded {
			// Keep trying in the background, so that the secret comes
			// back by itself when the vault does.
			p.scheduleAt(e, now.Add(wait))
		}
		return &state{err: fail.err, seq: seq}, []func(){func() {
			log.Warn("kvsecrets: reading secret failed",
				slog.String("secret", e.name), slog.String("version", e.version), slog.Any("error", fail.err))
		}}
	}
}

// dropIfTooStale drops a stale value whose MaxStale has passed. The
// scheduler calls it when a retry falls due, before reading again, so that
// the value is not served past its limit while that read runs.
func (p *Provider) dropIfTooStale(e *entry) {
	now := time.Now()
	e.mu.Lock()
	st := e.state.Load()
	drop := st.hasValue && st.stale && now.Sub(st.fetched) >= p.cfg.maxStale
	if drop {
		// The same seq as the stale state: a read already in flight is
		// newer and must still be applied when it returns.
		e.state.Store(&state{err: &SecretError{Name: e.name, Kind: ErrUnavailable,
			detail: "no successful refresh within MaxStale"}, seq: st.seq})
	}
	e.mu.Unlock()
	if drop {
		p.staleDrops.Add(1)
		p.cfg.logger.Warn("kvsecrets: cached value dropped: no successful refresh within MaxStale",
			slog.String("secret", e.name), slog.Duration("maxStale", p.cfg.maxStale))
	}
}

// nextRefresh returns when a secret read at now should be read again: at
// RefreshAt of TTL plus jitter, or by its exp if that comes first, or, when
// exp has passed, within ExpiredRecheck.
func (p *Provider) nextRefresh(now, exp time.Time) time.Time {
	d := time.Duration(float64(p.cfg.ttl) * p.cfg.refreshAt)
	if j := float64(p.cfg.ttl) * p.cfg.refreshJitter; j >= 1 {
		d += rand.N(time.Duration(j))
	}
	d = max(d, time.Millisecond)
	next := now.Add(d)
	if !exp.IsZero() {
		if exp.After(now) {
			if exp.Before(next) {
				next = exp
			}
		} else if r := now.Add(p.cfg.expiredRecheck); r.Before(next) {
			next = r
		}
	}
	return next
}

// maxRetryAfter caps how long a Retry-After may push a retry back.
const maxRetryAfter = 10 * time.Minute

// backoff returns the delay before retry number n (1-based): exponential
// from RetryBackoff up to MaxRetryBackoff, with equal jitter, and at least
// the server's Retry-After.
func (p *Provider) backoff(n int, retryAfter time.Duration) time.Duration {
	d := p.cfg.retryBackoff
	for i := 1; i < n && d < p.cfg.maxRetryBackoff; i++ {
		d *= 2
	}
	d = min(d, p.cfg.maxRetryBackoff)
	if !p.cfg.noJitter && d >= 2 {
		d = d/2 + rand.N(d/2)
	}
	return max(d, min(retryAfter, maxRetryAfter))
}

// drainRotations makes the pending OnRotate calls of e in order, outside
// every lock. If another goroutine is already making them, it leaves the new
// ones to it.
func (p *Provider) drainRotations(e *entry) {
	e.mu.Lock()
	if e.draining {
		e.mu.Unlock()
		return
	}
	e.draining = true
	for len(e.pending) > 0 {
		ev := e.pending[0]
		e.pending = e.pending[1:]
		e.mu.Unlock()
		p.callOnRotate(ev)
		e.mu.Lock()
	}
	e.pending = nil
	e.draining = false
	e.mu.Unlock()
}

func (p *Provider) callOnRotate(ev RotationEvent) {
	if p.cfg.onRotate == nil {
		return
	}
	defer func() {
		if r := recover(); r != nil {
			// The panic value is not logged: it could be the secret itself.
			p.cfg.logger.Error("kvsecrets: OnRotate panicked",
				slog.String("secret", ev.Name), slog.String("newVersion", ev.NewVersion),
				slog.String("panic", fmt.Sprintf("%T", r)), slog.String("stack", string(debug.Stack())))
		}
	}()
	runCallback(func() { p.cfg.onRotate(ev) })
}

// scheduler runs background refreshes at their due times: one goroutine
// with a heap of due times and one timer, so that idle secrets cost no
// goroutine and Close has one thing to stop.
type scheduler struct {
	mu   sync.Mutex
	h    schedHeap
	wake chan struct{}
}

type schedItem struct {
	at  time.Time
	e   *entry
	gen uint64
}

type schedHeap []schedItem

func (h schedHeap) Len() int           { return len(h) }
func (h schedHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h schedHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *schedHeap) Push(x any)        { *h = append(*h, x.(schedItem)) }
func (h *schedHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = schedItem{}
	*h = old[:len(old)-1]
	return it
}

func (s *scheduler) init() { s.wake = make(chan struct{}, 1) }

// scheduleAt sets e's next background refresh, replacing any earlier plan.
func (p *Provider) scheduleAt(e *entry, at time.Time) {
	s := &p.sched
	s.mu.Lock()
	e.schedGen++
	heap.Push(&s.h, schedItem{at: at, e: e, gen: e.schedGen})
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// unschedule cancels e's next background refresh.
func (p *Provider) unschedule(e *entry) {
	p.sched.mu.Lock()
	e.schedGen++
	p.sched.mu.Unlock()
}

func (p *Provider) runScheduler() {
	defer p.wg.Done()
	s := &p.sched
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	sem := make(chan struct{}, p.cfg.refreshConcurrency)
	var due []*entry
	for {
		now := time.Now()
		due = due[:0]
		wait := time.Duration(-1)
		s.mu.Lock()
		for len(s.h) > 0 {
			if it := s.h[0]; it.at.After(now) {
				wait = it.at.Sub(now)
				break
			}
			it := heap.Pop(&s.h).(schedItem)
			if it.gen == it.e.schedGen {
				due = append(due, it.e)
			}
		}
		s.mu.Unlock()
		for _, e := range due {
			select {
			case sem <- struct{}{}:
			case <-p.ctx.Done():
				return
			}
			p.dropIfTooStale(e)
			f, err := p.startFlight(e, flightLoad, nil)
			if err != nil {
				return // closing
			}
			if !p.track() {
				<-sem
				return
			}
			go func() {
				defer p.wg.Done()
				<-f.done
				<-sem
			}()
		}
		if wait >= 0 {
			timer.Reset(wait)
		}
		select {
		case <-timer.C:
		case <-s.wake:
		case <-p.ctx.Done():
			return
		}
		timer.Stop()
	}
}
