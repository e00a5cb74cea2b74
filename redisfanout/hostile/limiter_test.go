package hostile

// Review 17: attacks on redisfanout.Limiter (package doc "A fleet-wide
// request budget: Limiter", LimiterOptions, LimiterStatus, Wait) against a
// real redis-server on 127.0.0.1. Assertions are counts and bounds; wall
// time appears only as a generous hang guard or as the input of an upper
// bound (more elapsed time only loosens it), never as a tight limit.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
	"github.com/kvsecrets/kvsecrets/redisfanout"
	"github.com/redis/go-redis/v9"
)

// needRedis skips without /usr/bin/redis-server, unless KVSECRETS_REQUIRE_REDIS=1.
func needRedis(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/usr/bin/redis-server"); err != nil {
		if os.Getenv("KVSECRETS_REQUIRE_REDIS") == "1" {
			t.Fatalf("redis-server not found (%v); KVSECRETS_REQUIRE_REDIS=1 makes this a failure", err)
		}
		t.Skipf("redis-server not found: %v", err)
	}
}

func limClient(t testing.TB, r *redisProc) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: r.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { c.Close() })
	return c
}

func newLim(t testing.TB, c redis.UniversalClient, o *redisfanout.LimiterOptions) *redisfanout.Limiter {
	t.Helper()
	l, err := redisfanout.NewLimiter(c, o)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// waitGuard runs l.Wait and fails the test if it has not returned after
// guard (a hang detector only: guard is many times any documented bound).
func waitGuard(t *testing.T, l *redisfanout.Limiter, ctx context.Context, vault string, guard time.Duration) error {
	t.Helper()
	ch := make(chan error, 1)
	go func() { ch <- l.Wait(ctx, vault) }()
	select {
	case err := <-ch:
		return err
	case <-time.After(guard):
		t.Fatalf("Wait(%q) still blocked after %v", vault, guard)
		return nil
	}
}

// Promise: "the turns booked by all the Limiters sharing a key ... number at
// most Limit+Burst in any period of length Window". Six Limiters on three
// clients, 24 goroutines waiting as fast as they can for about 3 s: the turns
// granted number at most Limit×elapsed/Window + Burst (+ 1 of slack).
func TestLimiterFleetBoundAcrossClients(t *testing.T) {
	needRedis(t)
	r := startRedis(t)
	opts := &redisfanout.LimiterOptions{Limit: 50, Window: time.Second, Burst: 5}
	var lims []*redisfanout.Limiter
	for range 3 {
		c := limClient(t, r)
		lims = append(lims, newLim(t, c, opts), newLim(t, c, opts))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var granted atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for g := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := lims[g%len(lims)]
			for ctx.Err() == nil {
				if err := l.Wait(ctx, "fleet.vault.azure.net"); err == nil {
					granted.Add(1)
				} else if ctx.Err() == nil {
					t.Errorf("Wait: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	bound := 50*el.Seconds() + 5 + 1
	var statusGranted uint64
	for _, l := range lims {
		statusGranted += l.Status().Granted
	}
	t.Logf("%d turns in %v (bound %.0f); Status.Granted (Waits) %d", granted.Load(), el, bound, statusGranted)
	if float64(granted.Load()) > bound {
		t.Errorf("six Limiters granted %d turns in %v: over Limit×elapsed+Burst (%.0f)", granted.Load(), el, bound)
	}
	if granted.Load() < 50 {
		t.Errorf("only %d turns in %v at 50 a second: the Limiter starves its callers", granted.Load(), el)
	}
}

// Promise: when Redis is down, Wait fails with ErrUnreachable, then the
// breaker fails Waits at once (ErrBreakerOpen, FastFails) without asking
// Redis; after Redis restarts, a probe closes the breaker and turns flow.
func TestLimiterRedisDownBreakerAndRecovery(t *testing.T) {
	needRedis(t)
	r := startRedis(t)
	l := newLim(t, limClient(t, r), nil)
	const v = "down.vault.azure.net"
	if err := waitGuard(t, l, context.Background(), v, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	r.kill()
	err := waitGuard(t, l, context.Background(), v, 10*time.Second)
	var re *redisfanout.Error
	if !errors.As(err, &re) || re.Op != "limit" || !(errors.Is(err, redisfanout.ErrUnreachable) || errors.Is(err, redisfanout.ErrTimeout)) {
		t.Fatalf("Wait with Redis down: %v, want an *Error (limit) of class ErrUnreachable", err)
	}
	st := l.Status()
	if !st.Open || st.Failures != 1 || st.Backoff != time.Second {
		t.Errorf("status after one failure: %+v", st)
	}
	for range 100 {
		if err := l.Wait(context.Background(), v); !errors.Is(err, redisfanout.ErrBreakerOpen) {
			t.Fatalf("Wait with the breaker open: %v, want ErrBreakerOpen", err)
		}
	}
	if st := l.Status(); st.FastFails != 100 || st.Failures != 1 {
		t.Errorf("100 fast fails: %+v", st)
	}
	r.start()
	eventually(t, 40*time.Second, "the breaker to close after Redis restarts", func() bool {
		return l.Wait(context.Background(), v) == nil
	})
	if st := l.Status(); st.Open || st.LastError == nil {
		t.Errorf("after recovery: %+v", st)
	}
}

// Promise: a hung Redis (SIGSTOP) fails Wait within Timeout — here only
// checked to return at all, well within a 10 s guard — then fast.
func TestLimiterHungRedisFailsFast(t *testing.T) {
	needRedis(t)
	r := startRedis(t)
	l := newLim(t, limClient(t, r), &redisfanout.LimiterOptions{Timeout: 200 * time.Millisecond})
	const v = "hung.vault.azure.net"
	if err := waitGuard(t, l, context.Background(), v, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	r.signal(syscall.SIGSTOP)
	defer r.signal(syscall.SIGCONT)
	err := waitGuard(t, l, context.Background(), v, 10*time.Second)
	if !errors.Is(err, redisfanout.ErrTimeout) {
		t.Errorf("Wait with Redis stopped: %v, want ErrTimeout", err)
	}
	if err := waitGuard(t, l, context.Background(), v, 10*time.Second); !errors.Is(err, redisfanout.ErrBreakerOpen) {
		t.Errorf("next Wait: %v, want ErrBreakerOpen", err)
	}
	r.signal(syscall.SIGCONT)
	eventually(t, 40*time.Second, "the breaker to close after SIGCONT", func() bool {
		return l.Wait(context.Background(), v) == nil
	})
}

// Promise: hostile vault strings are refused without asking Redis
// (ErrInvalidVault; Status.Invalid), never crash, and never reach Redis
// (MONITOR).
func TestLimiterHostileArguments(t *testing.T) {
	needRedis(t)
	r := startRedis(t)
	l := newLim(t, limClient(t, r), nil)
	mon := startMonitor(t, r)
	time.Sleep(100 * time.Millisecond) // MONITOR has no acknowledgement to wait on
	badVaults := []string{"", " ", "a b", "evil\r\nFLUSHALL", "host/../x", "*", "kv\x00x", "ключ.vault.azure.net",
		"kv{tag}", "a;b", "a\"b", "a'b", "%0d%0a", strings.Repeat("a", redisfanout.MaxHostLen+1), "a\tb", "x?y", "@"}
	for _, v := range badVaults {
		if err := waitGuard(t, l, context.Background(), v, 5*time.Second); !errors.Is(err, redisfanout.ErrInvalidVault) {
			t.Errorf("Wait(%q): %v, want ErrInvalidVault", v, err)
		}
	}
	// LimiterStatus.Invalid is documented as "Waits refused because the
	// vault was not a host".
	if st := l.Status(); st.Invalid != uint64(len(badVaults)) || st.Failures != 0 || st.Granted != 0 {
		t.Errorf("status after %d bad vaults: %+v (want Invalid %d: the vault was not a host)", len(badVaults), st, len(badVaults))
	}
	for _, line := range mon.all() {
		if strings.Contains(line, "ok.vault.azure.net") || strings.Contains(strings.ToLower(line), "evalsha") || strings.Contains(strings.ToLower(line), "flushall") {
			t.Errorf("a refused Wait reached Redis: %s", line)
		}
	}
	// Valid edge cases still work: a host with a port, IPv6, the longest.
	for _, v := range []string{"a", "kv.vault.azure.net:443", "[::1]:8443", strings.Repeat("a", redisfanout.MaxHostLen)} {
		if err := waitGuard(t, l, context.Background(), v, 70*time.Second); err != nil {
			t.Errorf("Wait(%q): %v", v, err)
		}
	}
	// Finding probe: one vault, two spellings. Providers normalise their
	// host (see hostile/pacing_test.go TestLimVaultSpellingsShareOneHost);
	// direct users of Wait get one bucket per spelling.
	l.Wait(context.Background(), "Case.Vault.Azure.Net")
	l.Wait(context.Background(), "case.vault.azure.net")
	keys, _ := rawClient(t, r).Keys(context.Background(), "kvsecrets:limit:*ase*").Result()
	t.Logf("keys for two spellings of one host: %q", keys)
}

// Promise: "Whoever can write the key can delay the fleet's requests by up to
// MaxWait each time (a booking further ahead ... is taken for garbage and
// reset) or let them through". Whatever a hostile Redis user writes into the
// bucket's key, Wait returns (a turn or an *Error) within its context, never
// sleeps beyond MaxWait, and never panics; when the Wait fails, the breaker
// lets a Provider fall back to pacing.
func TestLimiterGarbageInBucket(t *testing.T) {
	needRedis(t)
	r := startRedis(t)
	raw := rawClient(t, r)
	const maxWait = time.Second
	l := newLim(t, limClient(t, r), &redisfanout.LimiterOptions{Limit: 100, Window: time.Second, MaxWait: maxWait})
	const v = "garbage.vault.azure.net"
	key := redisfanout.DefaultLimitPrefix + v
	ctx := context.Background()
	type garbage struct {
		name  string
		write func() error
	}
	str := func(s string) func() error { return func() error { return raw.Set(ctx, key, s, 0).Err() } }
	cases := []garbage{
		{"huge", str("99999999999999999999999999999")},
		{"maxint64", str("9223372036854775807")},
		{"negative", str("-5")},
		{"very negative", str("-9223372036854775808")},
		{"NaN", str("nan")},
		{"inf", str("inf")},
		{"-inf", str("-inf")},
		{"1e308", str("1e308")},
		{"float", str("1.5")},
		{"hex", str("0x10")},
		{"non-number", str("hello")},
		{"empty", str("")},
		{"binary", str("\x00\xff\r\n")},
		{"list (WRONGTYPE)", func() error { raw.Del(ctx, key); return raw.LPush(ctx, key, "1").Err() }},
		{"hash (WRONGTYPE)", func() error { raw.Del(ctx, key); return raw.HSet(ctx, key, "f", "1").Err() }},
		{"now + 30 s", func() error {
			tm, err := raw.Time(ctx).Result()
			if err != nil {
				return err
			}
			return raw.Set(ctx, key, fmt.Sprint(tm.Add(30*time.Second).UnixMicro()), 0).Err()
		}},
	}
	for _, c := range cases {
		raw.Del(ctx, key)
		if err := c.write(); err != nil {
			t.Fatalf("%s: writing the garbage: %v", c.name, err)
		}
		// Let the breaker of an earlier case close first.
		if st := l.Status(); st.Open {
			time.Sleep(time.Until(st.Until) + 10*time.Millisecond) // the breaker's own reopening time
		}
		wctx, cancel := context.WithTimeout(ctx, 10*maxWait)
		before := l.Status()
		err := waitGuard(t, l, wctx, v, 30*time.Second)
		ctxErr := wctx.Err()
		cancel()
		after := l.Status()
		typ, _ := raw.Type(ctx, key).Result()
		val, _ := raw.Get(ctx, key).Result()
		pttl, _ := raw.PTTL(ctx, key).Result()
		t.Logf("%-18s -> Wait %v; slept %v; deferred %d; key now %s %q pttl %v", c.name, err, after.Waited-before.Waited, after.Deferred-before.Deferred, typ, val, pttl)
		if ctxErr != nil || errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s in the bucket: Wait ran into its 10×MaxWait deadline (%v): the garbage stalled it", c.name, err)
		}
		var re *redisfanout.Error
		if err != nil && !errors.As(err, &re) {
			t.Errorf("%s in the bucket: Wait returned %v, neither a turn nor a classified *Error", c.name, err)
		}
		if slept := after.Waited - before.Waited; slept > maxWait+maxWait/2 {
			t.Errorf("%s in the bucket: Wait slept %v, more than MaxWait %v", c.name, slept, maxWait)
		}
		if err == nil && typ == "string" && pttl < 0 {
			t.Errorf("%s in the bucket: after a granted Wait the key has no expiry (%v): it would stay in Redis for ever", c.name, pttl)
		}
	}
	// After the garbage is gone, turns flow again.
	raw.Del(ctx, key)
	eventually(t, 40*time.Second, "turns after the garbage is removed", func() bool { return l.Wait(ctx, v) == nil })
}

// Promise: "The key expires when the bucket is full again, so an idle vault
// leaves nothing in Redis".
func TestLimiterKeyExpiresWhenIdle(t *testing.T) {
	needRedis(t)
	r := startRedis(t)
	raw := rawClient(t, r)
	l := newLim(t, limClient(t, r), &redisfanout.LimiterOptions{Limit: 100, Window: 200 * time.Millisecond, Burst: 3})
	const v = "idle.vault.azure.net"
	key := redisfanout.DefaultLimitPrefix + v
	for range 20 {
		if err := waitGuard(t, l, context.Background(), v, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	pttl, err := raw.PTTL(context.Background(), key).Result()
	if err != nil || pttl <= 0 && pttl != -2*time.Nanosecond && pttl != -2 {
		// -2: already gone (fine); -1: no expiry (a key kept for ever)
	}
	if pttl == -1 || pttl == -1*time.Nanosecond {
		t.Errorf("bucket key has no expiry after Waits")
	}
	eventually(t, 10*time.Second, "the idle bucket's key to expire", func() bool {
		n, _ := raw.Exists(context.Background(), key).Result()
		return n == 0
	})
	keys, _ := raw.Keys(context.Background(), "*").Result()
	if len(keys) != 0 {
		t.Errorf("an idle Limiter left keys in Redis: %q", keys)
	}
}

// Promise: "Redis learns vault hosts and request times, never a secret's name
// or value" (and README "Hosts only"). Providers with a Limiter read secrets;
// MONITOR sees the host and nothing else of them.
func TestLimiterOnlyHostsReachRedis(t *testing.T) {
	needRedis(t)
	r := startRedis(t)
	mon := startMonitor(t, r)
	srv := newVault(t)
	const name, value = "TopSecretNameXyz", "VALUE-never-in-redis-8c1f"
	srv.SetSecret(name, value, nil)
	for i := range 10 {
		srv.SetSecret(fmt.Sprintf("%s%d", name, i), fmt.Sprintf("%s%d", value, i), nil)
	}
	lim := newLim(t, limClient(t, r), nil)
	logs := &logBuf{}
	p := newProvider(t, srv, &kvsecrets.Options{Limiter: lim, Logger: logs.logger()})
	names := []string{name}
	for i := range 10 {
		names = append(names, fmt.Sprintf("%s%d", name, i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Preload(ctx, names...); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Refresh(ctx, name); err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.LimitedReads == 0 {
		t.Fatalf("the Limiter was not used: %+v", st)
	}
	time.Sleep(200 * time.Millisecond) // MONITOR lines arrive asynchronously
	lines := mon.all()
	sawHost := false
	for _, line := range lines {
		if strings.Contains(line, srv.Host()) {
			sawHost = true
		}
		low := strings.ToLower(line)
		if strings.Contains(low, strings.ToLower(name)) || strings.Contains(line, "VALUE-never") || strings.Contains(line, "/secrets/") {
			t.Errorf("Redis saw more than a host: %s", line)
		}
	}
	if !sawHost {
		t.Errorf("MONITOR never saw the vault host (%d lines)", len(lines))
	}
	if strings.Contains(logs.String(), "VALUE-never") {
		t.Errorf("a value reached the logs")
	}
}

// Promise (README "Measured": 0 answers of 429 with the Limiter): four
// Providers on four clients, each preloading 30 secrets from one vault that
// throttles at 100 requests a second, sharing a Limiter budget of 40 a
// second: every preload succeeds and the vault answers no 429.
func TestLimiterFleetAgainstThrottlingVault(t *testing.T) {
	needRedis(t)
	r := startRedis(t)
	srv := newVault(t)
	srv.SetThrottle(100, time.Second)
	var names []string
	for i := range 30 {
		n := fmt.Sprintf("Fleet%d", i)
		srv.SetSecret(n, "v"+n, nil)
		names = append(names, n)
	}
	var ps []*kvsecrets.Provider
	for range 4 {
		lim := newLim(t, limClient(t, r), &redisfanout.LimiterOptions{Limit: 40, Window: time.Second, Burst: -1})
		ps = append(ps, newProvider(t, srv, &kvsecrets.Options{Limiter: lim}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	errs := make(chan error, len(ps))
	for _, p := range ps {
		go func() { errs <- p.Preload(ctx, names...) }()
	}
	for range ps {
		if err := <-errs; err != nil {
			t.Errorf("preload with the Limiter: %v", err)
		}
	}
	var throttled, limited, failures uint64
	for _, p := range ps {
		st := p.Stats()
		throttled += st.Throttled
		limited += st.LimitedReads
		failures += st.LimiterFailures
	}
	t.Logf("vault counts %+v; Stats: Throttled %d LimitedReads %d LimiterFailures %d", srv.Counts(), throttled, limited, failures)
	if c := srv.Counts(); c.Throttled != 0 || throttled != 0 {
		t.Errorf("the fleet met %d 429s (Stats.Throttled %d) with a shared budget of 40/s under a throttle of 100/s", c.Throttled, throttled)
	}
	if limited < 120 || failures != 0 {
		t.Errorf("LimitedReads %d (want ≥ 120), LimiterFailures %d", limited, failures)
	}
}

// Promise: "When Redis fails ... each Provider sends its requests paced by
// itself alone, without failing a read (Stats.LimiterFailures ...)".
// Redis down and Redis hung (SIGSTOP): preloads succeed.
func TestLimiterRedisDownProvidersStillRead(t *testing.T) {
	needRedis(t)
	for _, mode := range []string{"killed", "stopped"} {
		t.Run(mode, func(t *testing.T) {
			r := startRedis(t)
			srv := newVault(t)
			var names []string
			for i := range 40 {
				n := fmt.Sprintf("Down%d", i)
				srv.SetSecret(n, "v"+n, nil)
				names = append(names, n)
			}
			lim := newLim(t, limClient(t, r), nil)
			p := newProvider(t, srv, &kvsecrets.Options{Limiter: lim})
			if mode == "killed" {
				r.kill()
			} else {
				r.signal(syscall.SIGSTOP)
				defer r.signal(syscall.SIGCONT)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if err := p.Preload(ctx, names...); err != nil {
				t.Fatalf("Preload with Redis %s: %v", mode, err)
			}
			st := p.Stats()
			ls := lim.Status()
			t.Logf("Stats: LimitedReads %d LimiterFailures %d; Limiter %+v", st.LimitedReads, st.LimiterFailures, ls)
			if st.LimiterFailures == 0 || st.LimitedReads != 0 {
				t.Errorf("Stats with Redis %s: LimitedReads %d LimiterFailures %d", mode, st.LimitedReads, st.LimiterFailures)
			}
			if ls.Failures > 3 {
				t.Errorf("Redis %s: %d Redis calls failed during one preload: the breaker did not stop asking", mode, ls.Failures)
			}
		})
	}
}

// Promise (Wait): "It returns ctx's error if ctx ends first; a turn reserved
// and not used is then wasted" (Status.Canceled). With the budget spent far
// ahead, a Wait whose ctx ends returns ctx's error, not a turn.
func TestLimiterWaitHonoursCtx(t *testing.T) {
	needRedis(t)
	r := startRedis(t)
	l := newLim(t, limClient(t, r), &redisfanout.LimiterOptions{Limit: 10, Window: 10 * time.Second, Burst: -1, Timeout: 5 * time.Second})
	const v = "ctx.vault.azure.net"
	// Spend the budget: the bucket's next turn is 16 s ahead on Redis's
	// clock, as 16 turns at one a second would leave it.
	raw := rawClient(t, r)
	now, err := raw.Time(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Set(context.Background(), "kvsecrets:limit:"+v, fmt.Sprint(now.Add(16*time.Second).UnixMicro()), 20*time.Second).Err(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var wrong atomic.Int32
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if err := l.Wait(ctx, v); !errors.Is(err, context.DeadlineExceeded) {
				wrong.Add(1)
				t.Errorf("Wait past its deadline: %v", err)
			}
		}()
	}
	wg.Wait()
	if st := l.Status(); st.Canceled != 5 {
		t.Errorf("Status.Canceled %d after 5 Waits whose ctx ended first", st.Canceled)
	}
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.Wait(canceled, v); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait with a canceled ctx: %v", err)
	}
}

// Promise (Wait: "It returns ctx's error if ctx ends first"; the breaker is
// for Redis failures). Callers whose own deadlines are short or already
// past, against a healthy Redis, must get their ctx's error and must not
// open the breaker (which would drop every Provider of the process to
// self-pacing for a second or more: callers could switch the fleet budget off).
//
// Broke in review 17 (fixed since): a Wait whose ctx has a 10 µs deadline on a healthy Redis returns
// "redisfanout: limit: redis timed out" (ErrTimeout, not ctx's error),
// counts a Redis failure and opens the breaker for 1 s for every caller of
// the Limiter. Reproduce: l.Wait(ctx with 10µs timeout, "v.vault.azure.net").
func TestLimiterCallerDeadlineIsNotARedisFailure(t *testing.T) {
	needRedis(t)
	r := startRedis(t)
	l := newLim(t, limClient(t, r), nil)
	const v = "deadline.vault.azure.net"
	if err := waitGuard(t, l, context.Background(), v, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%20)*10*time.Microsecond)
		err := l.Wait(ctx, v)
		cancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Wait with a %v deadline: %v, want nil or its ctx's error", time.Duration(i%20)*10*time.Microsecond, err)
			break
		}
	}
	if st := l.Status(); st.Failures != 0 || st.Open {
		t.Errorf("callers' short deadlines were counted as Redis failures: %+v", st)
	}
}

// Promise (LimiterOptions): NewLimiter refuses what is not a budget.
func TestLimiterOptionsRefused(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	for _, o := range []redisfanout.LimiterOptions{
		{Limit: -1},
		{Window: -time.Second},
		{Window: time.Microsecond},
		{Window: 25 * time.Hour},
		{Limit: 1 << 30, Window: time.Second},
		{Burst: -2},
		{Timeout: -1},
		{MaxWait: -1},
		{Prefix: strings.Repeat("p", 257)},
	} {
		if _, err := redisfanout.NewLimiter(c, &o); err == nil {
			t.Errorf("NewLimiter(%+v) accepted", o)
		}
	}
	if _, err := redisfanout.NewLimiter(nil, nil); err == nil {
		t.Errorf("NewLimiter(nil client) accepted")
	}
}

var _ = kvtest.Throttled
