package kvsecrets

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
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
	f, _, err := p.beginFlight(e, kind, seen, false)
	return f, err
}

// beginFlight is startFlight, reporting whether it started the read.
// A background read (the scheduler's) is a single attempt; a caller's
// first read of a secret never loaded retries throttling within
// FetchTimeout (see fetch).
func (p *Provider) beginFlight(e *entry, kind int, seen *state, background bool) (*flight, bool, *SecretError) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.flights != nil && e.flights[kind] != nil && !e.flights[kind].abandoned {
		return e.flights[kind], false, nil
	}
	st := e.state.Load()
	if seen != nil && st != seen {
		return &flight{done: closedChan, st: st}, false, nil
	}
	if !p.track() {
		return nil, false, &SecretError{Name: e.name, Version: e.version(), Kind: ErrClosed}
	}
	e.seq++
	f := &flight{seq: e.seq, background: background, retry: !background && !st.hasValue && e.lastVersion == "",
		done: make(chan struct{})}
	if e.flights == nil {
		e.flights = new([numFlights]*flight)
	}
	e.flights[kind] = f
	if st.ready {
		// While the read runs (up to FetchTimeout), serve through the slow
		// path, which checks MaxStale against the clock.
		e.setState(st.dueCopy())
	}
	if st.hasValue {
		p.scheduleAt(e, st.fetchedAt().Add(p.cfg.maxStale))
	}
	go p.runFlight(e, f, kind)
	return f, true, nil
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
func (p *Provider) freshFlightSince(ctx context.Context, e *entry, since uint32) (*flight, error) {
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
	if e.flights != nil && e.flights[flightForced] != nil {
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
func (p *Provider) runFlight(e *entry, f *flight, kind int) {
	defer p.wg.Done()
	if e.state.Load().hasValue {
		p.refreshes.Add(1)
	}
	start := time.Now()
	got, fetchErr := p.fetch(e, f)
	st, serr, after := p.apply(e, f.seq, got, fetchErr, false)
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
	// An abandoned read may have been replaced, and its replacement may
	// even have finished first.
	if e.flights != nil && e.flights[kind] == f {
		e.flights[kind] = nil
	}
	if e.flights != nil && *e.flights == ([numFlights]*flight{}) {
		e.flights = nil
	}
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
	if f.background {
		p.release()
	}
}

// fetch reads e from the vault for flight f. It never holds a lock. A
// caller's first read of a secret (f.retry) retries throttling: see below.
//
// Each request first waits for its turn in the pacer (pacing.go). That
// wait is bounded by the callers, not by FetchTimeout: a caller's first
// read is abandoned once every caller waiting for it has given up (their
// contexts), and FetchTimeout starts when the first request is sent.
func (p *Provider) fetch(e *entry, f *flight) (got fetched, err error) {
	retry := f.retry
	ctx, cancel := context.WithCancelCause(p.ctx)
	defer cancel(nil)
	// FetchTimeout runs from the read's first call into the SDK, but
	// stops while a request waits for its turn (pacing.go): until the
	// first request with a token goes, that wait counts against the
	// callers instead. timeout is nil while it is held.
	var timeout *time.Timer
	left, until := p.cfg.fetchTimeout, time.Time{}
	run := func() {
		if timeout == nil {
			until = time.Now().Add(left)
			timeout = time.AfterFunc(left, func() { cancel(errFetchTimeout) })
		}
	}
	hold := func() {
		if timeout != nil && timeout.Stop() {
			left, timeout = max(time.Until(until), 0), nil
		}
	}
	defer hold()
	sent := func() bool {
		return f.phase.CompareAndSwap(flightWaiting, flightSent) || f.phase.Load() == flightSent
	}
	if p.pacer == nil && p.cfg.limiter == nil {
		sent()
		run()
	} else {
		wait := ctx // what bounds the first request's wait for its turn
		if f.retry {
			// A caller's first read: abandoned (gone) when every caller
			// waiting for it gave up before it was sent (await). The
			// context is the fetch's child, so that it is released with
			// it.
			e.mu.Lock()
			f.goneCtx, f.abandon = context.WithCancel(ctx)
			if f.abandoned {
				f.abandon()
			}
			e.mu.Unlock()
			wait = f.goneCtx
		}
		ctx = context.WithValue(ctx, pacedReadKey{}, &pacedRead{wait: wait, sent: sent, run: run, hold: hold})
	}
	defer func() {
		if r := recover(); r != nil {
			// The panic value is not logged: it might hold response data.
			p.cfg.logger.Error("kvsecrets: panic while reading a secret",
				slog.String("secret", e.name), slog.String("panic", fmt.Sprintf("%T", r)),
				slog.String("stack", string(debug.Stack())))
			err = errors.New("kvsecrets: internal error while reading the secret")
		}
	}()
	var last error // the previous attempt's answer
	for attempt := 1; ; attempt++ {
		if e.kind == kindVerifier {
			got, err = p.fetchKeySet(ctx, e)
		} else {
			got.sec, err = p.getSecret(ctx, e, e.version())
		}
		if pe := (*pacingError)(nil); last != nil && errors.As(err, &pe) {
			// The retry never left the queue: the read's answer is the
			// throttling that made it wait.
			err = last
			break
		}
		// A throttled vault (429) is asked again when there is no value
		// to serve meanwhile, within FetchTimeout of the first request:
		// with pacing, when the pacer (which paused for the 429) gives
		// the retry its turn, ahead of the other reads; without, after a
		// jittered, growing pause (1, 2, 4, 8 s…, or the Retry-After).
		// Either way a fleet starting at once spreads its reads over the
		// throttle's windows instead of failing together. Anything else
		// fails the read after the SDK's own retries, in seconds: an
		// outage is not waited out by a caller with nothing to serve.
		// Every other read (a refresh, a retry after a MaxStale drop)
		// leaves retries to the scheduler, whose backoff keeps growing.
		wait, again := p.retryThrottled(err, attempt)
		if !retry || !again {
			break
		}
		last = err
		if pr, ok := ctx.Value(pacedReadKey{}).(*pacedRead); ok {
			pr.front = true
			continue
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
		if cause := context.Cause(ctx); cause != nil && !errors.Is(err, cause) {
			err = errors.Join(cause, err)
		}
	}
	return got, err
}

// retryThrottled reports whether err is a throttling answer (429) worth
// asking again after the returned pause.
func (p *Provider) retryThrottled(err error, attempt int) (time.Duration, bool) {
	var re *azcore.ResponseError
	if err == nil || !errors.As(err, &re) || re.StatusCode != http.StatusTooManyRequests {
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
		if idName, idVersion, ok := parseSecretID(string(*s.ID)); ok {
			// Copies, so that the cache keeps neither the id nor the response.
			if idName != name {
				out.Name = strings.Clone(idName)
			}
			out.Version = strings.Clone(idVersion)
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
func (p *Provider) apply(e *entry, seq uint32, got fetched, fetchErr error, rotated bool) (*state, *SecretError, []func()) {
	now := time.Now()
	var serr *SecretError
	var fail failure
	if fetchErr != nil {
		if errors.Is(fetchErr, errDisabledAnswer) {
			fail = failure{err: &SecretError{Name: e.name, Version: e.version(), Kind: ErrDisabled, Err: fetchErr}, authoritative: true}
		} else {
			fail = classify(p.vaultURL, e.name, e.version(), fetchErr)
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
	e.noteHealthLocked(prev, serr, now)
	e.setState(next)
	return next, serr, after
}

// applyValue is apply for a successful read: the new state, a rotation
// event if the version changed, the next refresh and an expiry warning.
// e.mu is held.
func (p *Provider) applyValue(e *entry, seq uint32, got fetched, now time.Time, rotated bool) (*state, []func()) {
	sec := got.sec
	log := p.cfg.logger
	var after []func()
	next := valueState(got, now, seq, p.cfg.enforceValidity)
	if e.kind == kindLatest && e.lastVersion != sec.Version && (e.lastVersion != "" || rotated) {
		p.rotations.Add(1)
		ev := e.events()
		ev.pending = append(ev.pending, RotationEvent{
			Vault: p.vaultURL, Name: sec.Name, OldVersion: e.lastVersion, NewVersion: sec.Version,
			Secret: sec, Detected: now,
		})
		old := e.lastVersion
		after = append(after, func() {
			log.Info("kvsecrets: secret rotated", slog.String("secret", sec.Name),
				slog.String("oldVersion", old), slog.String("newVersion", sec.Version))
		})
		if ve := e.verifier(); ve != nil {
			// Verify must accept the new key at once.
			after = append(after, func() { p.rereadSoon(ve) })
		}
	}
	if e.kind == kindLatest {
		e.noteLatest(sec.Version)
	}
	e.lastVersion = sec.Version
	e.failures = 0
	if e.kind != kindPinned {
		p.scheduleAt(e, p.nextRefresh(now, sec.Expires))
	} else {
		p.scheduleAt(e, now.Add(min(p.cfg.ttl, p.cfg.idleTimeout)))
	}
	warned := ""
	if x := e.x.Load(); x != nil && x.ev != nil {
		warned = x.ev.warned
	}
	if exp := sec.Expires; e.kind != kindVerifier && !exp.IsZero() && warned != sec.Version && now.Add(p.cfg.expiryWarning).After(exp) {
		e.events().warned = sec.Version
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
func (p *Provider) applyRefusal(e *entry, seq uint32, prev *state, fail failure, now time.Time) (*state, []func()) {
	until := now.Add(p.cfg.negativeTTL)
	next := errState(fail.err, until, seq)
	e.failures = 0
	p.scheduleAt(e, until) // then forgotten, unless read again
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
			slog.String("secret", e.name), slog.String("version", e.version()), slog.Any("error", fail.err))
	})
}

// spreadRefusal makes the other views of a secret honour an authoritative
// refusal that a read of e received. A refusal of the latest version (by
// Get's reads, Refresh, an event, or Verify's key set) stops both the
// latest entry and the key set; not found and forbidden, which concern
// every version, stop the pinned versions too; disabled, which concerns the
// latest version, re-reads the pinned version last seen as the latest.
//
// A pinned version's refusal may concern that version alone, or be a
// version that never existed (a caller's mistake must not drop anything),
// so it is not copied: when the version is known to have existed (it was
// served, Verify accepts it, or it was the latest) or the answer is
// disabled or forbidden, the latest entry and the key set are read again,
// and the read that saw the refusal completes once they have.
func (p *Provider) spreadRefusal(e *entry, fail failure, hadValue bool) {
	le := e
	if pe := e.parent(); pe != nil {
		le = pe
	}
	if e.kind == kindPinned {
		ve := le.verifier()
		version := e.version()
		le.mu.Lock()
		loaded := le.lastVersion != ""
		known := strings.EqualFold(le.lastVersion, version) || slices.ContainsFunc(le.history(), func(v string) bool { return strings.EqualFold(v, version) })
		le.mu.Unlock()
		if ve != nil {
			if ks := ve.state.Load().keys; ks != nil {
				for _, s := range ks.accepted {
					known = known || strings.EqualFold(s.Version, version)
				}
			}
		}
		if !hadValue && !known && fail.err.Kind == ErrNotFound {
			return
		}
		var again []*entry
		for _, t := range []*entry{le, ve} {
			if t != nil && (t != le || loaded) {
				again = append(again, t)
			}
		}
		p.rereadAndWait(again)
		return
	}
	targets := []*entry{le}
	if ve := le.verifier(); ve != nil {
		targets = append(targets, ve)
	}
	if k := fail.err.Kind; k == ErrNotFound || k == ErrForbidden {
		targets = append(targets, le.pinnedEntries()...)
	}
	for _, t := range targets {
		if t != e {
			p.refuse(t, fail)
		}
	}
	if fail.err.Kind == ErrDisabled {
		// The latest version is disabled, and the answer does not say
		// which it is: the pinned version last seen as the latest is read
		// again, and the read that saw the refusal completes once it has.
		le.mu.Lock()
		last := strings.ToLower(le.lastVersion)
		le.mu.Unlock()
		var again []*entry
		for _, pe := range le.pinnedEntries() {
			if pe.version() == last && pe.state.Load().hasValue {
				again = append(again, pe)
			}
		}
		p.rereadAndWait(again)
	}
}

// rereadAndWait starts a fresh forced read of each entry and waits until
// all have answered (or the Provider closes).
func (p *Provider) rereadAndWait(entries []*entry) {
	var flights []*flight
	for _, t := range entries {
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
}

// refuse stores a refusal learned by a read of another view in t, as if
// t's own read had received it. Reads of t already in flight are out of
// date once it is stored and will not overwrite it.
func (p *Provider) refuse(t *entry, fail failure) {
	err := *fail.err
	err.Version = t.version()
	now := time.Now()
	until := now.Add(p.cfg.negativeTTL)
	t.mu.Lock()
	prev := t.state.Load()
	if prev == deadState || (prev.remembered(now) && prev.err.Kind == err.Kind) {
		t.mu.Unlock()
		return // removed, or already refused
	}
	t.seq++
	t.failures = 0
	t.setState(errState(&err, until, t.seq))
	t.mu.Unlock()
	p.scheduleAt(t, until)
	if prev.hasValue {
		p.revocations.Add(1)
		p.cfg.logger.Warn("kvsecrets: cached secret dropped: the vault refused it",
			slog.String("secret", t.name), slog.String("version", err.Version), slog.Any("error", &err))
	}
}

// applyTransient is apply for a failure worth retrying: a cached value is
// served stale up to MaxStale, and a secret that was loaded is retried in
// the background with a backoff that keeps growing across a MaxStale drop.
// Until that retry, the failure is remembered, so that callers hear it at
// once instead of each asking the vault again. e.mu is held.
func (p *Provider) applyTransient(e *entry, seq uint32, prev *state, fail failure, now time.Time) (*state, []func()) {
	log := p.cfg.logger
	latest := e.kind != kindPinned // refreshed in the background
	wasLoaded := prev.hasValue || (latest && e.lastVersion != "")
	if wasLoaded {
		p.refreshFailures.Add(1)
	}
	if e.failures < math.MaxUint16 {
		e.failures++
	}
	wait := p.backoff(int(e.failures), fail.retryAfter)
	version := e.version()
	switch {
	case prev.hasValue && !prev.tooOld(now, p.cfg.maxStale):
		deadline := prev.fetchedAt().Add(p.cfg.maxStale)
		retry := now.Add(wait)
		if deadline.Before(retry) || !latest {
			retry = deadline
		}
		p.scheduleAt(e, retry)
		return prev.staleCopy(seq), []func(){func() {
			log.Warn("kvsecrets: refresh failed; serving the cached value",
				slog.String("secret", e.name), slog.String("version", version), slog.Any("error", fail.err),
				slog.Time("servedUntil", deadline), slog.Duration("retryIn", retry.Sub(now)))
		}}
	case wasLoaded:
		// Keep trying in the background, so that the secret comes back by
		// itself when the vault does.
		retry := now.Add(wait)
		if prev.hasValue {
			p.staleDrops.Add(1)
		}
		remember := retry
		if latest {
			p.scheduleAt(e, retry)
		} else {
			// A pinned version is re-read only when asked for.
			remember = time.Time{}
			p.scheduleAt(e, now.Add(p.cfg.negativeTTL))
		}
		msg := "kvsecrets: refresh failed"
		if prev.hasValue {
			msg = "kvsecrets: refresh failed past MaxStale; cached value dropped"
		}
		return errState(fail.err, remember, seq), []func(){func() {
			log.Warn(msg, slog.String("secret", e.name), slog.String("version", version), slog.Any("error", fail.err),
				slog.Duration("retryIn", wait))
		}}
	default:
		// A first read that failed: the entry is forgotten unless read
		// again.
		p.scheduleAt(e, now.Add(p.cfg.negativeTTL))
		return errState(fail.err, time.Time{}, seq), []func(){func() {
			log.Warn("kvsecrets: reading secret failed",
				slog.String("secret", e.name), slog.String("version", version), slog.Any("error", fail.err))
		}}
	}
}

// nextRefresh returns when a secret read at now should be read again: at
// RefreshAt of TTL plus jitter, or by its exp if that comes first, or, when
// exp has passed, within ExpiredRecheck. The period is the shorter of TTL and MaxStale.
func (p *Provider) nextRefresh(now, exp time.Time) time.Time {
	// A MaxStale shorter than TTL shortens the period: a value is never
	// served past MaxStale, so it is refreshed ahead of that too.
	base := float64(min(p.cfg.ttl, p.cfg.maxStale))
	d := time.Duration(base * p.cfg.refreshAt)
	if j := base * p.cfg.refreshJitter; j >= 1 {
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
	x := e.x.Load()
	if x == nil || x.ev == nil {
		e.mu.Unlock()
		return // no rotation was ever seen
	}
	ev := x.ev
	if ev.draining {
		e.mu.Unlock()
		return
	}
	ev.draining = true
	for len(ev.pending) > 0 {
		r := ev.pending[0]
		ev.pending = ev.pending[1:]
		e.mu.Unlock()
		p.callOnRotate(r)
		e.mu.Lock()
	}
	ev.pending = nil
	ev.draining = false
	e.mu.Unlock()
}

func (p *Provider) callOnRotate(ev RotationEvent) {
	if p.cfg.onRotate != nil {
		p.callRotateHook(p.cfg.onRotate, ev)
	}
	for _, f := range p.hooks.list() {
		p.callRotateHook(*f, ev)
	}
}

func (p *Provider) callRotateHook(fn func(RotationEvent), ev RotationEvent) {
	p.callHook("OnRotate", func() { fn(ev) }, slog.String("secret", ev.Name), slog.String("newVersion", ev.NewVersion))
}

// scheduler runs background work at its due times: one goroutine with a
// heap of due times and one timer, started when there is something to
// wait for and ended when there is nothing, so that a Provider with
// nothing cached costs no goroutine and Close has one thing to stop. Every
// live entry has one place in the heap: its next refresh, retry, MaxStale
// deadline or check (see due). Reads the scheduler starts wait in a queue
// for one of RefreshConcurrency slots; the loop itself never waits for a
// slot, so deadlines are kept while the queue is long.
type scheduler struct {
	mu      sync.Mutex
	h       schedHeap
	wake    chan struct{}
	running bool     // the scheduler goroutine runs
	queue   []*entry // due reads waiting for a slot, in order
	active  int      // reads the scheduler started, still in flight
}

type schedItem struct {
	at int64 // UnixNano
	e  *entry
}

// schedHeap is a min-heap of due times that keeps each entry's position in
// the entry, so that a new time for an entry moves its item.
type schedHeap []schedItem

func (h schedHeap) Len() int           { return len(h) }
func (h schedHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h schedHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].e.heapIdx, h[j].e.heapIdx = int32(i), int32(j)
}
func (h *schedHeap) Push(x any) {
	it := x.(schedItem)
	it.e.heapIdx = int32(len(*h))
	*h = append(*h, it)
}
func (h *schedHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = schedItem{}
	*h = old[:len(old)-1]
	it.e.heapIdx = -1
	return it
}

func (s *scheduler) init() { s.wake = make(chan struct{}, 1) }

// scheduleAt sets e's next due time, replacing the one it had.
// scheduleBy schedules e no later than at: unlike scheduleAt it never
// postpones what is already planned, so that news of a version (a
// refresh at a chosen moment) cannot delay the entry's own refresh,
// retry or deadline.
func (p *Provider) scheduleBy(e *entry, at time.Time) {
	p.schedule(e, at, true)
}

func (p *Provider) scheduleAt(e *entry, at time.Time) {
	p.schedule(e, at, false)
}

func (p *Provider) schedule(e *entry, at time.Time, noLater bool) {
	s := &p.sched
	s.mu.Lock()
	if e.dead() {
		s.mu.Unlock()
		return
	}
	t := at.UnixNano()
	if i := e.heapIdx; i >= 0 {
		if noLater && s.h[i].at <= t {
			s.mu.Unlock()
			return
		}
		s.h[i].at = t
		heap.Fix(&s.h, int(i))
	} else {
		heap.Push(&s.h, schedItem{at: t, e: e})
	}
	start := !s.running && p.track()
	if start {
		s.running = true
	}
	s.mu.Unlock()
	if start {
		go p.runScheduler()
		return
	}
	p.wakeScheduler()
}

func (p *Provider) wakeScheduler() {
	select {
	case p.sched.wake <- struct{}{}:
	default:
	}
}

// unschedule takes e out of the heap.
func (p *Provider) unschedule(e *entry) {
	s := &p.sched
	s.mu.Lock()
	if i := e.heapIdx; i >= 0 {
		heap.Remove(&s.h, int(i))
		s.shrinkLocked()
	}
	s.mu.Unlock()
}

// shrinkLocked gives back what a flood of names made the heap grow to.
// s.mu is held.
func (s *scheduler) shrinkLocked() {
	if len(s.h) < cap(s.h)/4 && cap(s.h) > 64 {
		s.h = slices.Clone(s.h)
	}
}

// release returns the slot of a read the scheduler started.
func (p *Provider) release() {
	s := &p.sched
	s.mu.Lock()
	s.active--
	s.mu.Unlock()
	p.wakeScheduler()
}

func (p *Provider) runScheduler() {
	defer p.wg.Done()
	s := &p.sched
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var due []*entry
	for {
		now := time.Now()
		due = due[:0]
		wait := time.Duration(-1)
		s.mu.Lock()
		for len(s.h) > 0 {
			if at := s.h[0].at; at > now.UnixNano() {
				wait = time.Duration(at - now.UnixNano())
				break
			}
			due = append(due, heap.Pop(&s.h).(schedItem).e)
		}
		s.shrinkLocked()
		if len(due) == 0 && len(s.h) == 0 && len(s.queue) == 0 {
			// Nothing to wait for: a new due time starts a new goroutine.
			s.running = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		for _, e := range due {
			if p.due(e, now) {
				s.mu.Lock()
				if !e.queued {
					e.queued = true
					s.queue = append(s.queue, e)
				}
				s.mu.Unlock()
			}
		}
		if !p.dispatch() {
			return // closing
		}
		if len(due) > 0 {
			clear(due) // hold no removed entry
			if cap(due) > 1024 {
				due = nil
			}
			continue // what they did may have changed the heap
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

// dispatch starts queued reads while slots are free. It reports false once
// the Provider is closing.
func (p *Provider) dispatch() bool {
	s := &p.sched
	for {
		s.mu.Lock()
		if len(s.queue) == 0 || s.active >= p.cfg.refreshConcurrency {
			s.mu.Unlock()
			return true
		}
		e := s.queue[0]
		s.queue[0] = nil
		s.queue = s.queue[1:]
		e.queued = false
		s.active++
		s.mu.Unlock()
		if e.dead() {
			p.release()
			continue
		}
		_, started, err := p.beginFlight(e, flightLoad, nil, true)
		if !started {
			p.release()
		}
		if err != nil {
			return false
		}
	}
}
