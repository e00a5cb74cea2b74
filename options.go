package kvsecrets

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
)

// Defaults applied by [NewProvider] to zero fields of [Options].
const (
	DefaultTTL                = time.Hour
	DefaultMaxStale           = 24 * time.Hour
	DefaultNegativeTTL        = 30 * time.Second
	DefaultRefreshAt          = 0.75
	DefaultRefreshJitter      = 0.15
	DefaultExpiryWarning      = 30 * 24 * time.Hour
	DefaultExpiredRecheck     = 5 * time.Minute
	DefaultRetryBackoff       = time.Second
	DefaultMaxRetryBackoff    = 2 * time.Minute
	DefaultFetchTimeout       = 30 * time.Second
	DefaultPreloadConcurrency = 16
	DefaultRefreshConcurrency = 4
	DefaultVerifyOverlap      = 24 * time.Hour
	DefaultVerifyPrevious     = 2
	DefaultRotateValidity     = 180 * 24 * time.Hour
	DefaultMaxEntries         = 10000
	// The default IdleTimeout is DefaultIdleTTLs × TTL.
	DefaultIdleTTLs = 2
)

// Options configures a [Provider]. A nil *Options means all defaults, and
// every zero field means its default. Negative durations and out-of-range
// fractions are refused by [NewProvider].
type Options struct {
	// ClientOptions is passed to azsecrets.NewClient: transport, retry
	// policy, API version, logging. Nil means the SDK's defaults (4 tries per
	// request with exponential backoff), except that unless
	// Retry.StatusCodes is set the SDK does not retry 429 itself: the
	// Provider does, with jitter and longer pauses, so that a fleet does not
	// multiply its load on a throttled vault.
	ClientOptions *azsecrets.ClientOptions

	// TTL is how long a value is trusted before it is re-read. Default 1h.
	// Refreshes happen in the background ahead of it (see RefreshAt), so a
	// short TTL never makes callers wait, but it costs the vault: every
	// cached secret is read about once per 0.8×TTL per Provider. With one
	// second, 20 secrets and 100 instances that is 2,500 GETs per second, far
	// beyond Key Vault's 4,000 GETs per 10 seconds per vault. Microsoft
	// advises caching for hours.
	TTL time.Duration

	// MaxStale is how long after its last successful read a value may still be
	// served while refreshes fail with transient errors (network, timeouts,
	// 408/429/5xx, credential failures). Default 24h. Authoritative answers
	// (deleted, disabled, access denied) stop serving at once regardless.
	MaxStale time.Duration

	// NegativeTTL is how long a not-found, disabled or forbidden answer is
	// remembered, so that a storm of reads of a missing secret costs the vault
	// one request. Default 30s.
	NegativeTTL time.Duration

	// RefreshAt is the fraction of TTL after a successful read at which the
	// background refresh starts. Default 0.75. Must be in (0, 1].
	RefreshAt float64

	// RefreshJitter is the fraction of TTL over which the refresh point is
	// spread at random (uniformly in [RefreshAt, RefreshAt+RefreshJitter] of
	// TTL), so that a fleet started together does not refresh in step.
	// Default 0.15. RefreshAt+RefreshJitter must not exceed 1, whether the
	// jitter was set or left to its default (RefreshAt 0.95 alone is
	// refused: set RefreshJitter to at most 0.05, or DisableJitter).
	RefreshJitter float64

	// DisableJitter turns off the random spread of refresh points and retry
	// backoffs. Meant for simulations and tests; fleets want jitter.
	DisableJitter bool

	// ExpiryWarning is the window before a secret's expiry (exp) within which
	// a warning is logged, once per version. Default 30 days, as Event Grid's
	// SecretNearExpiry.
	ExpiryWarning time.Duration

	// ExpiredRecheck bounds how often a secret whose exp has passed with no
	// newer version is re-read, waiting for its rotation. Default 5m.
	ExpiredRecheck time.Duration

	// EnforceValidity refuses secrets outside their nbf/exp window with
	// ErrNotYetValid and ErrExpired. By default they are served, as Key Vault
	// itself serves them.
	EnforceValidity bool

	// RetryBackoff is the first delay before a failed background refresh is
	// tried again; it doubles on each further failure up to MaxRetryBackoff,
	// with jitter. A 429's or 503's Retry-After is honoured when longer (up
	// to 10 minutes). Default 1s.
	RetryBackoff time.Duration

	// MaxRetryBackoff caps the retry delay. Default 2m.
	MaxRetryBackoff time.Duration

	// FetchTimeout bounds one read of the vault, including the SDK's own
	// retries and, for a caller's first read of a secret, the retries of
	// a throttled (429) read, and the credential's token. Default 30s. It
	// does not run while a request waits for its turn in the pacer or the
	// Limiter (see MaxReadRate), except a retry after a 429: a wait before
	// the read's first request with a token is sent counts against the
	// callers' contexts instead, and so does waiting while a new Provider's
	// first read meets the authentication challenge. Shared
	// reads run on a context of their own, bounded by this timeout, so that
	// one caller's cancellation does not fail the others.
	FetchTimeout time.Duration

	// MaxReadRate caps the read requests a second the Provider sends to
	// its vault: any second holds at most MaxReadRate and 4 more. Default
	// 400, Key Vault's limit for a whole vault (4,000 GETs per 10 s);
	// between 0.05 and 1e6. Below it, the Provider paces its own read
	// requests (reads, refreshes, key sets, the SDK's retries, the
	// authentication challenge; never a cached read, never a write)
	// adaptively, so that a fleet starting at once converges on the
	// vault's rate instead of hammering it:
	//   - A new Provider holds its requests until its first has met the
	//     authentication challenge and has a token (one challenge, not
	//     one per concurrent read); then 4 may go at once, then 100 a
	//     second, doubling every 10 s in which requests queued.
	//   - A 429 cuts the rate by 15% and, if requests were queueing, to at
	//     most what the vault granted in the last 10 s; then nothing goes
	//     for 10 s plus up to 2.5 s at random (or for the Retry-After),
	//     or, if nothing was queueing, for 1, 2, 4, 8 s… up to 10 s.
	//   - The rate then grows by an eighth (at least 0.1 a second) every
	//     10 s in which requests queued without a 429, and is 100 a second
	//     again after a minute without queueing or throttling.
	// Stats.ReadRate shows the rate. Requests waiting for their turn count
	// against their callers' contexts (see FetchTimeout).
	MaxReadRate float64

	// DisablePacing sends every request at once, as before pacing: a
	// fleet that restarts together then meets Key Vault's throttle with
	// tens of thousands of 429s (see BENCHMARKS.md). MaxReadRate is then
	// ignored; a Limiter is still waited in.
	DisablePacing bool

	// Limiter, if set, shares a vault's request rate among the Providers
	// of a fleet: before each read request to the vault (after the
	// pacer's turn; the authentication challenge and the SDK's retries
	// are requests too), the Provider waits in Limiter.Wait, so that the
	// whole fleet stays under one budget instead of each instance finding
	// the throttle on its own. redisfanout.NewLimiter is one, a token
	// bucket per vault in Redis. A Limiter that fails or panics lets
	// requests go, paced by this Provider alone (Stats.LimiterFailures
	// counts them). Limiter is used even with DisablePacing.
	Limiter Limiter

	// PreloadConcurrency bounds the reads Preload runs at once. Default 16.
	PreloadConcurrency int

	// RefreshConcurrency bounds the background refreshes run at once.
	// Default 4.
	RefreshConcurrency int

	// VerifyOverlap is how long after a rotation Verify still accepts the
	// replaced version. Default 24h; set a nanosecond to accept only the
	// latest version.
	VerifyOverlap time.Duration

	// VerifyPrevious bounds how many replaced versions Verify accepts during
	// the overlap: only the VerifyPrevious versions the latest most recently
	// replaced, counted whether or not each is still enabled. Default 2.
	VerifyPrevious int

	// MaxEntries bounds the entries the Provider holds: names read
	// through Get, pinned versions and Verify key sets, each counting one.
	// Past it, the least recently read are evicted (chosen from a random
	// sample, as Redis does; a name's pinned versions and key set go
	// first, and with the name) and counted in Stats.Evictions; an evicted
	// secret is read from the vault again on its next use. Default 10,000:
	// about 4 MB of cached secrets (see BENCHMARKS.md), far more names
	// than a service uses, so that only names a caller invents get
	// evicted.
	MaxEntries int

	// IdleTimeout is how long an entry nobody reads keeps being refreshed.
	// It is checked when the entry is next due (a refresh at about 0.8
	// TTL, a retry, or a check): an entry not read for IdleTimeout is then
	// dropped instead of refreshed, and counted in Stats.IdleDrops, so that
	// a service's steady state costs the vault only the secrets it uses.
	// Its next read reads the vault again. Default 2×TTL: a secret read at
	// least every two TTLs stays cached. Set it very long to refresh every
	// secret ever read for as long as the Provider lives.
	IdleTimeout time.Duration

	// AllowedVaultHosts lists hosts (host or host:port, matched exactly)
	// that references given to Resolve, Load and ResolveEnv may name besides
	// Key Vault's own DNS suffixes and this Provider's vault: a local vault,
	// say. Everything else is refused before any request, so that a
	// reference never sends the application's token to an arbitrary host.
	AllowedVaultHosts []string

	// EventCoalesceWindow folds the refreshes that news of new versions
	// asks for (Event Grid events, Notify) within this interval into one per
	// secret, so that a replayed or forged burst cannot become a burst on
	// the vault. Default 1s. EventGridOptions.CoalesceWindow overrides it
	// for one handler.
	EventCoalesceWindow time.Duration

	// EventSpread delays each refresh that news of a new version asks for
	// by a random time up to EventSpread. A large fleet told of many
	// rotations at once otherwise sends every instance's reads in the same
	// second, beyond Key Vault's 4,000 GETs per 10 s (see BENCHMARKS.md);
	// spreading them over about instances × secrets / 400 seconds avoids
	// the 429s. Default 0: refresh at once. EventGridOptions.Spread
	// overrides it for one handler.
	EventSpread time.Duration

	// OnRotate is called once each time a cached secret is seen with a new
	// version (not on its first load). It runs outside every lock, on a
	// background goroutine or in the caller of Refresh; calls for one secret
	// come in order, calls for different secrets may run concurrently. A
	// panic is recovered and logged. Calling Close from it stops the Provider
	// without waiting (see [Provider.Close]).
	OnRotate func(RotationEvent)

	// Logger receives Warn logs for failed refreshes, stale serves,
	// revocations and secrets near expiry, and Debug logs for reads. It
	// never receives a secret value. Default: discard.
	Logger *slog.Logger
}

// config is Options with defaults applied; it never changes after NewProvider.
type config struct {
	clientOptions      *azsecrets.ClientOptions
	ttl                time.Duration
	maxStale           time.Duration
	negativeTTL        time.Duration
	refreshAt          float64
	refreshJitter      float64
	noJitter           bool
	expiryWarning      time.Duration
	expiredRecheck     time.Duration
	enforceValidity    bool
	retryBackoff       time.Duration
	maxRetryBackoff    time.Duration
	fetchTimeout       time.Duration
	maxReadRate        float64
	noPacing           bool
	limiter            Limiter
	preloadConcurrency int
	refreshConcurrency int
	maxEntries         int
	idleTimeout        time.Duration
	verifyOverlap      time.Duration
	verifyPrevious     int
	allowedHosts       []string
	onRotate           func(RotationEvent)
	logger             *slog.Logger
	eventWindow        time.Duration
	eventSpread        time.Duration
}

// newConfig validates o and fills in defaults. Every error names the field.
func newConfig(o *Options) (config, error) {
	if o == nil {
		o = &Options{}
	}
	var errs []error
	dur := func(name string, v, def time.Duration) time.Duration {
		switch {
		case v < 0:
			errs = append(errs, fmt.Errorf("kvsecrets: Options.%s is negative (%v)", name, v))
			return def
		case v == 0:
			return def
		}
		return v
	}
	count := func(name string, v, def int) int {
		switch {
		case v < 0:
			errs = append(errs, fmt.Errorf("kvsecrets: Options.%s is negative (%d)", name, v))
			return def
		case v == 0:
			return def
		}
		return v
	}
	c := config{
		clientOptions:      o.ClientOptions,
		ttl:                dur("TTL", o.TTL, DefaultTTL),
		maxStale:           dur("MaxStale", o.MaxStale, DefaultMaxStale),
		negativeTTL:        dur("NegativeTTL", o.NegativeTTL, DefaultNegativeTTL),
		refreshAt:          o.RefreshAt,
		refreshJitter:      o.RefreshJitter,
		noJitter:           o.DisableJitter,
		expiryWarning:      dur("ExpiryWarning", o.ExpiryWarning, DefaultExpiryWarning),
		expiredRecheck:     dur("ExpiredRecheck", o.ExpiredRecheck, DefaultExpiredRecheck),
		enforceValidity:    o.EnforceValidity,
		retryBackoff:       dur("RetryBackoff", o.RetryBackoff, DefaultRetryBackoff),
		maxRetryBackoff:    dur("MaxRetryBackoff", o.MaxRetryBackoff, DefaultMaxRetryBackoff),
		fetchTimeout:       dur("FetchTimeout", o.FetchTimeout, DefaultFetchTimeout),
		maxReadRate:        o.MaxReadRate,
		noPacing:           o.DisablePacing,
		limiter:            o.Limiter,
		preloadConcurrency: count("PreloadConcurrency", o.PreloadConcurrency, DefaultPreloadConcurrency),
		refreshConcurrency: count("RefreshConcurrency", o.RefreshConcurrency, DefaultRefreshConcurrency),
		maxEntries:         count("MaxEntries", o.MaxEntries, DefaultMaxEntries),
		idleTimeout:        dur("IdleTimeout", o.IdleTimeout, 0),
		verifyOverlap:      dur("VerifyOverlap", o.VerifyOverlap, DefaultVerifyOverlap),
		verifyPrevious:     count("VerifyPrevious", o.VerifyPrevious, DefaultVerifyPrevious),
		allowedHosts:       append([]string(nil), o.AllowedVaultHosts...),
		onRotate:           o.OnRotate,
		logger:             o.Logger,
		eventWindow:        dur("EventCoalesceWindow", o.EventCoalesceWindow, time.Second),
		eventSpread:        dur("EventSpread", o.EventSpread, 0),
	}
	// NaN compares false with everything, so test for the valid range.
	if c.refreshAt == 0 {
		c.refreshAt = DefaultRefreshAt
	} else if !(c.refreshAt > 0 && c.refreshAt <= 1) {
		errs = append(errs, fmt.Errorf("kvsecrets: Options.RefreshAt must be in (0, 1], got %v", o.RefreshAt))
		c.refreshAt = DefaultRefreshAt
	}
	jitter := "RefreshJitter"
	if c.refreshJitter == 0 {
		c.refreshJitter = DefaultRefreshJitter
		jitter = "the default RefreshJitter"
	} else if !(c.refreshJitter > 0 && c.refreshJitter < 1) {
		errs = append(errs, fmt.Errorf("kvsecrets: Options.RefreshJitter must be in [0, 1), got %v", o.RefreshJitter))
		c.refreshJitter = 0
	}
	if c.noJitter {
		c.refreshJitter = 0
	}
	// One rule whether the jitter was set or defaulted: a refresh is never
	// planned after TTL.
	if c.refreshAt+c.refreshJitter > 1+1e-9 {
		errs = append(errs, fmt.Errorf("kvsecrets: Options.RefreshAt (%v) plus %s (%v) exceeds 1, so refreshes could be planned after TTL: "+
			"set RefreshJitter to at most %.4g, or DisableJitter", c.refreshAt, jitter, c.refreshJitter, 1-c.refreshAt))
	}
	if c.maxReadRate == 0 {
		c.maxReadRate = DefaultMaxReadRate
	} else if !(c.maxReadRate >= pacingMinRate && c.maxReadRate <= 1e6) {
		errs = append(errs, fmt.Errorf("kvsecrets: Options.MaxReadRate must be between %v and 1e6 requests a second, got %v", pacingMinRate, o.MaxReadRate))
	}
	if c.idleTimeout == 0 {
		c.idleTimeout = DefaultIdleTTLs * c.ttl
	}
	if c.maxRetryBackoff < c.retryBackoff {
		errs = append(errs, fmt.Errorf("kvsecrets: Options.MaxRetryBackoff (%v) is shorter than RetryBackoff (%v)", c.maxRetryBackoff, c.retryBackoff))
	}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	if len(errs) > 0 {
		return config{}, errors.Join(errs...)
	}
	return c, nil
}
