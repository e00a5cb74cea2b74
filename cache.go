package kvsecrets

import (
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// state is an immutable snapshot of what an entry answers. Writers build a
// new state and store it in entry.state; readers load the pointer and never
// take a lock.
type state struct {
	secret Secret

	// ready means: serve secret as it is. It is the only field the cached
	// read path tests: it is false whenever serving needs a look at the
	// clock (a stale value, a validity window to enforce) or there is no
	// value at all.
	ready bool

	hasValue bool      // secret holds a value that may be served
	stale    bool      // the last refresh failed; the value is kept until fetched+MaxStale
	validity bool      // Options.EnforceValidity and the secret has nbf or exp
	fetched  time.Time // when the value was last read successfully

	// For a Verify key set: the versions a presented key may match, the
	// latest first, when each may match (checked against the clock when a
	// key is presented, if bounded is set), and the error a mismatch
	// returns (made once).
	accepted []Secret
	windows  []keyWindow
	bounded  bool
	mismatch *SecretError

	err      *SecretError // without a value: the last answer, if any
	errUntil time.Time    // err is remembered until then (zero: not remembered)

	seq uint64 // the fetch that produced this state; older fetches never overwrite newer ones
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

func valueState(f fetched, at time.Time, seq uint64, enforceValidity bool) *state {
	s := f.sec
	st := &state{secret: s, hasValue: true, fetched: at, seq: seq, accepted: f.accepted, windows: f.windows}
	if f.accepted != nil {
		st.mismatch = &SecretError{Name: s.Name, Kind: ErrMismatch}
		for _, w := range f.windows {
			st.bounded = st.bounded || w != (keyWindow{})
		}
	}
	st.validity = enforceValidity && (!s.NotBefore.IsZero() || !s.Expires.IsZero())
	st.ready = !st.validity
	return st
}

// staleCopy returns the same value marked stale: it is still served, but
// through the slow path, which counts stale serves.
func (st *state) staleCopy(seq uint64) *state {
	c := *st
	c.stale, c.ready, c.seq = true, false, seq
	return &c
}

// checkValidity returns ErrExpired or ErrNotYetValid when the secret is
// outside its nbf/exp window and validity is enforced.
func (st *state) checkValidity(now time.Time, name, version string) error {
	if !st.validity {
		return nil
	}
	s := &st.secret
	if !s.NotBefore.IsZero() && now.Before(s.NotBefore) {
		return &SecretError{Name: name, Version: version, Kind: ErrNotYetValid,
			detail: "nbf " + s.NotBefore.UTC().Format(time.RFC3339)}
	}
	if !s.Expires.IsZero() && !now.Before(s.Expires) {
		return &SecretError{Name: name, Version: version, Kind: ErrExpired,
			detail: "exp " + s.Expires.UTC().Format(time.RFC3339)}
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
	seq  uint64 // the entry's fetch sequence when the read started
	done chan struct{}
	st   *state       // the entry's state after the read
	err  *SecretError // the read's own failure, nil on success
}

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
// version, or a Verify key set. Entries are never removed while the
// Provider is open, so a pointer found in the index stays valid.
type entry struct {
	state atomic.Pointer[state]

	kind    entryKind
	name    string // the name as first asked for; sent to the vault
	canon   string // lower-case name, the identity of the entry
	version string // the pinned version; "" otherwise

	// versions holds the pinned-version entries of a latest entry,
	// copy-on-write under mu; verifier its Verify key set, once used.
	versions atomic.Pointer[map[string]*entry]
	verifier atomic.Pointer[entry]
	parent   *entry // of a pinned version or key set: the latest entry of its name

	mu          sync.Mutex // guards the fields below; never held across I/O or callbacks
	flights     [numFlights]*flight
	seq         uint64          // last fetch sequence handed out
	lastVersion string          // last version served; "" before the first success
	failures    int             // consecutive transient failures
	warned      string          // version whose expiry was already warned about
	pending     []RotationEvent // OnRotate calls not yet made, in order
	draining    bool            // a goroutine is making the pending calls
	aliases     int             // other spellings of the name in the index
	eventAt     time.Time       // when the last event-driven refresh started, or is planned
	rerun       bool            // read again (forced) when the forced read in flight ends
	history     []string        // latest entry: versions seen as the latest, oldest first (at most maxHistory)

	schedGen uint64 // guarded by scheduler.mu: only the newest schedule counts
}

func newEntry(kind entryKind, name, canon, version string) *entry {
	e := &entry{kind: kind, name: name, canon: canon, version: version}
	e.state.Store(emptyState)
	return e
}

// keySet returns the Verify key set entry of a latest entry, creating it.
func (e *entry) keySet() (ve *entry, created bool) {
	if ve := e.verifier.Load(); ve != nil {
		return ve, false
	}
	ve = newEntry(kindVerifier, e.name, e.canon, "")
	ve.parent = e
	if e.verifier.CompareAndSwap(nil, ve) {
		return ve, true
	}
	return e.verifier.Load(), false
}

// pinned returns the entry for a pinned version of e, creating it.
func (e *entry) pinned(version string) (pe *entry, created bool) {
	if m := e.versions.Load(); m != nil {
		if pe := (*m)[version]; pe != nil {
			return pe, false
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.versions.Load()
	if old != nil {
		if pe := (*old)[version]; pe != nil {
			return pe, false
		}
	}
	m := make(map[string]*entry, 1)
	if old != nil {
		m = maps.Clone(*old)
	}
	pe = newEntry(kindPinned, e.name, e.canon, version)
	pe.parent = e
	m[version] = pe
	e.versions.Store(&m)
	return pe, true
}

// maxHistory bounds entry.history.
const maxHistory = 16

// noteLatest records that version was seen as the latest of e's name.
// e.mu must be held.
func (e *entry) noteLatest(version string) {
	if n := len(e.history); n > 0 && e.history[n-1] == version {
		return
	}
	if i := slices.Index(e.history, version); i >= 0 {
		// Seen before and again now: a rollback, or a stale answer. Its
		// first sighting is what orders it.
		return
	}
	if len(e.history) == maxHistory {
		e.history = slices.Delete(e.history, 0, 1)
	}
	e.history = append(e.history, version)
}

// maxAliases bounds how many other spellings of one name get a fast-path
// slot; more spellings still work, through the slow path.
const maxAliases = 8

// index maps names to entries. Reads of names present in read take no lock
// and allocate nothing: read points to a map that is never written after it
// is published. New names go to dirty (a superset of read, under mu), which
// is published in place of read once the misses it causes have paid for the
// copy — the scheme sync.Map uses, specialised to string keys that are never
// deleted.
type index struct {
	read atomic.Pointer[map[string]*entry]

	mu     sync.Mutex
	dirty  map[string]*entry // nil when read holds everything
	misses int
}

func (x *index) init() {
	m := map[string]*entry{}
	x.read.Store(&m)
}

// load returns the entry stored under key, or nil.
func (x *index) load(key string) *entry {
	if e := (*x.read.Load())[key]; e != nil {
		return e
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if e := (*x.read.Load())[key]; e != nil {
		return e
	}
	if x.dirty == nil {
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
		m := x.dirty
		x.read.Store(&m)
		x.dirty, x.misses = nil, 0
	}
}

// getLocked returns the entry under key from dirty or read. The caller holds x.mu.
func (x *index) getLocked(key string) *entry {
	if x.dirty != nil {
		return x.dirty[key]
	}
	return (*x.read.Load())[key]
}

// counter is a striped counter: increments from many cores land on
// different cache lines, so counting hits does not serialise the cached
// read path. The leading pad keeps the first stripe off the cache line of
// the fields before it, which the read path loads.
type counter struct {
	_       [64]byte
	stripes [16]struct {
		n atomic.Uint64
		_ [56]byte
	}
}

func (c *counter) inc() {
	// The address of a local variable tells goroutines apart at no cost:
	// each has its own stack, and goroutines running at the same moment run
	// on different stacks. Fibonacci hashing spreads the addresses over the
	// stripes.
	var x byte
	h := uint64(uintptr(unsafe.Pointer(&x))>>10) * 0x9E3779B97F4A7C15
	c.stripes[h>>60].n.Add(1)
}

func (c *counter) load() uint64 {
	var n uint64
	for i := range c.stripes {
		n += c.stripes[i].n.Load()
	}
	return n
}
