package kvsecrets

import (
	"log/slog"
	"math"
	"math/rand/v2"
	"strings"
	"time"
)

// This file keeps a Provider's memory and vault traffic bounded whatever
// names callers send: entries are created under the index lock, every
// live entry has exactly one place in the scheduler's heap (its next
// refresh, retry or check), the least recently used are evicted past
// Options.MaxEntries, and entries nobody reads for Options.IdleTimeout,
// and misses once NegativeTTL has passed, leave the Provider.
//
// Recency costs the cached read path one load and, at most once per epoch
// (a second), one store: the Provider's epoch is a coarse clock that the
// scheduler and the slow paths advance, and an entry remembers the epoch
// of its last read.

// epochOf returns the epoch of now: seconds since the Provider began,
// from 1.
func (p *Provider) epochOf(now time.Time) uint32 {
	s := now.Sub(p.start) / time.Second
	return uint32(min(max(s, 0), math.MaxUint32-1)) + 1
}

// tick advances the Provider's epoch to now's and returns it.
func (p *Provider) tick(now time.Time) uint32 {
	ep := p.epochOf(now)
	for {
		old := p.epoch.Load()
		if ep <= old {
			return old
		}
		if p.epoch.CompareAndSwap(old, ep) {
			return ep
		}
	}
}

// touch records a read of e. It writes only when the epoch has changed
// since e's last read, so that the cached path stays a read.
func (p *Provider) touch(e *entry) {
	if ep := p.epoch.Load(); e.seen.Load() != ep {
		e.seen.Store(ep)
	}
}

// idleLocked reports whether nobody has read e for IdleTimeout, and notes
// this check. A read since the previous check counts as a read now, so an
// entry is never thought idle early; it may be thought idle up to one
// check late. A watched entry (Watch, LoadLive) counts as read. e.mu is held.
func (p *Provider) idleLocked(e *entry, now time.Time) bool {
	ep := p.tick(now)
	if e.seen.Load() >= e.checked || e.watchedLocked() {
		e.usedAt = ep
	}
	e.checked = ep
	return time.Duration(ep-e.usedAt)*time.Second >= p.cfg.idleTimeout
}

// added accounts for a new entry: it is read now, placed in the
// scheduler's heap (a check, until its first read decides), and the least
// recently used entries are evicted if the Provider holds more than
// MaxEntries. p.idx.mu is held.
func (p *Provider) addedLocked(e *entry) {
	now := time.Now()
	ep := p.tick(now)
	e.seen.Store(ep)
	// The read that creates e is its use now; only reads from the next
	// epoch on count at the first check.
	e.checked, e.usedAt = ep+1, ep
	// Make room first, so that the count never passes the bound.
	for p.entries.Load() >= int64(p.cfg.maxEntries) {
		v := p.victimLocked(e)
		if v == nil {
			break
		}
		p.evictions.Add(1)
		p.removeLocked(v)
	}
	p.entries.Add(1)
	p.scheduleAt(e, now.Add(p.cfg.negativeTTL+p.cfg.fetchTimeout))
}

// evictionSamples is how many entries are compared to choose one to evict:
// the least recently read of a random sample, as Redis does. Five gives an
// eviction order close to true LRU at a fixed cost per new entry.
const evictionSamples = 5

// victimLocked picks the entry to evict: of a random sample of the heap
// (which holds every live entry), the least recently read that is not
// keep. A latest entry with pinned versions or a key set is passed over
// while others can be chosen: evicting it would evict them too. p.idx.mu
// is held.
func (p *Provider) victimLocked(keep *entry) *entry {
	s := &p.sched
	s.mu.Lock()
	defer s.mu.Unlock()
	var best, parent *entry
	for tries := 0; tries < 4*evictionSamples && len(s.h) > 0; tries++ {
		e := s.h[rand.N(len(s.h))].e
		if e == keep || e == best || e == keep.parent() {
			continue
		}
		if hasChildrenLocked(e) {
			parent = e
			continue
		}
		if best == nil || e.seen.Load() < best.seen.Load() {
			best = e
		}
		if tries >= evictionSamples {
			break
		}
	}
	if best == nil {
		return parent
	}
	return best
}

// hasChildrenLocked reports whether a latest entry has pinned versions or
// a key set. p.idx.mu is held.
func hasChildrenLocked(e *entry) bool {
	x := e.x.Load()
	return e.kind == kindLatest && x != nil && (x.nvers > 0 || x.verifier.Load() != nil)
}

// removeLocked takes e out of the Provider: out of the index, the heap and
// its parent, with its pinned versions and key set if it is a latest
// entry. A caller still holding e gets the answer of its read; nothing is
// cached or scheduled for it again. p.idx.mu is held.
func (p *Provider) removeLocked(e *entry) {
	e.mu.Lock()
	if e.state.Load() == deadState {
		e.mu.Unlock()
		return
	}
	e.state.Store(deadState)
	e.wakeLocked()
	e.mu.Unlock()
	p.unschedule(e)
	p.entries.Add(-1)
	x := e.x.Load()
	switch e.kind {
	case kindLatest:
		p.idx.deleteLocked(strings.ToLower(e.name), e)
		if x == nil {
			return
		}
		for _, a := range x.aliases {
			p.idx.deleteLocked(a, e)
		}
		if ve := x.verifier.Load(); ve != nil {
			p.removeLocked(ve)
		}
		for _, pe := range e.pinnedEntries() {
			p.removeLocked(pe)
		}
	case kindPinned:
		px := x.parent.ext()
		if vs := px.versions.Load(); vs != nil && vs.CompareAndDelete(x.version, e) {
			px.nvers--
		}
		p.removeOrphanLocked(x.parent)
	case kindVerifier:
		x.parent.ext().verifier.CompareAndSwap(e, nil)
		p.removeOrphanLocked(x.parent)
	}
}

// removeOrphanLocked removes a latest entry that stayed only for its
// children once its last child is gone, if it holds nothing of its own: no
// value, no miss still remembered, no read in flight. p.idx.mu is held.
func (p *Provider) removeOrphanLocked(le *entry) {
	if hasChildrenLocked(le) {
		return
	}
	le.mu.Lock()
	st := le.state.Load()
	orphan := forgettable(le, st, time.Now()) && le.flights == nil
	le.mu.Unlock()
	if orphan {
		p.removeLocked(le)
	}
}

// forgettable reports whether an entry in state st holds nothing worth
// keeping at now: no value, no remembered miss, and no background retry
// (a secret once loaded and failing transiently is retried). e.mu is held.
func forgettable(e *entry, st *state, now time.Time) bool {
	if st == deadState || st.hasValue || st.remembered(now) {
		return false
	}
	return e.kind == kindPinned || e.lastVersion == "" || refused(st)
}

// idleNow reports whether nobody has read e for IdleTimeout, and if so
// removes it (unless it holds a stale value or children). Event-driven
// refreshes ask it first, so that events cannot keep unread secrets
// refreshed.
func (p *Provider) idleNow(e *entry) bool {
	p.idx.mu.Lock()
	defer p.idx.mu.Unlock()
	e.mu.Lock()
	st := e.state.Load()
	if st == deadState {
		e.mu.Unlock()
		return true
	}
	idle := p.idleLocked(e, time.Now()) && !st.stale && !hasChildrenLocked(e)
	e.mu.Unlock()
	if idle {
		p.idleDrops.Add(1)
		p.removeLocked(e)
	}
	return idle
}

// refused reports whether st holds an authoritative refusal: one that is
// remembered for NegativeTTL and not retried.
func refused(st *state) bool {
	if st.hasValue || st.err == nil {
		return false
	}
	k := st.err.Kind
	return k == ErrNotFound || k == ErrDisabled || k == ErrForbidden
}

// due is called by the scheduler when e's time comes. It drops e if
// nobody has read it for IdleTimeout (unless it holds a stale value),
// forgets a miss once NegativeTTL has
// passed, drops a value past MaxStale, and reports whether e is to be
// read again (a refresh or a retry). A value due for refresh is served
// through the slow path, which checks MaxStale, until the refresh lands;
// until then e's next time is its MaxStale deadline.
func (p *Provider) due(e *entry, now time.Time) (refresh bool) {
	p.idx.mu.Lock()
	defer p.idx.mu.Unlock()
	e.mu.Lock()
	st := e.state.Load()
	if st == deadState {
		e.mu.Unlock()
		return false
	}
	if e.flights != nil {
		// A read is in flight: its answer schedules what comes next. Until
		// then, a value is dropped at its MaxStale deadline.
		if st.tooOld(now, p.cfg.maxStale) {
			e.setState(errState(&SecretError{Name: e.name, Version: e.version(), Kind: ErrUnavailable,
				detail: "no successful read within MaxStale"}, time.Time{}, st.seq))
			p.staleDrops.Add(1)
		} else if st.hasValue {
			e.mu.Unlock()
			p.scheduleAt(e, st.fetchedAt().Add(p.cfg.maxStale))
			return false
		}
		e.mu.Unlock()
		return false
	}
	// A stale value is not dropped for idleness: through an outage it is
	// the only copy, served until MaxStale.
	idle := p.idleLocked(e, now) && !st.stale
	children := hasChildrenLocked(e)
	loaded := st.hasValue || (e.kind != kindPinned && e.lastVersion != "" && !refused(st))
	switch {
	case idle && !children:
		e.mu.Unlock()
		p.idleDrops.Add(1)
		p.removeLocked(e)
		return false
	case idle:
		// Its pinned versions or key set are still read: keep the entry
		// that holds them, without a value or refreshes of its own.
		e.setState(emptyState)
		e.failures = 0
		e.mu.Unlock()
		p.scheduleAt(e, now.Add(p.cfg.idleTimeout))
		return false
	case !loaded:
		// A miss, a refusal, or a name only its children use: forgotten
		// with the last of them (see removeOrphanLocked).
		e.mu.Unlock()
		switch {
		case st.remembered(now):
			p.scheduleAt(e, time.Unix(0, st.at))
		case children:
			p.scheduleAt(e, now.Add(p.cfg.idleTimeout))
		default:
			p.removeLocked(e)
		}
		return false
	case e.kind == kindPinned:
		// Pinned versions are not refreshed on a timer (see read): a check
		// until they go idle, and their MaxStale deadline.
		if st.tooOld(now, p.cfg.maxStale) {
			e.setState(errState(&SecretError{Name: e.name, Version: e.version(), Kind: ErrUnavailable,
				detail: "not re-validated within MaxStale"}, time.Time{}, st.seq))
		}
		e.mu.Unlock()
		p.scheduleAt(e, now.Add(min(p.cfg.ttl, p.cfg.idleTimeout)))
		return false
	}
	dropped := false
	if st.tooOld(now, p.cfg.maxStale) {
		// The same seq as the stale state: a read already in flight is
		// newer and must still be applied when it returns.
		e.setState(errState(&SecretError{Name: e.name, Kind: ErrUnavailable,
			detail: "no successful refresh within MaxStale"}, time.Time{}, st.seq))
		dropped = true
	} else if st.ready {
		e.setState(st.dueCopy())
	}
	e.mu.Unlock()
	if st.hasValue && !dropped {
		p.scheduleAt(e, st.fetchedAt().Add(p.cfg.maxStale))
	}
	if dropped {
		p.staleDrops.Add(1)
		p.cfg.logger.Warn("kvsecrets: cached value dropped: no successful refresh within MaxStale",
			slog.String("secret", e.name), slog.Duration("maxStale", p.cfg.maxStale))
	}
	return true
}
