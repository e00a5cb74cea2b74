package kvsecrets

import (
	"context"
	"errors"
	"iter"
	"slices"
)

// Watch yields the named secret as it is served: its current version
// first, then each new version once the Provider serves it (after a
// background refresh, [Provider.Refresh], an Event Grid event or
// [Provider.Notify], [Provider.Rotate]), until ctx ends, the Provider is
// closed, or the loop stops:
//
//	for s, err := range secrets.Watch(ctx, "StripeKey") {
//		if err != nil {
//			log.Printf("StripeKey is not served: %v", err) // revoked, or past MaxStale
//			continue
//		}
//		client.SetKey(s.Value())
//	}
//
// An error is yielded when the secret stops being served (deleted,
// disabled, forbidden, dropped past Options.MaxStale, or a first read that
// failed), once per change; the value that comes back is yielded again. An
// invalid name yields ErrInvalidName once. Watch reads the vault only where
// [Provider.Get] would: for a secret not cached yet, and for one not served
// (deleted, say) once Options.NegativeTTL has passed, so that its return is
// seen.
//
// Watch is an iterator rather than a channel so that it needs no goroutine
// and nothing to drain or close: the loop body runs on the caller's
// goroutine, and each time it returns, Watch looks at what is served now.
// A slow body therefore misses the versions that came and went while it
// ran, and always gets the latest; break ends the watch at once. A watched
// secret counts as read, so it is refreshed and never dropped for
// idleness.
func (p *Provider) Watch(ctx context.Context, name string) iter.Seq2[Secret, error] {
	h, err := p.Handle(name)
	if err != nil {
		return func(yield func(Secret, error) bool) { yield(Secret{}, err) }
	}
	return h.Watch(ctx)
}

// Watch is [Provider.Watch] for the handle's secret.
func (h *Handle) Watch(ctx context.Context) iter.Seq2[Secret, error] {
	return func(yield func(Secret, error) bool) {
		p := h.p
		wake := make(chan struct{}, 1)
		var e *entry // the entry wake is registered in
		defer func() {
			if e != nil {
				e.unfollow(wake)
			}
		}()
		var last answerKey
		first := true
		for !p.closed.Load() && ctx.Err() == nil {
			e = h.follow(e, wake)
			sec, err, ok := h.served(ctx, e)
			if p.closed.Load() || ctx.Err() != nil {
				return
			}
			if k := keyOf(sec, err); ok && (first || k != last) {
				first, last = false, k
				if !yield(sec, err) {
					return
				}
			}
			select {
			case <-wake:
			case <-ctx.Done():
				return
			case <-p.ctx.Done():
				return
			}
		}
	}
}

// answerKey tells a watcher's answers apart: the version served, or the
// kind of error.
type answerKey struct {
	version string
	kind    error
}

func keyOf(s Secret, err error) answerKey {
	if err == nil {
		return answerKey{version: s.Version}
	}
	var se *SecretError
	if errors.As(err, &se) {
		return answerKey{kind: se.Kind}
	}
	return answerKey{kind: err}
}

// served returns what the handle serves from e now, as Get would, except
// that a failure already recorded is returned as it is rather than asked
// of the vault again: a watcher woken by that failure must not read again,
// and again. ok is false when e was removed meanwhile.
func (h *Handle) served(ctx context.Context, e *entry) (Secret, error, bool) {
	st := e.state.Load()
	switch {
	case st == deadState:
		return Secret{}, nil, false
	case st.hasValue || st.err == nil:
		// A value, or nothing read yet: Get's path, which reads the vault
		// only in the second case.
		st, err := h.p.read(ctx, e, h.name)
		if err != nil {
			return Secret{}, err, !errors.Is(err, ErrClosed)
		}
		return st.secret().clone(), nil, true
	default:
		return Secret{}, st.err.as(h.name), true
	}
}

// follow returns the live entry of the handle's name with wake registered
// in it, moving wake from prev, where it was registered (nil for none).
func (h *Handle) follow(prev *entry, wake chan struct{}) *entry {
	for {
		e, err := h.entry()
		if err != nil {
			panic("kvsecrets: internal error: a handle's name no longer validates")
		}
		if e == prev && !e.dead() {
			return e
		}
		if prev != nil {
			prev.unfollow(wake)
		}
		prev = nil
		if e.follow(wake) {
			return e
		}
		// Removed between the two: find it again.
	}
}

// follow registers wake, a channel of capacity one, to be signalled on
// each change of e's state and on e's removal. It reports false if e was
// removed already.
func (e *entry) follow(wake chan struct{}) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.state.Load() == deadState {
		return false
	}
	lx := e.liveLocked()
	lx.wakers = append(lx.wakers, wake)
	return true
}

// unfollow removes wake from e's wakers.
func (e *entry) unfollow(wake chan struct{}) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if x := e.x.Load(); x != nil && x.live != nil {
		lx := x.live
		lx.wakers = slices.DeleteFunc(lx.wakers, func(c chan struct{}) bool { return c == wake })
		if len(lx.wakers) == 0 {
			lx.wakers = nil
		}
	}
}

// wakeLocked signals e's wakers without waiting: a waker already signalled
// stays so, and its watcher looks at the latest state when it next runs.
// e.mu is held.
func (e *entry) wakeLocked() {
	x := e.x.Load()
	if x == nil || x.live == nil {
		return
	}
	for _, w := range x.live.wakers {
		select {
		case w <- struct{}{}:
		default:
		}
	}
}

// watchedLocked reports whether anything follows e. e.mu is held.
func (e *entry) watchedLocked() bool {
	x := e.x.Load()
	return x != nil && x.live != nil && len(x.live.wakers) > 0
}
