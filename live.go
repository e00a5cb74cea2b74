package kvsecrets

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// LiveOptions are the optional settings of [LoadLive].
type LiveOptions[T any] struct {
	// OnChange is called after each rebuild with the snapshot replaced
	// and the new one, on the Live's own goroutine, one call at a time; a
	// panic is recovered and logged. Neither snapshot may be modified.
	OnChange func(old, new *T)
	// OnError is called when a rebuild fails (the previous snapshot
	// stays current), with the error [Live.Err] returns, as OnChange is.
	OnError func(err error)
}

// Live is a configuration that follows rotations: an immutable snapshot of
// a struct filled as [Provider.Load] fills it, rebuilt and swapped
// atomically when any secret in it is served with a new version. Make it
// with [LoadLive]. It is safe for concurrent use.
type Live[T any] struct {
	p      *Provider
	fields []loadField
	st     *liveState // owned by run; behind a pointer so that fmt, printing a Live by reflection, never reads it (only its address)
	names  []string   // their names, for String; immutable
	opts   LiveOptions[T]
	cur    atomic.Pointer[T]
	wake   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu  sync.Mutex
	err error // the last rebuild's failure; nil after a success
}

// liveState is what a Live's goroutine changes as it follows its secrets.
type liveState struct {
	refs []liveRef // the references that follow the latest version
}

type liveRef struct {
	r   ref
	h   *Handle // on the Provider of r's vault
	e   *entry  // where the Live's waker is registered
	ver string  // the version in the current snapshot
}

// LoadLive loads a T as [Provider.Load] does (T is a struct type with
// `keyvault` tags; misuse and failures are reported as by Load, and then
// nothing follows) and keeps it current:
//
//	live, err := kvsecrets.LoadLive[Config](ctx, secrets, nil)
//	if err != nil {
//		log.Fatal(err)
//	}
//	defer live.Close()
//	cfg := live.Current() // on each request: an atomic load
//
// When a secret of the configuration is served with a new version (after a
// background refresh, [Provider.Refresh], an event or a notice,
// [Provider.Rotate]), a new T is built from the cached secrets and swapped
// in; Current returns one snapshot or the other, never a mix. A rebuild
// that fails (a new JSON value that does not decode, say) keeps the
// previous snapshot: the failure is returned by [Live.Err], passed to
// LiveOptions.OnError and logged at Warn, naming fields and secrets, never
// values; it is tried again when a secret changes again. A secret that
// stops being served (revoked, or past MaxStale) changes nothing: the
// snapshot keeps what it was built with ([Provider.Health] tells).
// References pinned to a version never change.
//
// ctx bounds the first load only, so that a deadline for start-up does not
// end what follows; the Live follows rotations until [Live.Close] or the
// Provider's Close. The secrets it follows count as read, so they are
// refreshed and never dropped for idleness. It costs one goroutine.
func LoadLive[T any](ctx context.Context, p *Provider, opts *LiveOptions[T]) (*Live[T], error) {
	if p.closed.Load() {
		return nil, fmt.Errorf("kvsecrets: LoadLive: %w", ErrClosed)
	}
	first := new(T)
	fields, err := p.loadPlan(first)
	if err != nil {
		return nil, err
	}
	read, err := p.fill(ctx, first, fields)
	if err != nil {
		return nil, err
	}
	l := &Live[T]{p: p, fields: fields, st: &liveState{}, wake: make(chan struct{}, 1), done: make(chan struct{})}
	if opts != nil {
		l.opts = *opts
	}
	l.cur.Store(first)
	seen := map[ref]bool{}
	for _, f := range fields {
		if f.ref.version != "" || seen[f.ref] {
			continue
		}
		seen[f.ref] = true
		target := p
		if f.ref.host != "" {
			if target, err = p.vaultFor(f.ref.host); err != nil {
				return nil, err
			}
		}
		h, err := target.Handle(f.ref.name)
		if err != nil {
			return nil, err
		}
		lr := liveRef{r: f.ref, h: h}
		if s, ok := read[f.ref]; ok {
			lr.ver = s.Version
		}
		l.st.refs = append(l.st.refs, lr)
		l.names = append(l.names, f.ref.name)
	}
	l.ctx, l.cancel = context.WithCancel(p.ctx)
	for i := range l.st.refs {
		l.st.refs[i].e = l.st.refs[i].h.follow(nil, l.wake)
	}
	if !p.track() {
		l.unfollow()
		l.cancel()
		return nil, fmt.Errorf("kvsecrets: LoadLive: %w", ErrClosed)
	}
	l.wake <- struct{}{} // a version served between the load and the registration
	go l.run()
	return l, nil
}

// Current returns the current snapshot. It must not be modified.
func (l *Live[T]) Current() *T { return l.cur.Load() }

// Err returns why the last rebuild failed, or nil if it succeeded (or none
// was needed).
func (l *Live[T]) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Close stops following rotations and waits for the Live's goroutine to
// end (except from inside its own callbacks, where it does not wait).
// Current keeps returning the last snapshot. Close is safe to call more
// than once.
func (l *Live[T]) Close() error {
	l.cancel()
	if !inCallback() {
		<-l.done
	}
	return nil
}

func (l *Live[T]) run() {
	defer l.p.wg.Done()
	defer close(l.done)
	defer l.unfollow()
	var failed map[ref]string // the versions a rebuild failed with
	for {
		select {
		case <-l.wake:
		case <-l.ctx.Done():
			return
		}
		served := l.served()
		if served == nil {
			return // closing
		}
		changed := false
		for _, lr := range l.st.refs {
			if v, ok := served[lr.r]; ok && !strings.EqualFold(v, lr.ver) {
				changed = true
			}
		}
		if !changed || (failed != nil && sameVersions(served, failed)) {
			continue
		}
		next := new(T)
		read, err := l.p.fill(l.ctx, next, l.fields)
		if l.ctx.Err() != nil {
			return
		}
		if err != nil {
			failed = served
			l.mu.Lock()
			l.err = err
			l.mu.Unlock()
			l.p.cfg.logger.Warn("kvsecrets: live configuration not rebuilt; the previous one stays current",
				slog.String("type", typeName[T]()), slog.Any("error", err))
			if fn := l.opts.OnError; fn != nil {
				l.callback("OnError", func() { fn(err) })
			}
			continue
		}
		failed = nil
		for i := range l.st.refs {
			if s, ok := read[l.st.refs[i].r]; ok {
				l.st.refs[i].ver = s.Version
			}
		}
		old := l.cur.Swap(next)
		l.mu.Lock()
		l.err = nil
		l.mu.Unlock()
		l.p.cfg.logger.Info("kvsecrets: live configuration rebuilt", slog.String("type", typeName[T]()))
		if fn := l.opts.OnChange; fn != nil {
			l.callback("OnChange", func() { fn(old, next) })
		}
	}
}

// served returns the version each followed secret serves now, moving the
// waker to entries made again after a removal; nil once closing. A secret
// not served is left out.
func (l *Live[T]) served() map[ref]string {
	out := make(map[ref]string, len(l.st.refs))
	for i := range l.st.refs {
		lr := &l.st.refs[i]
		lr.e = lr.h.follow(lr.e, l.wake)
		s, err, _ := lr.h.served(l.ctx, lr.e)
		if l.ctx.Err() != nil {
			return nil
		}
		if err == nil {
			out[lr.r] = s.Version
		}
	}
	return out
}

func sameVersions(a, b map[ref]string) bool {
	if len(a) != len(b) {
		return false
	}
	for r, v := range a {
		if w, ok := b[r]; !ok || !strings.EqualFold(v, w) {
			return false
		}
	}
	return true
}

func (l *Live[T]) unfollow() {
	for i := range l.st.refs {
		if e := l.st.refs[i].e; e != nil {
			e.unfollow(l.wake)
		}
	}
}

// callback runs a user callback, recovering and logging a panic without
// its value.
func (l *Live[T]) callback(what string, fn func()) {
	l.p.callHook("LiveOptions."+what, fn, slog.String("type", typeName[T]()))
}

func typeName[T any]() string { return reflect.TypeFor[T]().String() }

// String describes the Live by its type and the secrets it follows, never
// a value.
func (l *Live[T]) String() string {
	if l == nil {
		return "kvsecrets.Live(nil)"
	}
	var b strings.Builder
	b.WriteString("kvsecrets.Live[" + typeName[T]() + "]{Secrets: [")
	for i, name := range l.names {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Quote(name))
	}
	b.WriteString("]")
	if err := l.Err(); err != nil {
		b.WriteString(", Err: rebuild failed")
	}
	b.WriteString("}")
	return b.String()
}

// GoString is used by %#v; it is String.
func (l *Live[T]) GoString() string { return l.String() }

// Format prints String for every verb.
func (l *Live[T]) Format(f fmt.State, verb rune) { fmt.Fprint(f, l.String()) }

// LogValue implements slog.LogValuer: the type and the secrets followed.
func (l *Live[T]) LogValue() slog.Value { return slog.StringValue(l.String()) }

// MarshalJSON encodes the type and the secrets followed, never a value.
func (l *Live[T]) MarshalJSON() ([]byte, error) {
	names := l.names
	if names == nil {
		names = []string{}
	}
	return json.Marshal(struct {
		Type    string   `json:"type"`
		Secrets []string `json:"secrets"`
		Failing bool     `json:"rebuildFailed,omitempty"`
	}{typeName[T](), names, l.Err() != nil})
}
