package kvsecrets

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
)

// Provider serves the secrets of one Key Vault from memory. Make one per
// vault at start-up with [NewProvider] and share it; it is safe for
// concurrent use by any number of goroutines. Call [Provider.Close] when done.
type Provider struct {
	client   *azsecrets.Client
	vaultURL string
	host     string // lower-case host[:port] of vaultURL
	cfg      config
	cred     azcore.TokenCredential
	opts     Options              // as given, for the Providers of other vaults
	others   map[string]*Provider // other vaults' Providers, by host; guarded by mu

	idx   index
	hits  counter
	sched scheduler
	start time.Time     // epochs count seconds from it
	epoch atomic.Uint32 // coarse clock for recency (see bounds.go)

	closed  atomic.Bool // read by the cached path
	mu      sync.Mutex  // guards closing and wg.Add
	closing bool
	wg      sync.WaitGroup // every goroutine the Provider starts
	ctx     context.Context
	cancel  context.CancelCauseFunc
	pacer   *pacer     // nil with Options.DisablePacing
	gate    *probeGate // nil without pacing or a Limiter

	limited, limiterFailures atomic.Uint64 // Options.Limiter's answers: turns given, failures
	limiterLog               atomic.Int64  // Unix nanoseconds of the last log of a Limiter failure

	entries                                                         atomic.Int64
	negativeHits, misses, vaultRequests, refreshes, refreshFailures atomic.Uint64
	staleServes, rotations, revocations, staleDrops, writes         atomic.Uint64
	evictions, idleDrops                                            atomic.Uint64
	eventsReceived, eventsActedOn, eventsRejected                   atomic.Uint64
	notices                                                         atomic.Uint64
	hooks                                                           *rotateHooks // AddOnRotate's, shared with others
}

// NewProvider returns a Provider for the vault at vaultURL (such as
// "https://myvault.vault.azure.net/"). A nil cred means
// azidentity.NewDefaultAzureCredential(nil); nil opts means all defaults.
// It makes no request and starts no goroutine: secrets are read on first
// use or by [Provider.Preload].
func NewProvider(vaultURL string, cred azcore.TokenCredential, opts *Options) (*Provider, error) {
	u, err := checkVaultURL(vaultURL)
	if err != nil {
		return nil, err
	}
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	if cred == nil {
		cred, err = azidentity.NewDefaultAzureCredential(nil)
		if err != nil {
			return nil, fmt.Errorf("kvsecrets: default Azure credential: %w", err)
		}
	}
	var pp *pacePolicy
	var gate *probeGate
	if !cfg.noPacing || cfg.limiter != nil {
		pp, gate = &pacePolicy{}, newProbeGate()
	}
	client, err := azsecrets.NewClient(u, markedCredential{cred}, sdkOptions(cfg.clientOptions, gate, pp))
	if err != nil {
		return nil, fmt.Errorf("kvsecrets: %w", err)
	}
	p := &Provider{client: client, vaultURL: u, cfg: cfg, cred: cred}
	if pp != nil {
		pp.p = p
	}
	if gate != nil {
		gate.p, p.gate = p, gate
	}
	if opts != nil {
		p.opts = *opts
	}
	p.host = strings.TrimSuffix(strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(u, "https://"), "/")), ":443")
	p.hooks = &rotateHooks{}
	p.hits.init()
	p.idx.init()
	p.ctx, p.cancel = context.WithCancelCause(context.Background())
	p.sched.init()
	if !cfg.noPacing {
		p.pacer = newPacer(cfg.maxReadRate, cfg.noJitter)
	}
	p.start = time.Now()
	p.epoch.Store(1)
	return p, nil
}

// retriedStatusCodes are the statuses the SDK retries by itself: its
// defaults less 429. A throttled read comes straight back to the Provider,
// which waits with jitter and a growing pause; the SDK's own quick retries
// would all fall in the same throttle window and multiply a fleet's load
// on a throttled vault (see BENCHMARKS.md, the fleet simulation).
var retriedStatusCodes = []int{http.StatusRequestTimeout, http.StatusInternalServerError, http.StatusBadGateway,
	http.StatusServiceUnavailable, http.StatusGatewayTimeout}

// sdkOptions returns the client options the Provider gives azsecrets: the
// caller's, with 429 left to the Provider unless the caller chose the
// retried status codes. The caller's struct is not modified.
func sdkOptions(o *azsecrets.ClientOptions, gate *probeGate, pace *pacePolicy) *azsecrets.ClientOptions {
	c := azsecrets.ClientOptions{}
	if o != nil {
		c = *o
	}
	if c.Retry.StatusCodes == nil {
		c.Retry.StatusCodes = retriedStatusCodes
	}
	c.PerRetryPolicies = append(slices.Clone(c.PerRetryPolicies), configFailFast{})
	if pace != nil {
		c.PerRetryPolicies = append(c.PerRetryPolicies, pace)
	}
	if gate != nil {
		c.PerCallPolicies = append(slices.Clone(c.PerCallPolicies), gate)
	}
	return &c
}

// checkVaultURL accepts https://host[:port][/] and returns it normalised
// with a trailing slash.
func checkVaultURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("kvsecrets: vault URL does not parse: %w", err)
	}
	switch {
	case u.Scheme != "https":
		return "", fmt.Errorf("kvsecrets: vault URL must start with https:// (Key Vault tokens are never sent over plain http), got scheme %q", u.Scheme)
	case u.Host == "" || u.Hostname() == "":
		return "", errors.New("kvsecrets: vault URL has no host")
	case u.User != nil:
		return "", errors.New("kvsecrets: vault URL must not carry user information")
	case u.RawQuery != "" || u.Fragment != "":
		return "", errors.New("kvsecrets: vault URL must not have a query or fragment")
	case u.Path != "" && u.Path != "/":
		return "", fmt.Errorf("kvsecrets: vault URL must not have a path, got %q", u.Path)
	}
	return "https://" + u.Host + "/", nil
}

// VaultURL returns the vault's URL as the Provider uses it.
func (p *Provider) VaultURL() string { return p.vaultURL }

// Get returns the value of the latest version of the named secret.
//
// The first call for a name reads the vault; concurrent first calls share
// that read. Later calls are answered from memory, without locks or
// allocations, while the value is refreshed in the background. If ctx ends
// while waiting for the vault, Get returns ctx.Err() at once; the shared
// read goes on for the other callers. Errors wrap ErrNotFound, ErrDisabled,
// ErrForbidden, ErrUnavailable, ErrInvalidName or ErrClosed.
func (p *Provider) Get(ctx context.Context, name string) (string, error) {
	if e := (*p.idx.read.Load())[name]; e != nil {
		if st := e.state.Load(); st.ready && !p.closed.Load() {
			p.touch(e)
			p.hits.inc()
			return string(st.value), nil
		}
	}
	st, err := p.getSlow(ctx, name)
	if err != nil {
		return "", err
	}
	return string(st.value), nil
}

// GetSecret is [Provider.Get] with the secret's metadata. Its Tags map is a
// copy.
func (p *Provider) GetSecret(ctx context.Context, name string) (Secret, error) {
	if e := (*p.idx.read.Load())[name]; e != nil {
		if st := e.state.Load(); st.ready && !p.closed.Load() {
			p.touch(e)
			p.hits.inc()
			return st.secret().clone(), nil
		}
	}
	st, err := p.getSlow(ctx, name)
	if err != nil {
		return Secret{}, err
	}
	return st.secret().clone(), nil
}

func (s Secret) clone() Secret {
	if s.Tags != nil {
		s.Tags = maps.Clone(s.Tags)
	}
	return s
}

func (p *Provider) getSlow(ctx context.Context, name string) (*state, error) {
	if p.closed.Load() {
		return nil, &SecretError{Name: name, Kind: ErrClosed}
	}
	e, err := p.entryFor(name)
	if err != nil {
		return nil, err
	}
	return p.read(ctx, e, name)
}

// read answers from e's state when it can, and otherwise waits for a read of
// the vault. name is the spelling the caller used, for errors.
func (p *Provider) read(ctx context.Context, e *entry, name string) (*state, error) {
	p.touch(e)
	st := e.state.Load()
	seen := st // what this caller decides on; see startFlight
	now := time.Now()
	if st.tooOld(now, p.cfg.maxStale) {
		// No value is served past MaxStale after its last successful
		// read, whatever the refresh queue does.
		st, seen = emptyState, nil
	} else if st.hasValue && e.kind == kindPinned && now.UnixNano()-st.at >= int64(p.cfg.ttl) {
		// Pinned versions are not refreshed on a timer: they are
		// re-validated on use once TTL has passed.
		_, _ = p.startFlight(e, flightLoad, nil) // in the background; serve the cached value now
	}
	if st.hasValue {
		return p.serve(st, now, name, e.version(), true)
	}
	if st.remembered(now) {
		p.negativeHits.Add(1)
		return nil, st.err.as(name)
	}
	p.misses.Add(1)
	f, err := p.startFlight(e, flightLoad, seen)
	if err != nil {
		return nil, err.as(name)
	}
	if err := p.await(ctx, e, f); err != nil {
		return nil, err
	}
	if f.st.hasValue {
		return p.serve(f.st, time.Now(), name, e.version(), false)
	}
	if f.err != nil {
		return nil, f.err.as(name)
	}
	if f.st.err != nil {
		return nil, f.st.err.as(name)
	}
	return nil, &SecretError{Name: name, Version: e.version(), Kind: ErrUnavailable}
}

// serve returns a state with a value, counting a hit if it is one, after the checks the
// cached path leaves to the slow one.
func (p *Provider) serve(st *state, now time.Time, name, version string, hit bool) (*state, error) {
	if err := st.checkValidity(now, name, version); err != nil {
		return nil, err
	}
	if st.stale {
		p.staleServes.Add(1)
	}
	if hit {
		p.hits.inc()
	}
	return st, nil
}

// asNamed is as for any error: a *SecretError names the secret as the
// caller spelled it; other errors (ctx.Err()) pass unchanged.
func asNamed(err error, name string) error {
	if se, ok := err.(*SecretError); ok {
		return se.as(name)
	}
	return err
}

// as returns the error naming the secret as the caller spelled it.
func (e *SecretError) as(name string) *SecretError {
	if e.Name == name {
		return e
	}
	c := *e
	c.Name = name
	return &c
}

// entryFor validates name and returns its latest-version entry, creating it
// on first use. Other spellings of a name share one entry.
func (p *Provider) entryFor(name string) (*entry, error) {
	if e := p.idx.load(name); e != nil {
		return e, nil
	}
	if err := checkName(name); err != nil {
		return nil, err
	}
	canon := strings.ToLower(name)
	p.idx.mu.Lock()
	defer p.idx.mu.Unlock()
	e := p.idx.getLocked(canon)
	if e == nil {
		e = newEntry(kindLatest, name)
		p.idx.storeLocked(canon, e)
		p.addedLocked(e)
	}
	if name != canon && p.idx.getLocked(name) == nil && e.aliases < maxAliases {
		e.aliases++
		x := e.ext()
		x.aliases = append(x.aliases, name)
		p.idx.storeLocked(name, e)
	}
	return e, nil
}

// pinned returns the entry for a pinned version of e, creating it.
func (p *Provider) pinned(e *entry, version string) *entry {
	if x := e.x.Load(); x != nil {
		if vs := x.versions.Load(); vs != nil {
			if pe, ok := vs.Load(version); ok {
				return pe.(*entry)
			}
		}
	}
	p.idx.mu.Lock()
	defer p.idx.mu.Unlock()
	x := e.ext()
	vs := x.versions.Load()
	if vs == nil {
		vs = new(sync.Map)
		x.versions.Store(vs)
	}
	if pe, ok := vs.Load(version); ok {
		return pe.(*entry)
	}
	pe := newEntry(kindPinned, e.name)
	pe.x.Store(&extra{version: version, parent: e})
	if e.dead() {
		pe.state.Store(deadState) // answers its caller, caches nothing
		return pe
	}
	vs.Store(version, pe)
	x.nvers++
	p.addedLocked(pe)
	return pe
}

// keySet returns the Verify key set entry of a latest entry, creating it.
func (p *Provider) keySet(e *entry) *entry {
	if ve := e.verifier(); ve != nil {
		return ve
	}
	p.idx.mu.Lock()
	defer p.idx.mu.Unlock()
	x := e.ext()
	if ve := x.verifier.Load(); ve != nil {
		return ve
	}
	ve := newEntry(kindVerifier, e.name)
	ve.x.Store(&extra{parent: e})
	if e.dead() {
		ve.state.Store(deadState) // answers its caller, caches nothing
		return ve
	}
	x.verifier.Store(ve)
	p.addedLocked(ve)
	return ve
}

// GetVersion returns a pinned version of the named secret. Versions are
// immutable, so a pinned version is cached without background refresh; once
// TTL has passed since it was read, a use re-validates it in the background
// (a version can still be disabled or deleted). An unknown version is
// ErrNotFound.
func (p *Provider) GetVersion(ctx context.Context, name, version string) (Secret, error) {
	if p.closed.Load() {
		return Secret{}, &SecretError{Name: name, Version: version, Kind: ErrClosed}
	}
	if err := checkVersion(version); err != nil {
		return Secret{}, err
	}
	e, err := p.entryFor(name)
	if err != nil {
		return Secret{}, err
	}
	pe := p.pinned(e, strings.ToLower(version))
	st, err := p.read(ctx, pe, name)
	if err != nil {
		return Secret{}, err
	}
	return st.secret().clone(), nil
}

// Refresh reads the latest version of the named secret now, even if it is
// cached, updates the cache, and fires Options.OnRotate if the version
// changed. If Verify has been used for the name, its accepted versions are
// re-read too. When Refresh returns, Get, Verify and pinned versions all
// serve what it read: a new version is served and accepted, and a
// secret the vault reports deleted, disabled or forbidden is refused. It
// does not join a read that started before it was called. A transient
// failure is returned, and the cached value stays in place; so is one of
// the re-read of Verify's accepted versions, even when Get already serves
// the new read.
func (p *Provider) Refresh(ctx context.Context, name string) (Secret, error) {
	if p.closed.Load() {
		return Secret{}, &SecretError{Name: name, Kind: ErrClosed}
	}
	e, err := p.entryFor(name)
	if err != nil {
		return Secret{}, err
	}
	f, err := p.freshFlight(ctx, e)
	if err != nil {
		return Secret{}, asNamed(err, name)
	}
	var vf *flight
	if ve := e.verifier(); ve != nil {
		if vf, err = p.freshFlight(ctx, ve); err != nil {
			return Secret{}, asNamed(err, name)
		}
	}
	for _, fl := range []*flight{f, vf} {
		if fl == nil {
			continue
		}
		select {
		case <-fl.done:
		case <-ctx.Done():
			return Secret{}, ctx.Err()
		}
	}
	switch {
	case f.err != nil:
		return Secret{}, f.err.as(name)
	case vf != nil && vf.err != nil:
		// Get serves the new read, but Verify could not follow: say so
		// rather than let the caller believe both do.
		return Secret{}, &SecretError{Name: name, Kind: vf.err.Kind, Err: vf.err,
			detail: "read, but Verify's accepted versions could not be re-read"}
	case f.st.hasValue:
		return f.st.secret().clone(), nil
	case f.st.err != nil:
		// The read was overtaken by a newer one, which failed.
		return Secret{}, f.st.err.as(name)
	}
	return Secret{}, &SecretError{Name: name, Kind: ErrUnavailable, detail: "the read was overtaken by a newer one"}
}

// Preload reads the named secrets in parallel (at most
// Options.PreloadConcurrency at once) so that later Gets are served from
// memory. Every success stays cached; the result joins one error per failed
// secret, each naming it. Invalid names are reported before any request is
// made, and then nothing is read.
func (p *Provider) Preload(ctx context.Context, names ...string) error {
	return p.preload(ctx, "preload", names, func(name string) error {
		_, err := p.GetSecret(ctx, name)
		return err
	})
}

// preload validates names, then calls read once per distinct name in
// parallel and joins the failures, each naming its secret.
func (p *Provider) preload(ctx context.Context, what string, names []string, read func(name string) error) error {
	if p.closed.Load() {
		return fmt.Errorf("kvsecrets: %s: %w", what, ErrClosed)
	}
	var bad []error
	for i, n := range names {
		if err := checkName(n); err != nil {
			bad = append(bad, fmt.Errorf("names[%d]: %w", i, err))
		}
	}
	if len(bad) > 0 {
		return errors.Join(bad...)
	}
	var todo []string
	seen := make(map[string]bool, len(names))
	for _, n := range names {
		if canon := strings.ToLower(n); !seen[canon] {
			seen[canon] = true
			todo = append(todo, n)
		}
	}
	_, readErrs := inParallel(ctx, p.cfg.preloadConcurrency, len(todo), func(i int) (struct{}, error) {
		return struct{}{}, read(todo[i])
	})
	var errs []error
	for i, err := range readErrs {
		if err == nil {
			continue
		}
		var se *SecretError
		if !errors.As(err, &se) {
			err = fmt.Errorf("kvsecrets: secret %q: %w", todo[i], err)
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// inParallel calls do(i) for every i in [0, n), at most limit at once, and
// returns the results by index. Once ctx ends, calls not yet started get
// ctx.Err() without running.
func inParallel[T any](ctx context.Context, limit, n int, do func(i int) (T, error)) ([]T, []error) {
	vals, errs := make([]T, n), make([]error, n)
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			errs[i] = ctx.Err()
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			vals[i], errs[i] = do(i)
		})
	}
	wg.Wait()
	return vals, errs
}

// Stats returns the Provider's counters.
func (p *Provider) Stats() Stats {
	st := Stats{
		Hits:            p.hits.load(),
		NegativeHits:    p.negativeHits.Load(),
		Misses:          p.misses.Load(),
		VaultRequests:   p.vaultRequests.Load(),
		Refreshes:       p.refreshes.Load(),
		RefreshFailures: p.refreshFailures.Load(),
		StaleServes:     p.staleServes.Load(),
		Rotations:       p.rotations.Load(),
		Revocations:     p.revocations.Load(),
		StaleDrops:      p.staleDrops.Load(),
		Writes:          p.writes.Load(),
		EventsReceived:  p.eventsReceived.Load(),
		EventsActedOn:   p.eventsActedOn.Load(),
		Notices:         p.notices.Load(),
		EventsRejected:  p.eventsRejected.Load(),
		Evictions:       p.evictions.Load(),
		IdleDrops:       p.idleDrops.Load(),
		Entries:         int(p.entries.Load()),
	}
	st.LimitedReads, st.LimiterFailures = p.limited.Load(), p.limiterFailures.Load()
	if pc := p.pacer; pc != nil {
		st.ReadRate, st.PacedReads, st.Throttled = pc.currentRate(), pc.delayed.Load(), pc.throttled.Load()
	}
	return st
}

// Close stops every background refresh and waits for the Provider's
// goroutines to end; reads in flight are canceled. Calls after Close return
// ErrClosed. Close is safe to call more than once; it always returns nil.
//
// Called from inside Options.OnRotate or EventGridOptions.OnNearExpiry,
// Close stops the Provider the same way but does not wait: the goroutine
// making the callback may be one of the Provider's own, which would then
// wait for itself. It, and any read still in flight, end on their own once
// the callback returns, starting nothing new; a later Close from outside a
// callback waits for them. A callback must therefore not wait for a Close
// it started on another goroutine: that Close waits for the callback.
func (p *Provider) Close() error {
	wait := !inCallback()
	p.mu.Lock()
	first := !p.closing
	p.closing = true
	p.closed.Store(true)
	others := p.others
	p.mu.Unlock()
	if first {
		p.cancel(errProviderClosed)
		for _, o := range others {
			o.Close()
		}
	}
	if wait {
		p.wg.Wait()
	}
	if first {
		// Let the cached values be collected.
		p.idx.mu.Lock()
		m := map[string]*entry{}
		p.idx.read.Store(&m)
		p.idx.dirty = nil
		p.idx.mu.Unlock()
		p.sched.mu.Lock()
		p.sched.h, p.sched.queue = nil, nil
		p.sched.mu.Unlock()
	}
	return nil
}

// track registers a goroutine about to start; false once Close has begun.
func (p *Provider) track() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return false
	}
	p.wg.Add(1)
	return true
}

// checkName reports why name is not a valid Key Vault secret name. The error
// describes the problem without repeating the name, which might be a value
// passed by mistake.
func checkName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: the name is empty", ErrInvalidName)
	}
	if len(name) > 127 {
		return fmt.Errorf("%w: the name is %d bytes long; the limit is 127", ErrInvalidName, len(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '-') {
			return fmt.Errorf("%w: byte %d is not a letter, digit or '-' (names are 1-127 characters of 0-9, a-z, A-Z and '-')", ErrInvalidName, i+1)
		}
	}
	return nil
}

// checkVersion reports why version is not a plausible version id.
func checkVersion(version string) error {
	if version == "" {
		return fmt.Errorf("%w: the version is empty (use GetSecret for the latest version)", ErrInvalidVersion)
	}
	if len(version) > 64 {
		return fmt.Errorf("%w: the version is %d bytes long; the limit is 64", ErrInvalidVersion, len(version))
	}
	for i := 0; i < len(version); i++ {
		c := version[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return fmt.Errorf("%w: byte %d is not a letter or digit", ErrInvalidVersion, i+1)
		}
	}
	return nil
}
