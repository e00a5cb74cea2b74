package redisfanout

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/redis/go-redis/v9"
)

// FanOut relays a Provider's new versions to the other instances of a
// fleet through Redis Pub/Sub, and theirs to it. Make one per Provider
// with New and Close it before the Provider. Its methods are safe for
// concurrent use.
type FanOut struct {
	p      *kvsecrets.Provider
	client redis.UniversalClient
	cfg    config

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	queue  chan notice // rotations to publish

	removeHook func()
	closeOnce  sync.Once
	closed     atomic.Bool

	heard heardSet // versions heard on the channel, not to be published again

	id        string // this instance's member id
	sliceMu   sync.Mutex
	busyUntil time.Time // the end of the last notice's slice

	mu        sync.Mutex
	ps        *redis.PubSub // the subscription's connection now; nil between attempts
	connected bool
	since     time.Time
	lastErr   error
	changed   chan struct{} // closed and replaced on every change of state or counter

	reconnects, published, suppressed, dropped atomic.Uint64
	received, rejected, acted, rechecks        atomic.Uint64
	lastRejectLog                              atomic.Int64 // unix nanoseconds
}

// New starts a FanOut for p on client, which it shares and never closes:
// it subscribes to opts.Channel in the background (see WaitConnected and
// Status) and registers a rotation hook with p.AddOnRotate. opts.Key is
// required.
func New(p *kvsecrets.Provider, client redis.UniversalClient, opts *Options) (*FanOut, error) {
	if p == nil || client == nil {
		return nil, errors.New("redisfanout: New needs a Provider and a Redis client")
	}
	cfg, err := opts.config()
	if err != nil {
		return nil, err
	}
	f := &FanOut{
		p:       p,
		client:  client,
		cfg:     cfg,
		queue:   make(chan notice, queueSize),
		since:   time.Now(),
		changed: make(chan struct{}),
	}
	f.heard.init()
	f.id = hex.EncodeToString(randomBytes(16))
	f.ctx, f.cancel = context.WithCancel(context.Background())
	f.wg.Add(3)
	go f.subscribeLoop()
	go f.publishLoop()
	go f.announceLoop()
	f.removeHook = p.AddOnRotate(f.onRotate)
	return f, nil
}

// Close stops the FanOut: it removes the rotation hook, ends the
// subscription and drops rotations not yet published, and returns once
// every goroutine it started has ended. It does not close the Redis client
// or the Provider. With Redis down it returns at once; with Redis hung it
// may wait for a command under way — a publication, at most
// Options.PublishTimeout (see there), or a connection's handshake, at most
// the client's DialTimeout and ReadTimeout. Calling Close again does
// nothing.
func (f *FanOut) Close() error {
	f.closeOnce.Do(func() {
		f.removeHook()
		f.closed.Store(true)
		f.cancel()
		f.mu.Lock()
		ps := f.ps
		f.mu.Unlock()
		if ps != nil {
			_ = ps.Close() // unblocks a Receive under way
		}
		f.wg.Wait()
		f.setConnected(false)
	})
	return nil
}

// Status returns the FanOut's state and counters.
func (f *FanOut) Status() Status {
	f.mu.Lock()
	s := Status{Connected: f.connected, Since: f.since, LastError: f.lastErr}
	f.mu.Unlock()
	s.Reconnects = f.reconnects.Load()
	s.Published = f.published.Load()
	s.Suppressed = f.suppressed.Load()
	s.Dropped = f.dropped.Load()
	s.Received = f.received.Load()
	s.Rejected = f.rejected.Load()
	s.Acted = f.acted.Load()
	s.Rechecks = f.rechecks.Load()
	return s
}

// WaitConnected returns nil once the FanOut is subscribed, at once if it
// is already: for a readiness check, or before a rotation that others must
// hear. It returns ctx.Err() if ctx ends first, and ErrClosed after Close.
func (f *FanOut) WaitConnected(ctx context.Context) error {
	err := f.waitFor(ctx, func(s Status) bool { return s.Connected })
	if err == nil && f.closed.Load() {
		return ErrClosed
	}
	return err
}

// waitFor returns once cond holds for the FanOut's status, or ctx ends,
// or the FanOut is closed.
func (f *FanOut) waitFor(ctx context.Context, cond func(Status) bool) error {
	for {
		f.mu.Lock()
		ch := f.changed
		f.mu.Unlock()
		if cond(f.Status()) {
			return nil
		}
		if f.closed.Load() {
			return ErrClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// bump wakes waitFor after a change.
func (f *FanOut) bump() {
	f.mu.Lock()
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

func (f *FanOut) count(c *atomic.Uint64) {
	c.Add(1)
	f.bump()
}

func (f *FanOut) setConnected(up bool) {
	f.mu.Lock()
	if f.connected != up {
		f.connected = up
		f.since = time.Now()
	}
	f.mu.Unlock()
	f.bump()
}

func (f *FanOut) setError(err *Error) {
	f.mu.Lock()
	f.lastErr = err
	f.mu.Unlock()
	f.bump()
}

// onRotate is the Provider's rotation hook: it queues the new version for
// publication, without waiting, unless it was heard on the channel.
func (f *FanOut) onRotate(ev kvsecrets.RotationEvent) {
	if f.closed.Load() || ev.NewVersion == "" {
		return
	}
	u, err := url.Parse(ev.Vault)
	if err != nil || u.Host == "" {
		return
	}
	n := notice{Vault: strings.ToLower(u.Host), Name: ev.Name, Version: ev.NewVersion}
	if f.heard.has(noticeID(n.Vault, n.Name, n.Version)) {
		f.count(&f.suppressed) // learnt from the fan-out: already published
		return
	}
	select {
	case f.queue <- n:
	default:
		f.dropped.Add(1)
		f.setError(&Error{Op: "publish", Class: ErrQueueFull})
		f.cfg.logger.Warn("redisfanout: new version not published: queue full",
			"secret", n.Name, "version", n.Version)
	}
}

// heardSet remembers the versions heard on the channel for
// Options.PublishedTTL, up to maxHeard of them (only signed messages are
// remembered, so only the fleet can fill it).
type heardSet struct {
	mu sync.Mutex
	m  map[string]time.Time
}

const maxHeard = 10000

func (h *heardSet) init() { h.m = make(map[string]time.Time) }

func (h *heardSet) has(id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, ok := h.m[id]
	return ok
}

// add records id; false if it was there already.
func (h *heardSet) add(id string, now time.Time, ttl time.Duration) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.m[id]; ok {
		return false
	}
	if len(h.m) >= maxHeard {
		for k, at := range h.m {
			if now.Sub(at) > ttl {
				delete(h.m, k)
			}
		}
		for k := range h.m {
			if len(h.m) < maxHeard {
				break
			}
			delete(h.m, k)
		}
	}
	h.m[id] = now
	return true
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}
