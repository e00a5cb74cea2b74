package redisfanout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/redis/go-redis/v9"
)

// Defaults for LimiterOptions.
const (
	// DefaultLimit and DefaultWindow are Key Vault's throttle: 4,000 GETs
	// per 10 s per vault.
	DefaultLimit  = 4000
	DefaultWindow = 10 * time.Second
	// DefaultLimitPrefix starts the name of every vault's key: the bucket
	// of myvault.vault.azure.net is "kvsecrets:limit:myvault.vault.azure.net".
	DefaultLimitPrefix = "kvsecrets:limit:"
	// DefaultLimitTimeout bounds one Redis call of Wait.
	DefaultLimitTimeout = 250 * time.Millisecond
	// DefaultMaxWait is the longest turn Wait reserves ahead; a longer
	// wait is not booked but asked for again later.
	DefaultMaxWait = time.Minute

	// MaxHostLen is the longest vault host Wait accepts (a DNS name's 253
	// bytes, a port and some slack): 255 bytes.
	MaxHostLen = 255
)

// Fixed tuning of the circuit breaker.
const (
	breakerMin = time.Second      // first pause after Redis failed
	breakerMax = 30 * time.Second // the pause doubles on each failed probe up to this
)

// ErrInvalidVault is returned by Limiter.Wait, without asking Redis, for a
// vault that is not a plausible host: empty, longer than MaxHostLen, or
// holding anything but ASCII letters, digits and ".-:[]" (host[:port], or
// a bracketed IPv6 address).
var ErrInvalidVault = errors.New("redisfanout: vault is not a host name")

// ErrBreakerOpen is the class of the *Error that Limiter.Wait returns at
// once, without asking Redis, while its circuit breaker is open after a
// Redis failure. The error also wraps that failure (ErrUnreachable,
// ErrTimeout or ErrRefused).
var ErrBreakerOpen = errors.New("redisfanout: redis failed recently, not asked")

// LimiterOptions configures a Limiter. Every zero field means its
// default; negative durations are refused by NewLimiter.
type LimiterOptions struct {
	// Limit is the requests the whole fleet may send to one vault per
	// Window, and Window that period: the fleet's steady rate is
	// Limit/Window. Default DefaultLimit (4,000) per DefaultWindow (10 s),
	// Key Vault's throttle. Lower it for a vault that other applications
	// read too, and to leave room for Burst (see there): Key Vault counts
	// every client of the vault. Window is between 1 ms and 24 hours, and
	// Window/Limit at least a microsecond.
	Limit  int
	Window time.Duration

	// Burst is how many requests beyond the steady rate an idle vault's
	// budget lets through at once: after an idle spell, Burst+1 requests
	// go without waiting, then one every Window/Limit. The bound this
	// gives, exactly: the turns granted by all the Limiters sharing a
	// bucket, each at the moment Redis's clock scheduled it, number at
	// most Limit+Burst in any period of length Window. Default Limit/100
	// (rounded down: 40 for 4,000, 0 below 100); -1 means none (every
	// turn Window/Limit after the one before).
	Burst int

	// Prefix starts the Redis key of each vault's bucket, which is
	// Prefix+host ("kvsecrets:limit:myvault.vault.azure.net"). Default
	// DefaultLimitPrefix. Fleets that share a Redis but not a budget use
	// different prefixes; every Limiter sharing a prefix must have the same
	// Limit, Window, Burst and MaxWait (a bucket booked further ahead than
	// a Limiter's MaxWait allows is taken for garbage and reset). At most
	// 256 bytes.
	Prefix string

	// Timeout bounds each Redis call of Wait. go-redis interrupts a
	// command at its context's deadline only with the client's
	// ContextTimeoutEnabled (NewLimiter logs a warning when it can see it
	// is off); otherwise the client's ReadTimeout, WriteTimeout and
	// DialTimeout bound it. Default DefaultLimitTimeout (250 ms).
	Timeout time.Duration

	// MaxWait is the longest turn Wait books ahead. When the budget is
	// spent further ahead than that, Wait books nothing, pauses (at least
	// MaxWait/16, with jitter) and asks again, so that a queue of callers
	// does not book the vault for hours. Default DefaultMaxWait (1 minute).
	MaxWait time.Duration

	// Logger receives a Warn when Redis fails and the circuit breaker
	// opens, and an Info when Redis answers again. Default: discard.
	Logger *slog.Logger

	breakerMin, breakerMax time.Duration  // tests shorten them; 0 means the constants
	onGrant                func(at int64) // tests: each turn's time on Redis's clock, µs
}

// limiterConfig is LimiterOptions validated, with defaults applied.
type limiterConfig struct {
	interval int64 // µs between turns: Window/Limit rounded up
	burst    int64
	maxWait  int64 // µs
	prefix   string
	timeout  time.Duration
	logger   *slog.Logger

	limit      int
	window     time.Duration
	breakerMin time.Duration
	breakerMax time.Duration
	onGrant    func(int64)
}

func (o *LimiterOptions) config() (limiterConfig, error) {
	if o == nil {
		o = &LimiterOptions{}
	}
	c := limiterConfig{
		limit:      o.Limit,
		window:     o.Window,
		prefix:     o.Prefix,
		timeout:    o.Timeout,
		logger:     o.Logger,
		breakerMin: o.breakerMin,
		breakerMax: o.breakerMax,
		onGrant:    o.onGrant,
	}
	maxWait := o.MaxWait
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"Window", &c.window, DefaultWindow},
		{"Timeout", &c.timeout, DefaultLimitTimeout},
		{"MaxWait", &maxWait, DefaultMaxWait},
	} {
		switch {
		case *d.v < 0:
			return limiterConfig{}, fmt.Errorf("redisfanout: LimiterOptions.%s must not be negative, got %v", d.name, *d.v)
		case *d.v == 0:
			*d.v = d.def
		}
	}
	switch {
	case c.limit < 0:
		return limiterConfig{}, fmt.Errorf("redisfanout: LimiterOptions.Limit must not be negative, got %d", c.limit)
	case c.limit == 0:
		c.limit = DefaultLimit
	}
	if c.window < time.Millisecond || c.window > 24*time.Hour {
		return limiterConfig{}, fmt.Errorf("redisfanout: LimiterOptions.Window must be between 1ms and 24h, got %v", c.window)
	}
	windowUS := c.window.Microseconds()
	if int64(c.limit) > windowUS {
		return limiterConfig{}, fmt.Errorf("redisfanout: LimiterOptions.Limit %d per Window %v is more than one a microsecond", c.limit, c.window)
	}
	c.interval = (windowUS + int64(c.limit) - 1) / int64(c.limit) // rounded up: never faster than Limit/Window
	switch {
	case o.Burst == -1:
		c.burst = 0
	case o.Burst < -1:
		return limiterConfig{}, fmt.Errorf("redisfanout: LimiterOptions.Burst must be -1 (none), 0 (default) or positive, got %d", o.Burst)
	case o.Burst == 0:
		c.burst = int64(c.limit / 100)
	case o.Burst > c.limit:
		return limiterConfig{}, fmt.Errorf("redisfanout: LimiterOptions.Burst %d is more than Limit %d", o.Burst, c.limit)
	default:
		c.burst = int64(o.Burst)
	}
	if c.timeout > time.Minute {
		return limiterConfig{}, fmt.Errorf("redisfanout: LimiterOptions.Timeout must be at most a minute, got %v", c.timeout)
	}
	if maxWait < time.Millisecond || maxWait > 24*time.Hour {
		return limiterConfig{}, fmt.Errorf("redisfanout: LimiterOptions.MaxWait must be between 1ms and 24h, got %v", maxWait)
	}
	c.maxWait = maxWait.Microseconds()
	if c.prefix == "" {
		c.prefix = DefaultLimitPrefix
	}
	if len(c.prefix) > maxChannelLen {
		return limiterConfig{}, fmt.Errorf("redisfanout: LimiterOptions.Prefix is %d bytes; at most %d", len(c.prefix), maxChannelLen)
	}
	if c.breakerMin <= 0 {
		c.breakerMin = breakerMin
	}
	if c.breakerMax < c.breakerMin {
		c.breakerMax = max(breakerMax, c.breakerMin)
	}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// Limiter is a kvsecrets.Limiter that shares each vault's request budget
// among the instances of a fleet through Redis: one token bucket per vault
// host, kept by the generic cell rate algorithm on Redis's clock. Set it
// as kvsecrets.Options.Limiter of every instance's Provider. Make it with
// NewLimiter; it is safe for concurrent use, starts no goroutine and needs
// no Close. See the package documentation.
type Limiter struct {
	client redis.UniversalClient
	cfg    limiterConfig
	br     breaker

	granted, waitedNS, deferred, failures, fastFails, invalid, canceled atomic.Uint64
}

var _ kvsecrets.Limiter = (*Limiter)(nil)

// NewLimiter returns a Limiter keeping its buckets in client, which it
// shares and never closes. For Timeout to bound each call, the client
// should have ContextTimeoutEnabled set.
func NewLimiter(client redis.UniversalClient, opts *LimiterOptions) (*Limiter, error) {
	if client == nil {
		return nil, errors.New("redisfanout: NewLimiter needs a Redis client")
	}
	cfg, err := opts.config()
	if err != nil {
		return nil, err
	}
	l := &Limiter{client: client, cfg: cfg}
	l.br.min, l.br.max = cfg.breakerMin, cfg.breakerMax
	if enabled, known := contextTimeouts(client); known && !enabled {
		cfg.logger.Warn("redisfanout: the Limiter's Redis client has ContextTimeoutEnabled off: each Wait's Redis call is bounded by the client's read, write and dial timeouts, not LimiterOptions.Timeout",
			"timeout", cfg.timeout)
	}
	return l, nil
}

// contextTimeouts reports the client's ContextTimeoutEnabled, when its
// type shows it.
func contextTimeouts(c redis.UniversalClient) (enabled, known bool) {
	switch c := c.(type) {
	case *redis.Client:
		return c.Options().ContextTimeoutEnabled, true
	case *redis.ClusterClient:
		return c.Options().ContextTimeoutEnabled, true
	case *redis.Ring:
		return c.Options().ContextTimeoutEnabled, true
	}
	return false, false
}

// LimiterStatus is a Limiter's state and counters since NewLimiter.
type LimiterStatus struct {
	// Open is whether the circuit breaker is open: Waits fail at once
	// with ErrBreakerOpen, without asking Redis, until Until; then one
	// Wait asks Redis again (the others still fail at once until it has
	// its answer). Backoff is the length of the present or last open
	// spell: 1 s when Redis first fails, doubling on each failed probe up
	// to 30 s; an answer closes the breaker, and the next failure opens it
	// for 1 s again.
	Open    bool
	Until   time.Time
	Backoff time.Duration
	// LastError is the last Redis failure, an *Error (Op "limit") with
	// its class, nil if there was none. It stays after recovery; see Open
	// for the present.
	LastError error

	Granted   uint64        // turns given: Waits that returned nil
	Waited    time.Duration // the total time Waits slept for their reserved turns
	Deferred  uint64        // reservations not made because the turn was further than MaxWait, asked again later
	Failures  uint64        // Redis calls that failed or timed out
	FastFails uint64        // Waits that failed at once because the breaker was open
	Invalid   uint64        // Waits refused because the vault was not a host
	Canceled  uint64        // Waits whose ctx ended first (a reserved turn is then wasted)
}

// Status returns the Limiter's state and counters.
func (l *Limiter) Status() LimiterStatus {
	s := LimiterStatus{}
	l.br.mu.Lock()
	s.Open = l.br.state != closed
	s.Until, s.Backoff, s.LastError = l.br.until, l.br.backoff, l.br.lastErr
	l.br.mu.Unlock()
	s.Granted = l.granted.Load()
	s.Waited = time.Duration(l.waitedNS.Load())
	s.Deferred = l.deferred.Load()
	s.Failures = l.failures.Load()
	s.FastFails = l.fastFails.Load()
	s.Invalid = l.invalid.Load()
	s.Canceled = l.canceled.Load()
	return s
}

// Wait returns nil when one request to vault, a host such as
// "myvault.vault.azure.net", may be sent. It reserves the next turn in the
// vault's bucket in one Redis call and sleeps until that turn; when the
// turn would be further ahead than MaxWait it reserves nothing, pauses
// and asks again. It returns ctx's error if ctx ends first; a turn
// reserved and not used is then wasted (the fleet sends one request fewer
// than it could). It returns an *Error when Redis fails or does not
// answer within Timeout, and then, without asking Redis, an *Error of
// class ErrBreakerOpen until the breaker lets a Wait try Redis again (see
// LimiterStatus). A vault that is not a host is refused with
// ErrInvalidVault, without asking Redis.
func (l *Limiter) Wait(ctx context.Context, vault string) error {
	if len(vault) > MaxHostLen || !validHost(strings.ToLower(vault)) {
		l.invalid.Add(1)
		return ErrInvalidVault
	}
	key := l.cfg.prefix + strings.ToLower(vault)
	for {
		if err := ctx.Err(); err != nil {
			l.canceled.Add(1)
			return err
		}
		probe, err := l.br.allow(time.Now())
		if err != nil {
			l.fastFails.Add(1)
			return err
		}
		asked := time.Now()
		r, err := l.reserve(ctx, key)
		if err != nil {
			e := classify("limit", err)
			// A caller whose deadline came before Timeout's may see Redis
			// time out before its context says so: that is the caller's
			// deadline, not a Redis failure, and opens no breaker.
			dl, bounded := ctx.Deadline()
			if ctx.Err() != nil || (bounded && dl.Before(asked.Add(l.cfg.timeout)) && errors.Is(e, ErrTimeout)) {
				l.br.abandon(probe)
				l.canceled.Add(1)
				<-ctx.Done() // its deadline, now or within moments
				return ctx.Err()
			}
			l.failures.Add(1)
			if l.br.fail(probe, e, time.Now()) {
				l.cfg.logger.Warn("redisfanout: the Limiter's Redis failed; Providers pace their requests by themselves until it answers",
					"error", e.Error(), "retry_in", l.cfg.breakerMin)
			}
			return e
		}
		if l.br.succeed() {
			l.cfg.logger.Info("redisfanout: the Limiter's Redis answers again")
		}
		if !r.ok {
			l.deferred.Add(1)
			pause := time.Duration(r.wait-l.cfg.maxWait) * time.Microsecond
			pause = max(pause, time.Duration(l.cfg.maxWait)*time.Microsecond/16)
			pause += rand.N(pause/4 + 1)
			if err := sleep(ctx, pause); err != nil {
				l.canceled.Add(1)
				return err
			}
			continue
		}
		if l.cfg.onGrant != nil {
			l.cfg.onGrant(r.now + r.wait)
		}
		if r.wait > 0 {
			d := time.Duration(r.wait) * time.Microsecond
			if err := sleep(ctx, d); err != nil {
				l.canceled.Add(1)
				return err
			}
			l.waitedNS.Add(uint64(d))
		}
		l.granted.Add(1)
		return nil
	}
}

// sleep waits d, or until ctx ends and returns its error.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// gcraScript reserves a turn in the bucket KEYS[1], which holds its
// theoretical arrival time (TAT) in µs on Redis's clock: ARGV[1] is the
// interval between turns in µs, ARGV[2] the burst (turns beyond the steady
// rate), ARGV[3] the longest wait to reserve in µs. It returns {ok, wait,
// now, tat before, tat after}: ok 1 with the wait in µs when a turn was
// reserved, 0 with the wait it would have had when that is over ARGV[3]
// (and nothing changes). The key expires when the bucket is full again.
// A TAT that is not a number, negative, or further ahead than a turn is
// ever booked (maxWait + burst×interval + interval: set by someone else,
// or left by a Redis whose clock went back, as after a failover) counts as
// absent.
// Numbers are µs since the epoch, below 2^53, so Lua's doubles hold them
// exactly; '%.0f' writes them without an exponent. gcra is the same in Go.
var gcraScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2]) * interval
local maxWait = tonumber(ARGV[3])
local old = tonumber(redis.call('GET', KEYS[1]) or '')
if not old or old ~= old or old < 0 or old > now + maxWait + tau + interval then old = now end
local tat = old
if tat < now then tat = now end
local wait = tat - tau - now
if wait < 0 then wait = 0 end
if wait > maxWait then
	return {0, wait, now, old, old}
end
local new = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', string.format('%.0f', math.ceil((new - now) / 1000)))
return {1, wait, now, old, new}
`)

// gcra is the generic cell rate algorithm of gcraScript, in µs: a turn
// asked for at now, with the bucket's theoretical arrival time tat, is
// given after wait, and the bucket's tat becomes newTAT; unless wait would
// exceed maxWait (ok false, newTAT = tat). An absent bucket has tat = now.
// The turns it gives, at now+wait, are at least interval apart beyond the
// first burst+1, so that any period of length Limit×interval holds at most
// Limit+burst of them.
func gcra(tat, now, interval, burst, maxWait int64) (newTAT, wait int64, ok bool) {
	if tat < 0 || tat > now+maxWait+burst*interval+interval {
		tat = now
	}
	t := max(tat, now)
	wait = max(t-burst*interval-now, 0)
	if wait > maxWait {
		return tat, wait, false
	}
	return t + interval, wait, true
}

// reservation is gcraScript's answer.
type reservation struct {
	ok                  bool
	wait, now, old, tat int64 // µs
}

func (l *Limiter) reserve(ctx context.Context, key string) (reservation, error) {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.timeout)
	defer cancel()
	return runGCRA(ctx, l.client, key, l.cfg.interval, l.cfg.burst, l.cfg.maxWait)
}

func runGCRA(ctx context.Context, c redis.Scripter, key string, interval, burst, maxWait int64) (reservation, error) {
	return parseReservation(gcraScript.Run(ctx, c, []string{key}, interval, burst, maxWait).Int64Slice())
}

func parseReservation(v []int64, err error) (reservation, error) {
	if err != nil {
		return reservation{}, err
	}
	if len(v) != 5 {
		return reservation{}, fmt.Errorf("redisfanout: the rate script answered %d values, want 5", len(v))
	}
	return reservation{ok: v[0] == 1, wait: v[1], now: v[2], old: v[3], tat: v[4]}, nil
}

// breaker states.
const (
	closed  = iota // Redis is asked
	open           // Waits fail at once until until
	probing        // one Wait asks Redis; the others fail at once
)

// breaker is the Limiter's circuit breaker: after a Redis failure, Waits
// fail at once for backoff, then one probes.
type breaker struct {
	min, max time.Duration

	mu      sync.Mutex
	state   int
	until   time.Time
	backoff time.Duration
	lastErr error
}

// allow returns whether the caller may ask Redis, and whether as the
// probe; or the error to fail with at once.
func (b *breaker) allow(now time.Time) (probe bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.state == closed:
		return false, nil
	case b.state == open && !now.Before(b.until):
		b.state = probing
		return true, nil
	}
	return false, &Error{Op: "limit", Class: ErrBreakerOpen, err: b.lastErr}
}

// fail records a failed call and reports whether it opened the breaker.
// The breaker's backoff doubles only on a failed probe, not for calls
// that were under way as it opened.
func (b *breaker) fail(probe bool, e *Error, now time.Time) (opened bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lastErr = e
	switch {
	case b.state == closed:
		b.state, b.backoff, b.until = open, b.min, now.Add(b.min)
		return true
	case probe:
		b.backoff = min(2*b.backoff, b.max)
		b.state, b.until = open, now.Add(b.backoff)
	}
	return false
}

// succeed records an answer from Redis and reports whether it closed the
// breaker.
func (b *breaker) succeed() (recovered bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == closed {
		return false
	}
	b.state = closed
	return true
}

// abandon gives up a probe whose caller left before Redis answered: the
// next Wait probes.
func (b *breaker) abandon(probe bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if probe && b.state == probing {
		b.state = open
	}
}
