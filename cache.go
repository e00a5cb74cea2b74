package kvsecrets

import (
	"context"
	"maps"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// state is an immutable snapshot of what an entry answers. Writers build a
// new state and store it in entry.state; readers load the pointer and never
// take a lock. It is kept small (a cached secret costs about twice a
// sync.Map entry; see BENCHMARKS.md): times are Unix seconds and the
// [Secret] is built when asked for.
type state struct {
	value    redacted // the secret's value; a Secret made by secret points here
	name     string   // as the vault spells it
	version  string
	meta     *meta // nil when the secret has neither content type nor tags
	nbf, exp int64 // Unix seconds; noTime when unset
	created  int64
	updated  int64

	// at is, with a value, when it was read (UnixNano); without one, until
	// when err is remembered (zero: not remembered).
	at   int64
	keys *keySet      // a Verify key set's accepted versions; nil otherwise
	err  *SecretError // without a value: the last answer, if any
	seq  uint32       // the fetch that produced this state; older fetches never overwrite newer ones

	// ready means: serve the value as it is. It is the only field the
	// cached read path tests: it is false whenever serving needs a look at
	// the clock (a stale value, a refresh due, a validity window to
	// enforce) or there is no value at all.
	ready    bool
	hasValue bool // value may be served (until at+MaxStale)
	stale    bool // the last refresh failed; the value is kept until at+MaxStale
	validity bool // Options.EnforceValidity and the secret has nbf or exp
}

// meta is what few secrets have.
type meta struct {
	contentType string
	tags        map[string]string
}

// noTime marks an unset time in a state.
const noTime = math.MinInt64

func unixOf(t time.Time) int64 {
	if t.IsZero() {
		return noTime
	}
	return t.Unix()
}

// timeOf inverts unixOf. The SDK makes its times with time.Unix, so the
// result equals what it returned.
func timeOf(s int64) time.Time {
	if s == noTime {
		return time.Time{}
	}
	return time.Unix(s, 0)
}

// keySet is what a Verify key set accepts: the versions a presented key may
// match, the latest first, when each may match (checked against the clock
// when a key is presented, if bounded is set), and the error a mismatch
// returns (made once).
type keySet struct {
	accepted []Secret
	windows  []keyWindow
	bounded  bool
	mismatch *SecretError
}

// keyWindow is when an accepted version may match a presented key: from its
// nbf, until the earlier of its exp and the end of its overlap. Zero times
// are open ends.
type keyWindow struct{ from, until time.Time }

// open reports whether now is inside w.
func (w keyWindow) open(now time.Time) bool {
	return (w.from.IsZero() || !now.Before(w.from)) && (w.until.IsZero() || now.Before(w.until))
}

// emptyState is the state of an entry that has never been read.
var emptyState = &state{}

// deadState is the state of an entry removed from the Provider: nothing
// reads it through the index any more, and nothing is stored over it.
var deadState = &state{}

func valueState(f fetched, at time.Time, seq uint32, enforceValidity bool) *state {
	s := f.sec
	st := &state{
		value: *s.value, name: s.Name, version: s.Version,
		nbf: unixOf(s.NotBefore), exp: unixOf(s.Expires), created: unixOf(s.Created), updated: unixOf(s.Updated),
		at: at.UnixNano(), seq: seq, hasValue: true,
	}
	if s.ContentType != "" || s.Tags != nil {
		st.meta = &meta{contentType: s.ContentType, tags: s.Tags}
	}
	if f.accepted != nil {
		ks := &keySet{accepted: f.accepted, windows: f.windows, mismatch: &SecretError{Name: s.Name, Kind: ErrMismatch}}
		for _, w := range f.windows {
			ks.bounded = ks.bounded || w != (keyWindow{})
		}
		st.keys = ks
	}
	st.validity = enforceValidity && (st.nbf != noTime || st.exp != noTime)
	st.ready = !st.validity
	return st
}

// errState is a state without a value that answers err, remembered until
// until (zero: not remembered).
func errState(err *SecretError, until time.Time, seq uint32) *state {
	st := &state{err: err, seq: seq}
	if !until.IsZero() {
		st.at = until.UnixNano()
	}
	return st
}

// secret returns the Secret st holds. Its Tags are st's own: callers that
// hand it out clone them.
func (st *state) secret() Secret {
	s := Secret{
		Name: st.name, Version: st.version,
		NotBefore: timeOf(st.nbf), Expires: timeOf(st.exp), Created: timeOf(st.created), Updated: timeOf(st.updated),
		value: &st.value,
	}
	if m := st.meta; m != nil {
		s.ContentType, s.Tags = m.contentType, m.tags
	}
	return s
}

// fetchedAt is when a state's value was read.
func (st *state) fetchedAt() time.Time { return time.Unix(0, st.at) }

// remembered reports whether st's error is still remembered at now.
func (st *state) remembered(now time.Time) bool {
	return !st.hasValue && st.err != nil && st.at != 0 && now.UnixNano() < st.at
}

// tooOld reports whether st's value was read maxStale or more before now:
// it is never served then, whatever the refresh queue does.
func (st *state) tooOld(now time.Time, maxStale time.Duration) bool {
	return st.hasValue && now.UnixNano()-st.at >= int64(maxStale)
}

// staleCopy returns the same value marked stale: it is still served, but
// through the slow path, which counts stale serves and checks MaxStale.
func (st *state) staleCopy(seq uint32) *state {
	c := *st
	c.stale, c.ready, c.seq = true, false, seq
	return &c
}

// dueCopy returns the same value, served through the slow path (which
// checks MaxStale against the clock) while its refresh is due.
func (st *state) dueCopy() *state {
	c := *st
	c.ready = false
	return &c
}

// checkValidity returns ErrExpired or ErrNotYetValid when the secret is
// outside its nbf/exp window and validity is enforced.
func (st *state) checkValidity(now time.Time, name, version string) error {
	if !st.validity {
		return nil
	}
	if st.nbf != noTime && now.Before(timeOf(st.nbf)) {
		return &SecretError{Name: name, Version: version, Kind: ErrNotYetValid,
			detail: "nbf " + timeOf(st.nbf).UTC().Format(time.RFC3339)}
	}
	if st.exp != noTime && !now.Before(timeOf(st.exp)) {
		return &SecretError{Name: name, Version: version, Kind: ErrExpired,
			detail: "exp " + timeOf(st.exp).UTC().Format(time.RFC3339)}
	}
	return nil
}

// flight kinds: a load is a cold read or a background refresh; a forced read
// is Refresh, which must not join a read that started before it was called.
const (
	flightLoad = iota
	flightForced
	numFlights
)

// flight is one read of the vault shared by every caller that asks for the
// same entry while it runs.
type flight struct {
	seq        uint32 // the entry's fetch sequence when the read started
	background bool   // started by the scheduler, which holds a slot for it
	retry      bool   // a caller's first read: throttling is retried within FetchTimeout
	done       chan struct{}
	// A caller's first read (retry) is abandoned while its first request
	// waits for the pacer's turn once every caller waiting for it has given
	// up: gone is then closed. waiters counts them; waiters and abandoned
	// are guarded by the entry's mu. sent is set when the first request
	// goes: from then on the read runs to its end, and later callers join
	// it.
	goneCtx   context.Context // made by fetch
	abandon   context.CancelFunc
	waiters   int
	abandoned bool
	phase     atomic.Int32 // flightWaiting, then flightSent or flightAbandoned
	st        *state       // the entry's state after the read
	err       *SecretError // the read's own failure, nil on success
}

// A flight's phase: its first request waits for its turn, then either
// goes or, if every caller gave up first, never goes.
const (
	flightWaiting int32 = iota
	flightSent
	flightAbandoned
)

// entryKind tells what an entry caches.
type entryKind uint8

const (
	kindLatest   entryKind = iota // the latest version of a name, refreshed in the background
	kindPinned                    // one version, re-validated on use
	kindVerifier                  // the key set Verify accepts, refreshed in the background
)

// fetched is what one read of the vault returns for an entry.
type fetched struct {
	sec      Secret
	accepted []Secret    // kindVerifier only
	windows  []keyWindow // kindVerifier only: accepted[i] matches within windows[i]
}

// entry is one cached secret: the latest version of a name, a pinned
// version, or a Verify key set. It is kept small; what few entries need
// lives in extra. A pointer to an entry stays valid after the entry is
// removed (its state is then deadState): a caller holding it gets its
// answer, and nothing is cached or scheduled for it any more.
type entry struct {
	state atomic.Pointer[state]

	// seen is the Provider's epoch when the entry was last read, written
	// by the cached path only when it differs (at most once per epoch).
	seen atomic.Uint32
	// checked is the epoch of the entry's last idleness check and usedAt
	// when a check last found it read (seconds since the Provider began);
	// guarded by mu.
	checked, usedAt uint32
	heapIdx         int32 // position in the scheduler's heap; guarded by scheduler.mu
	seq             uint32
	failures        uint16 // consecutive transient failures
	kind            entryKind
	aliases         uint8 // other spellings of the name in the index; guarded by index.mu
	rerun           bool  // read again (forced) when the forced read in flight ends
	queued          bool  // waiting for a refresh slot; guarded by scheduler.mu

	name        string // the name as first asked for; sent to the vault
	mu          sync.Mutex
	flights     *[numFlights]*flight // nil when no read is in flight
	lastVersion string               // last version served; "" before the first success
	x           atomic.Pointer[extra]
}

// extra holds what only some entries need: the relations of pinned
// versions and key sets to the latest entry of their name, history,
// pending callbacks and event timing. Its fields are guarded by the
// entry's mu unless said otherwise.
type extra struct {
	version  string                   // a pinned version's version; immutable
	parent   *entry                   // of a pinned version or key set: the latest entry of its name; immutable
	verifier atomic.Pointer[entry]    // a latest entry's Verify key set, once used
	versions atomic.Pointer[sync.Map] // a latest entry's pinned versions: version → *entry (changed under index.mu)
	nvers    int                      // pinned versions; guarded by index.mu
	aliases  []string                 // other spellings of the name in the index; guarded by index.mu
	history  []string                 // versions seen as the latest, oldest first (at most maxHistory)
	ev       *events                  // made on first use
	live     *liveExtra               // made on first use by Watch, LoadLive or a failure
}

// liveExtra is what Watch, LoadLive and Status need of an entry; guarded
// by the entry's mu. It hangs off extra by one pointer, so that the entries
// that need none of it (pinned versions) stay small.
type liveExtra struct {
	wakers []chan struct{} // signalled on every change of state (see watch.go)
	health *healthNote     // failures since the last success of a loaded secret (see health.go)
}

// liveLocked returns e's liveExtra, making it. e.mu is held.
func (e *entry) liveLocked() *liveExtra {
	x := e.ext()
	if x.live == nil {
		x.live = &liveExtra{}
	}
	return x.live
}

// events is what an entry keeps about rotations, expiry warnings and
// Event Grid events; guarded by the entry's mu.
type events struct {
	pending  []RotationEvent // OnRotate calls not yet made, in order
	draining bool            // a goroutine is making the pending calls
	warned   string          // version whose expiry was already warned about
	eventAt  time.Time       // when the last event-driven refresh started, or is planned
	nearAt   time.Time       // when OnNearExpiry was last called for it
}

// events returns e's events, making them. e.mu is held.
func (e *entry) events() *events {
	x := e.ext()
	if x.ev == nil {
		x.ev = &events{}
	}
	return x.ev
}

func newEntry(kind entryKind, name string) *entry {
	e := &entry{kind: kind, name: name, heapIdx: -1}
	e.state.Store(emptyState)
	return e
}

// ext returns e's extra, making it on first use.
func (e *entry) ext() *extra {
	if x := e.x.Load(); x != nil {
		return x
	}
	e.x.CompareAndSwap(nil, &extra{})
	return e.x.Load()
}

// version is a pinned entry's version; "" for the others.
func (e *entry) version() string {
	if x := e.x.Load(); x != nil {
		return x.version
	}
	return ""
}

// parent is the latest entry of a pinned version or key set; nil for a
// latest entry.
func (e *entry) parent() *entry {
	if x := e.x.Load(); x != nil {
		return x.parent
	}
	return nil
}

// verifier is a latest entry's key set, or nil.
func (e *entry) verifier() *entry {
	if x := e.x.Load(); x != nil {
		return x.verifier.Load()
	}
	return nil
}

// pinnedEntries returns a latest entry's pinned versions.
func (e *entry) pinnedEntries() []*entry {
	x := e.x.Load()
	if x == nil {
		return nil
	}
	vs := x.versions.Load()
	if vs == nil {
		return nil
	}
	var out []*entry
	vs.Range(func(_, v any) bool {
		out = append(out, v.(*entry))
		return true
	})
	return out
}

// dead reports whether e was removed from its Provider.
func (e *entry) dead() bool { return e.state.Load() == deadState }

// setState stores st unless e was removed. e.mu is held.
func (e *entry) setState(st *state) {
	if e.state.Load() != deadState {
		e.state.Store(st)
		e.wakeLocked()
	}
}

// maxHistory bounds the history of latest versions.
const maxHistory = 16

// history returns the versions seen as the latest of e's name, oldest
// first. e.mu is held. The result must not be modified.
func (e *entry) history() []string {
	if x := e.x.Load(); x != nil && x.history != nil {
		return x.history
	}
	if e.lastVersion != "" {
		return []string{e.lastVersion}
	}
	return nil
}

// noteLatest records that version was seen as the latest of e's name,
// before e.lastVersion is updated. An entry that has only ever seen one
// version keeps no history of its own: it is [lastVersion]. e.mu is held.
func (e *entry) noteLatest(version string) {
	x := e.x.Load()
	if x == nil || x.history == nil {
		if e.lastVersion == "" || e.lastVersion == version {
			if x != nil && e.lastVersion == "" {
				x.history = []string{version}
			}
			return
		}
		x = e.ext()
		x.history = []string{e.lastVersion}
	}
	h := x.history
	if h[len(h)-1] == version || slices.Contains(h, version) {
		// Seen before: the same answer, or a rollback or a stale answer,
		// which its first sighting orders.
		return
	}
	if len(h) == maxHistory {
		h = slices.Delete(slices.Clone(h), 0, 1)
	}
	x.history = append(h, version)
}

// maxAliases bounds how many other spellings of one name get a fast-path
// slot; more spellings still work, through the slow path.
const maxAliases = 8

// index maps names to entries. Reads of names present in read take no lock
// and allocate nothing: read points to a map that is never written after it
// is published. Changes go to dirty (a copy of read with the changes, under
// mu), which is published in place of read once the misses it causes have
// paid for the copy — the scheme sync.Map uses, specialised to string keys.
// A removed entry may stay in read until the next publication; its state
// is deadState, which the read path never serves.
type index struct {
	read atomic.Pointer[map[string]*entry]

	mu     sync.Mutex
	dirty  map[string]*entry // nil when read holds everything
	misses int
	peak   int // the most keys dirty held since it was last made afresh
}

func (x *index) init() {
	m := map[string]*entry{}
	x.read.Store(&m)
}

// load returns the entry stored under key, or nil.
func (x *index) load(key string) *entry {
	if e := (*x.read.Load())[key]; e != nil && !e.dead() {
		return e
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.dirty == nil {
		if e := (*x.read.Load())[key]; e != nil && !e.dead() {
			return e
		}
		return nil
	}
	e := x.dirty[key]
	x.missLocked()
	return e
}

func (x *index) missLocked() {
	x.misses++
	if x.misses < len(x.dirty) {
		return
	}
	x.publishLocked()
}

func (x *index) publishLocked() {
	m := x.dirty
	x.read.Store(&m)
	x.dirty, x.misses = nil, 0
}

// storeLocked adds key → e. The caller holds x.mu.
func (x *index) storeLocked(key string, e *entry) {
	if x.dirty == nil {
		x.dirty = maps.Clone(*x.read.Load())
	}
	x.dirty[key] = e
	if len(x.dirty) <= 64 {
		// Small maps are cheap to copy: publish at once, so that
		// start-up reads are lock-free from the first hit.
		x.publishLocked()
	}
}

// deleteLocked removes key if it maps to e. The caller holds x.mu.
func (x *index) deleteLocked(key string, e *entry) {
	if x.getLocked(key) != e {
		return
	}
	if x.dirty == nil {
		x.dirty = maps.Clone(*x.read.Load())
	}
	delete(x.dirty, key)
	x.peak = max(x.peak, len(x.dirty)+1)
	if len(x.dirty) < x.peak/4 {
		// A Go map keeps its size when keys are deleted: after a flood
		// of names has gone, copy what is left into a map of its size.
		m := make(map[string]*entry, len(x.dirty))
		for k, e := range x.dirty {
			m[k] = e
		}
		x.dirty, x.peak = m, len(m)
	}
	if len(x.dirty) <= 64 {
		x.publishLocked()
	}
}

// getLocked returns the entry under key from dirty or read. The caller holds x.mu.
func (x *index) getLocked(key string) *entry {
	if x.dirty != nil {
		return x.dirty[key]
	}
	return (*x.read.Load())[key]
}
