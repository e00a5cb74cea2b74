package kvsecrets

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
)

// Handle reads one secret, named once. Make it at start-up with
// [Provider.Handle] and keep it (in a struct field, a package variable):
// a cached [Handle.Get] is an atomic load and a check, with no map lookup,
// lock or allocation. Otherwise it behaves as [Provider.Get] in every
// respect: the first read goes to the vault and is shared with concurrent
// readers, a refresh that fails serves the value stale up to
// Options.MaxStale, a revoked secret fails at once, and errors are the
// same. If the Provider drops the secret (evicted past Options.MaxEntries,
// or idle for Options.IdleTimeout), the next read finds or makes the
// name's entry again, as Get would. A Handle is safe for concurrent use.
//
// A Handle prints as its name; it holds no value of its own.
type Handle struct {
	p    *Provider
	name string                // as the caller spelled it, for errors
	e    atomic.Pointer[entry] // the entry last read through; nil before the first read
}

// Handle returns a Handle for the latest version of the named secret. It
// validates the name (ErrInvalidName) and makes no request: the first read
// through the Handle reads the vault. Handles of one name, and Get, share
// one cache entry.
func (p *Provider) Handle(name string) (*Handle, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	return &Handle{p: p, name: name}, nil
}

// Name returns the secret's name as given to [Provider.Handle].
func (h *Handle) Name() string { return h.name }

// Get returns the value of the latest version of the secret, as
// [Provider.Get] does.
func (h *Handle) Get(ctx context.Context) (string, error) {
	if e := h.e.Load(); e != nil {
		if st := e.state.Load(); st.ready && !h.p.closed.Load() {
			p := h.p
			p.touch(e)
			// p.hits.inc(), written out: one call fewer on the hot path.
			slots, id := p.hits.slots, procPin()
			if plainCount && uint(id) < uint(len(slots)) {
				slots[id].n++
				procUnpin()
			} else {
				procUnpin()
				p.hits.incSlow(id)
			}
			return string(st.value), nil
		}
	}
	st, err := h.slow(ctx)
	if err != nil {
		return "", err
	}
	return string(st.value), nil
}

// Secret returns the latest version of the secret with its metadata, as
// [Provider.GetSecret] does. Its Tags map is a copy.
func (h *Handle) Secret(ctx context.Context) (Secret, error) {
	if e := h.e.Load(); e != nil {
		if st := e.state.Load(); st.ready && !h.p.closed.Load() {
			h.p.touch(e)
			h.p.hits.inc()
			return st.secret().clone(), nil
		}
	}
	st, err := h.slow(ctx)
	if err != nil {
		return Secret{}, err
	}
	return st.secret().clone(), nil
}

// slow is Get's slow path through the handle's entry, found again if the
// Provider removed it.
func (h *Handle) slow(ctx context.Context) (*state, error) {
	if h.p.closed.Load() {
		return nil, &SecretError{Name: h.name, Kind: ErrClosed}
	}
	e, err := h.entry()
	if err != nil {
		return nil, err
	}
	return h.p.read(ctx, e, h.name)
}

// entry returns the live entry of the handle's name, making it if the
// Provider has none (never read, or removed).
func (h *Handle) entry() (*entry, error) {
	if e := h.e.Load(); e != nil && !e.dead() {
		return e, nil
	}
	e, err := h.p.entryFor(h.name)
	if err != nil {
		return nil, err
	}
	h.e.Store(e)
	return e, nil
}

// String describes the handle by the secret's name.
func (h *Handle) String() string {
	if h == nil {
		return "kvsecrets.Handle(nil)"
	}
	return "kvsecrets.Handle{Name: " + strconv.Quote(h.name) + "}"
}

// GoString is used by %#v; it describes the handle by name.
func (h *Handle) GoString() string { return h.String() }

// Format prints the handle's description for every verb.
func (h *Handle) Format(f fmt.State, verb rune) { fmt.Fprint(f, h.String()) }

// LogValue implements slog.LogValuer: the secret's name.
func (h *Handle) LogValue() slog.Value {
	if h == nil {
		return slog.StringValue("<nil>")
	}
	return slog.GroupValue(slog.String("name", h.name))
}

// MarshalJSON encodes the secret's name.
func (h *Handle) MarshalJSON() ([]byte, error) {
	return []byte(`{"name":` + strconv.Quote(h.name) + `}`), nil
}
