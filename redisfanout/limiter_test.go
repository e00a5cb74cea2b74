package redisfanout

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
	"github.com/redis/go-redis/v9"
)

// limiterClient is a go-redis client for a Limiter, with
// ContextTimeoutEnabled so that LimiterOptions.Timeout bounds each call.
func limiterClient(t *testing.T, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { c.Close() })
	return c
}

func newTestLimiter(t *testing.T, c redis.UniversalClient, o LimiterOptions) *Limiter {
	t.Helper()
	l, err := NewLimiter(c, &o)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// grantLog collects the turns' times on Redis's clock (µs).
type grantLog struct {
	mu sync.Mutex
	at []int64
}

func (g *grantLog) add(at int64) {
	g.mu.Lock()
	g.at = append(g.at, at)
	g.mu.Unlock()
}

func (g *grantLog) reset() {
	g.mu.Lock()
	g.at = nil
	g.mu.Unlock()
}

func (g *grantLog) sorted() []int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Sorted(slices.Values(g.at))
}

// maxInWindow returns the most of the sorted times in any half-open
// period [t, t+window).
func maxInWindow[T int64 | time.Duration](times []T, window T) int {
	most, j := 0, 0
	for i := range times {
		for j < len(times) && times[j] < times[i]+window {
			j++
		}
		most = max(most, j-i)
	}
	return most
}

// Three Limiters, each on its own client, share one Redis: the turns they
// give together never exceed Limit+Burst in any Window (on Redis's clock,
// where the bound is exact), and come at about Limit/Window.
func TestLimiterFleetBound(t *testing.T) {
	srv := startRedis(t)
	const (
		limit, burst = 50, 5
		window       = time.Second
		perLimiter   = 8 // goroutines
		total        = 150
	)
	var log grantLog
	var lims []*Limiter
	for range 3 {
		lims = append(lims, newTestLimiter(t, limiterClient(t, srv.Addr()), LimiterOptions{
			Limit: limit, Window: window, Burst: burst, Timeout: 5 * time.Second, onGrant: log.add,
		}))
	}
	ctx := deadline(t)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		left    = total
		errs    []error
		arrived []time.Duration // local clock, after Wait returned
	)
	start := time.Now()
	for _, l := range lims {
		for range perLimiter {
			wg.Go(func() {
				for {
					mu.Lock()
					if left == 0 {
						mu.Unlock()
						return
					}
					left--
					mu.Unlock()
					if err := l.Wait(ctx, "fleet.vault.azure.net"); err != nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
						return
					}
					mu.Lock()
					arrived = append(arrived, time.Since(start))
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	elapsed := time.Since(start)
	if len(errs) > 0 {
		t.Fatalf("%d Waits failed, first: %v", len(errs), errs[0])
	}
	var granted uint64
	for i, l := range lims {
		st := l.Status()
		t.Logf("limiter %d: %+v", i, st)
		granted += st.Granted
		if st.Failures != 0 || st.FastFails != 0 || st.Open {
			t.Errorf("limiter %d failed: %+v", i, st)
		}
	}
	at := log.sorted()
	if granted != total || len(at) != total {
		t.Fatalf("granted %d, %d turns logged; want %d", granted, len(at), total)
	}
	if n := maxInWindow(at, window.Microseconds()); n > limit+burst {
		t.Errorf("%d turns within one window on Redis's clock, want at most Limit+Burst = %d", n, limit+burst)
	}
	// With callers always waiting, the turns after the first burst+1 are
	// one interval apart: the rate is Limit/Window, and never more. (Less
	// only if no caller reached Redis for the 23 turns booked ahead, on a
	// machine stalled for half a second: allowed here.)
	span := time.Duration(at[len(at)-1]-at[0]) * time.Microsecond
	want := time.Duration(total-burst-1) * window / limit
	if span < want || span > want+want/2 {
		t.Errorf("turns span %v on Redis's clock, want %v: rate %.1f/s, limit %d/s", span, want,
			float64(total-burst-1)/span.Seconds(), limit)
	}
	// On this machine's clock, the Waits cannot have been faster than the
	// budget; slower only by scheduling, bounded generously here.
	if elapsed < want-50*time.Millisecond || elapsed > 3*want+5*time.Second {
		t.Errorf("the %d Waits took %v, want about %v", total, elapsed, want)
	}
	slices.Sort(arrived)
	t.Logf("%d turns in %v; at most %d in a window on Redis's clock, %d on this machine's",
		total, elapsed, maxInWindow(at, window.Microseconds()), maxInWindow(arrived, window))
}

// The Lua script and gcra, the same algorithm in Go, agree on every
// answer of a sequence of calls on a real Redis, including a full
// bucket, a refused turn, an idle bucket and garbage in the key; and the
// key's TTL ends when the bucket is full again.
func TestLimiterLuaAgreesWithGo(t *testing.T) {
	srv := startRedis(t)
	c := limiterClient(t, srv.Addr())
	ctx := deadline(t)
	if err := gcraScript.Load(ctx, c).Err(); err != nil {
		t.Fatal(err)
	}
	type params struct{ interval, burst, maxWait int64 }
	for _, p := range []params{
		{100_000, 3, 500_000},
		{2_500, 40, 100_000},
		{1, 0, 0},
		{7_777, 1, 20_000},
	} {
		key := fmt.Sprintf("test:gcra:%d:%d:%d", p.interval, p.burst, p.maxWait)
		check := func(what string) reservation {
			t.Helper()
			// The script, GET and PTTL in one transaction: no time passes
			// between them, even for a 1 µs interval.
			var eval *redis.Cmd
			var get *redis.StringCmd
			var pttl *redis.DurationCmd
			if _, err := c.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
				eval = gcraScript.EvalSha(ctx, pipe, []string{key}, p.interval, p.burst, p.maxWait)
				get = pipe.Get(ctx, key)
				pttl = pipe.PTTL(ctx, key)
				return nil
			}); err != nil && !errors.Is(err, redis.Nil) {
				t.Fatal(err)
			}
			r, err := parseReservation(eval.Int64Slice())
			if err != nil {
				t.Fatal(err)
			}
			tat, wait, ok := gcra(r.old, r.now, p.interval, p.burst, p.maxWait)
			if ok != r.ok || wait != r.wait || tat != r.tat {
				t.Fatalf("%+v %s: Lua answered %+v; Go gcra(%d, %d) = %d, %d, %v", p, what, r, r.old, r.now, tat, wait, ok)
			}
			if r.ok {
				if stored := get.Val(); stored != strconv.FormatInt(r.tat, 10) {
					t.Fatalf("%+v %s: key holds %q, want %d", p, what, stored, r.tat)
				}
				full := (time.Duration(r.tat-r.now)*time.Microsecond + time.Millisecond - 1).Truncate(time.Millisecond)
				if ttl := pttl.Val(); ttl < 0 || ttl > full { // 0: its last millisecond
					t.Fatalf("%+v %s: TTL %v, want at most the %v until the bucket is full", p, what, ttl, full)
				}
			}
			return r
		}
		c.Del(ctx, key)
		first := check("first call")
		if !first.ok || first.wait != 0 || first.old != first.now {
			t.Fatalf("%+v: first call %+v, want a turn at once in an absent bucket", p, first)
		}
		refused := false
		for i := range 200 {
			r := check(fmt.Sprintf("call %d", i+2))
			if int64(i+1) <= p.burst && r.wait != 0 {
				t.Fatalf("%+v: call %d within the burst waits %dµs", p, i+2, r.wait)
			}
			if !r.ok {
				refused = true
				break
			}
		}
		if !refused && p.interval >= 1000 { // at 1 µs, calls come slower than turns
			t.Fatalf("%+v: 201 calls at once, none refused for MaxWait", p)
		}
		now := first.now
		for _, v := range []string{
			strconv.FormatInt(now-10_000_000, 10),           // idle for long
			strconv.FormatInt(now+p.maxWait/2, 10),          // half MaxWait ahead
			strconv.FormatInt(now+p.burst*p.interval, 10),   // a full burst ahead
			strconv.FormatInt(now+p.maxWait+p.interval, 10), // refused, unless burst covers it
			strconv.FormatInt(now+1e12, 10),                 // far ahead: garbage, or a clock gone back
			"garbage", "nan", "inf", "-5", "1e300", "",
		} {
			if err := c.Set(ctx, key, v, 0).Err(); err != nil {
				t.Fatal(err)
			}
			r := check("key " + strconv.Quote(v))
			if n, err := strconv.ParseInt(v, 10, 64); err != nil || n < 0 || n > now+1e11 {
				if r.old != r.now {
					t.Errorf("%+v: key %q read as %d, want now %d", p, v, r.old, r.now)
				}
			}
		}
	}
	// The Go function's own guard against garbage, which Lua answers
	// before Go sees it.
	if tat, wait, ok := gcra(-5, 1000, 10, 0, 100); tat != 1010 || wait != 0 || !ok {
		t.Errorf("gcra(-5, …) = %d, %d, %v", tat, wait, ok)
	}
	if tat, wait, ok := gcra(1000+100+10+1, 1000, 10, 0, 100); tat != 1010 || wait != 0 || !ok {
		t.Errorf("gcra(far ahead, …) = %d, %d, %v", tat, wait, ok)
	}
}

// gcra's answers, by hand.
func TestGCRA(t *testing.T) {
	const iv, burst, maxWait = 100, 2, 250
	cases := []struct {
		tat, now, newTAT, wait int64
		ok                     bool
	}{
		{0, 1000, 1100, 0, true},     // absent: a turn now
		{900, 1000, 1100, 0, true},   // idle: as absent
		{1000, 1000, 1100, 0, true},  // one turn taken: within the burst
		{1200, 1000, 1300, 0, true},  // burst×interval ahead: still at once
		{1250, 1000, 1350, 50, true}, // past the burst: wait
		{1450, 1000, 1550, 250, true},
		{1451, 1000, 1451, 251, false}, // over MaxWait: refused, unchanged
	}
	for _, c := range cases {
		tat, wait, ok := gcra(c.tat, c.now, iv, burst, maxWait)
		if tat != c.newTAT || wait != c.wait || ok != c.ok {
			t.Errorf("gcra(%d, %d) = %d, %d, %v; want %d, %d, %v", c.tat, c.now, tat, wait, ok, c.newTAT, c.wait, c.ok)
		}
	}
}

// An idle vault's key expires: nothing stays in Redis.
func TestLimiterKeyExpiresWhenIdle(t *testing.T) {
	srv := startRedis(t)
	c := limiterClient(t, srv.Addr())
	l := newTestLimiter(t, c, LimiterOptions{Limit: 20, Window: time.Second})
	ctx := deadline(t)
	if err := l.Wait(ctx, "Idle.Vault.Azure.Net"); err != nil {
		t.Fatal(err)
	}
	key := DefaultLimitPrefix + "idle.vault.azure.net"
	ttl, err := c.PTTL(ctx, key).Result()
	if err != nil || ttl <= 0 || ttl > 50*time.Millisecond {
		t.Fatalf("PTTL %s = %v, %v; want within the 50ms interval", key, ttl, err)
	}
	for c.Exists(ctx, key).Val() != 0 {
		if ctx.Err() != nil {
			t.Fatal("the key did not expire")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if keys := c.Keys(ctx, "*").Val(); len(keys) != 0 {
		t.Errorf("keys left: %q", keys)
	}
}

// Redis killed: Wait fails at once, classified; the breaker then fails
// Waits without asking Redis, its pause growing to its cap; once Redis is
// back on the same port, Wait works again.
func TestLimiterRedisKilled(t *testing.T) {
	srv := startRedis(t)
	const timeout = 250 * time.Millisecond
	l := newTestLimiter(t, limiterClient(t, srv.Addr()), LimiterOptions{
		Limit: 1000, Window: time.Second, Timeout: timeout, breakerMin: 100 * time.Millisecond, breakerMax: 400 * time.Millisecond,
	})
	ctx := deadline(t)
	const host = "killed.vault.azure.net"
	if err := l.Wait(ctx, host); err != nil {
		t.Fatal(err)
	}
	srv.stop()
	t0 := time.Now()
	err := l.Wait(ctx, host)
	took := time.Since(t0)
	var e *Error
	if !errors.As(err, &e) || e.Op != "limit" || !(errors.Is(err, ErrUnreachable) || errors.Is(err, ErrTimeout)) {
		t.Fatalf("Wait with Redis killed = %v, want an *Error of class ErrUnreachable or ErrTimeout", err)
	}
	if took > timeout+2*time.Second {
		t.Errorf("Wait took %v with Redis killed; Timeout %v", took, timeout)
	}
	// The breaker: many Waits, few Redis calls (one probe per pause).
	t0 = time.Now()
	const n = 2000
	for range n {
		err := l.Wait(ctx, host)
		if err == nil {
			t.Fatal("Wait succeeded with Redis killed")
		}
		if errors.Is(err, ErrBreakerOpen) && !errors.Is(err, ErrUnreachable) && !errors.Is(err, ErrTimeout) {
			t.Fatalf("breaker's error %v does not wrap the Redis failure", err)
		}
	}
	st := l.Status()
	probes := uint64(time.Since(t0)/(100*time.Millisecond)) + 1
	t.Logf("after %d Waits in %v: %+v", n, time.Since(t0), st)
	if st.Failures > 1+probes || st.FastFails < n-probes || !st.Open {
		t.Errorf("status %+v: want at most %d Redis calls and the rest failed fast", st, 1+probes)
	}
	// The pause doubles on failed probes up to its cap.
	for l.Status().Backoff < 400*time.Millisecond {
		if ctx.Err() != nil {
			t.Fatalf("the breaker's pause did not grow to 400ms: %+v", l.Status())
		}
		l.Wait(ctx, host)
		time.Sleep(20 * time.Millisecond)
	}
	srv.restart()
	for {
		err := l.Wait(ctx, host)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("Wait did not work again after Redis restarted: %v; %+v", err, l.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := l.Status(); st.Open || st.Granted != 2 {
		t.Errorf("status after recovery %+v", st)
	}
}

// A hung Redis (SIGSTOP): Wait gives up after about Timeout; after
// SIGCONT it works again.
func TestLimiterRedisHung(t *testing.T) {
	srv := startRedis(t)
	const timeout = 250 * time.Millisecond
	l := newTestLimiter(t, limiterClient(t, srv.Addr()), LimiterOptions{
		Limit: 1000, Window: time.Second, Timeout: timeout, breakerMin: 100 * time.Millisecond,
	})
	ctx := deadline(t)
	const host = "hung.vault.azure.net"
	if err := l.Wait(ctx, host); err != nil {
		t.Fatal(err)
	}
	if err := srv.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			srv.cmd.Process.Signal(syscall.SIGCONT)
		}
	}
	defer resume()
	t0 := time.Now()
	err := l.Wait(ctx, host)
	took := time.Since(t0)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("Wait with Redis hung = %v, want ErrTimeout", err)
	}
	if took > timeout+2*time.Second {
		t.Errorf("Wait took %v with Redis hung; Timeout %v", took, timeout)
	}
	if err := l.Wait(ctx, host); !errors.Is(err, ErrBreakerOpen) || !errors.Is(err, ErrTimeout) {
		t.Errorf("next Wait = %v, want ErrBreakerOpen wrapping ErrTimeout", err)
	}
	if st := l.Status(); st.Failures != 1 || st.FastFails != 1 {
		t.Errorf("status %+v", st)
	}
	resume()
	for {
		if err := l.Wait(ctx, host); err == nil {
			break
		} else if ctx.Err() != nil {
			t.Fatalf("Wait did not work again after SIGCONT: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A caller whose ctx ends while it waits for its reserved turn returns
// ctx's error at once, not at its turn; a turn further than MaxWait is
// not reserved at all.
func TestLimiterContextEndsWhileWaiting(t *testing.T) {
	srv := startRedis(t)
	c := limiterClient(t, srv.Addr())
	reserved := make(chan int64, 4)
	l := newTestLimiter(t, c, LimiterOptions{
		Limit: 1, Window: 30 * time.Second, Burst: -1, onGrant: func(at int64) { reserved <- at },
	})
	ctx := deadline(t)
	const host = "slow.vault.azure.net"
	if err := l.Wait(ctx, host); err != nil {
		t.Fatal(err)
	}
	<-reserved
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- l.Wait(wctx, host) }()
	<-reserved // the next turn, 30 s ahead, is booked
	t0 := time.Now()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Wait = %v, want context.Canceled", err)
		}
		if d := time.Since(t0); d > 10*time.Second {
			t.Errorf("Wait returned %v after its ctx was cancelled", d)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Wait did not return after its ctx was cancelled")
	}
	dctx, cancel2 := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel2()
	if err := l.Wait(dctx, host); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait with a 100ms deadline = %v", err)
	}
	st := l.Status()
	if st.Granted != 1 || st.Canceled != 2 || st.Failures != 0 || st.Open {
		t.Errorf("status %+v", st)
	}

	// MaxWait: with the next turn 30 s ahead and MaxWait 1 s, Wait books
	// nothing and waits to ask again.
	short := newTestLimiter(t, c, LimiterOptions{Limit: 1, Window: 30 * time.Second, Burst: -1, MaxWait: time.Second})
	const host2 = "slower.vault.azure.net"
	if err := short.Wait(ctx, host2); err != nil {
		t.Fatal(err)
	}
	key := DefaultLimitPrefix + host2
	before := c.Get(ctx, key).Val()
	dctx, cancel3 := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel3()
	if err := short.Wait(dctx, host2); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait beyond MaxWait = %v", err)
	}
	if st := short.Status(); st.Deferred < 1 || st.Granted != 1 {
		t.Errorf("status beyond MaxWait %+v", st)
	}
	if after := c.Get(ctx, key).Val(); after != before {
		t.Errorf("bucket changed from %s to %s by a turn beyond MaxWait", before, after)
	}
}

// Hostile vault strings are refused without a Redis call, and the error
// does not repeat them.
func TestLimiterRefusesInvalidVaults(t *testing.T) {
	// Nothing listens here: a Redis call would fail with ErrUnreachable.
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(freePort(t)), ContextTimeoutEnabled: true, MaxRetries: -1})
	defer c.Close()
	l := newTestLimiter(t, c, LimiterOptions{})
	bad := []string{
		"", " ", "my vault.vault.azure.net", "vault\x00.azure.net", "vault.azure.net\r\nFLUSHALL",
		"vault\t", "ключ.vault.azure.net", "vault/../x", "*", "kvsecrets:limit:*?",
		strings.Repeat("a", MaxHostLen+1), strings.Repeat("v.", 1<<19), "https://v.vault.azure.net/",
	}
	for _, v := range bad {
		err := l.Wait(t.Context(), v)
		if !errors.Is(err, ErrInvalidVault) {
			t.Errorf("Wait(%.40q) = %v, want ErrInvalidVault", v, err)
		}
		if err != nil && len(v) > 3 && strings.Contains(err.Error(), v) {
			t.Errorf("the error repeats the vault: %v", err)
		}
	}
	st := l.Status()
	if st.Invalid != uint64(len(bad)) || st.Failures != 0 || st.Granted != 0 || st.Open {
		t.Errorf("status %+v, want %d refused and no Redis call", st, len(bad))
	}
	// A plausible host does reach Redis (and fails here: go-redis may
	// wait for its dial until the call's deadline).
	if err := l.Wait(t.Context(), strings.Repeat("a", MaxHostLen-4)+":443"); !errors.Is(err, ErrUnreachable) && !errors.Is(err, ErrTimeout) {
		t.Errorf("Wait(valid host) = %v, want ErrUnreachable or ErrTimeout with nothing listening", err)
	}
}

func TestNewLimiterRefusesBadOptions(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	if _, err := NewLimiter(nil, nil); err == nil {
		t.Error("NewLimiter(nil client) succeeded")
	}
	if _, err := NewLimiter(c, nil); err != nil {
		t.Errorf("NewLimiter(nil options) = %v", err)
	}
	for _, c2 := range []struct {
		o     LimiterOptions
		field string
	}{
		{LimiterOptions{Limit: -1}, "Limit"},
		{LimiterOptions{Window: -time.Second}, "Window"},
		{LimiterOptions{Window: time.Microsecond}, "Window"},
		{LimiterOptions{Window: 48 * time.Hour}, "Window"},
		{LimiterOptions{Limit: 2000, Window: time.Millisecond}, "Limit"},
		{LimiterOptions{Burst: -2}, "Burst"},
		{LimiterOptions{Limit: 10, Burst: 11}, "Burst"},
		{LimiterOptions{Timeout: -1}, "Timeout"},
		{LimiterOptions{Timeout: 2 * time.Minute}, "Timeout"},
		{LimiterOptions{MaxWait: -1}, "MaxWait"},
		{LimiterOptions{MaxWait: time.Microsecond}, "MaxWait"},
		{LimiterOptions{Prefix: strings.Repeat("p", 300)}, "Prefix"},
	} {
		_, err := NewLimiter(c, &c2.o)
		if err == nil || !strings.Contains(err.Error(), "LimiterOptions."+c2.field) {
			t.Errorf("NewLimiter(%+v) = %v, want an error naming %s", c2.o, err, c2.field)
		}
	}
	l, err := NewLimiter(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	if l.cfg.interval != 2500 || l.cfg.burst != 40 || l.cfg.maxWait != 60_000_000 || l.cfg.timeout != DefaultLimitTimeout || l.cfg.prefix != DefaultLimitPrefix {
		t.Errorf("defaults %+v", l.cfg)
	}
	l, _ = NewLimiter(c, &LimiterOptions{Limit: 3, Window: 10 * time.Second, Burst: -1})
	if l.cfg.interval != 3_333_334 || l.cfg.burst != 0 {
		t.Errorf("interval %d (want Window/Limit rounded up), burst %d", l.cfg.interval, l.cfg.burst)
	}
}

// The real core: three Providers preloading from one vault through
// Limiters on one Redis stay within Limit+Burst a Window, so the vault,
// throttling at about that, answers no 429; nothing of a secret reaches
// Redis; with Redis killed, the Providers still read, counting the
// Limiter's failures.
func TestLimiterWithProviders(t *testing.T) {
	srv := startRedis(t)
	const (
		limit, burst = 10, 1
		window       = 2 * time.Second
		providers    = 3
		secrets      = 10
	)
	vault := kvtest.NewTestServer(t, nil)
	values := map[string]string{}
	var names []string
	for i := range secrets + 2 {
		name := fmt.Sprintf("Secret%02d", i)
		values[name] = fmt.Sprintf("value-%02d-%x", i, randomBytes(8))
		names = append(names, name)
	}
	if err := vault.Seed(values); err != nil {
		t.Fatal(err)
	}
	ctx := deadline(t)

	// Everything sent to Redis, through MONITOR.
	mon := startMonitor(t, srv.Addr())
	c := limiterClient(t, srv.Addr())

	var log grantLog
	var ps []*kvsecrets.Provider
	var lims []*Limiter
	for range providers {
		l := newTestLimiter(t, limiterClient(t, srv.Addr()), LimiterOptions{
			Limit: limit, Window: window, Burst: burst, Timeout: time.Second, onGrant: log.add,
		})
		p, err := kvsecrets.NewProvider(vault.URL(), vault.Credential(),
			&kvsecrets.Options{ClientOptions: vault.ClientOptions(), TTL: 24 * time.Hour, Limiter: l})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		ps, lims = append(ps, p), append(lims, l)
	}
	// Each Provider's first request meets the vault's 401 challenge and
	// gets a token: done before the measure, so that the time between a
	// turn and its request's arrival at the vault varies little.
	for i, p := range ps {
		if _, err := p.Get(ctx, names[secrets+1]); err != nil {
			t.Fatalf("Provider %d: %v", i, err)
		}
	}
	// The vault throttles at Limit+Burst+1 per its fixed window: the
	// bound is exact on Redis's clock, and one request more is allowed at
	// the vault for that time varying (by an interval, 200 ms, for an
	// extra request in a window).
	vault.SetThrottle(limit+burst+1, window)
	vault.ResetCounts()
	log.reset()
	var wg sync.WaitGroup
	preloadErrs := make([]error, providers)
	for i, p := range ps {
		wg.Go(func() { preloadErrs[i] = p.Preload(ctx, names[:secrets]...) })
	}
	wg.Wait()
	for i, err := range preloadErrs {
		if err != nil {
			t.Fatalf("Provider %d: Preload: %v", i, err)
		}
	}
	var gets []time.Time
	for _, r := range vault.RequestLog() {
		if r.Authorized && r.Op == "get" {
			gets = append(gets, r.Time)
		}
	}
	slices.SortFunc(gets, func(a, b time.Time) int { return a.Compare(b) })
	var offsets []time.Duration
	for _, g := range gets {
		offsets = append(offsets, g.Sub(gets[0]))
	}
	at := log.sorted()
	t.Logf("%d GETs over %v: at most %d in a window at the vault, %d on Redis's clock; vault counts %+v",
		len(gets), offsets[len(offsets)-1], maxInWindow(offsets, window), maxInWindow(at, window.Microseconds()), vault.Counts())
	if len(gets) != providers*secrets || len(at) != providers*secrets {
		t.Errorf("%d GETs, %d turns; want %d", len(gets), len(at), providers*secrets)
	}
	if n := maxInWindow(at, window.Microseconds()); n > limit+burst {
		t.Errorf("%d turns in a window on Redis's clock, want at most %d", n, limit+burst)
	}
	if n := maxInWindow(offsets, window); n > limit+burst+1 {
		t.Errorf("%d GETs in a window at the vault, want at most %d", n, limit+burst+1)
	}
	if c := vault.Counts(); c.Throttled != 0 {
		t.Errorf("the vault answered %d 429s", c.Throttled)
	}
	for i, p := range ps {
		st := p.Stats()
		// Every read request took a turn: the first Get's challenge and
		// its request with a token, then the secrets preloaded.
		if st.LimitedReads != secrets+2 || st.LimiterFailures != 0 || st.Throttled != 0 {
			t.Errorf("Provider %d stats: %+v", i, st)
		}
	}

	// Nothing of a secret went to Redis: MONITOR saw neither names nor
	// values, and the only key is the vault's bucket.
	if keys := c.Keys(ctx, "*").Val(); !slices.Equal(keys, []string{DefaultLimitPrefix + vault.Host()}) && len(keys) != 0 {
		t.Errorf("Redis keys %q", keys)
	}
	lines := mon.stop(ctx, c)
	for _, line := range lines {
		for name, value := range values {
			if strings.Contains(line, value) || strings.Contains(strings.ToLower(line), strings.ToLower(name)) {
				t.Errorf("Redis was sent %q", line)
			}
		}
	}
	if evals := countContaining(lines, `"evalsha"`); evals < providers*secrets {
		t.Errorf("MONITOR saw %d EVALSHAs in %d lines, want at least %d", evals, len(lines), providers*secrets)
	}

	// Redis killed: the Providers read by themselves.
	srv.stop()
	for i, p := range ps {
		v, err := p.Get(ctx, names[secrets])
		if err != nil || v != values[names[secrets]] {
			t.Errorf("Provider %d with Redis killed: Get = %q, %v", i, v, err)
		}
		if st := p.Stats(); st.LimiterFailures == 0 {
			t.Errorf("Provider %d: no LimiterFailures with Redis killed: %+v", i, st)
		}
		if st := lims[i].Status(); st.Failures+st.FastFails == 0 {
			t.Errorf("Limiter %d: %+v", i, st)
		}
	}
}

func countContaining(lines []string, sub string) int {
	n := 0
	for _, l := range lines {
		if strings.Contains(strings.ToLower(l), sub) {
			n++
		}
	}
	return n
}

// monitor records what Redis is sent, through MONITOR on a connection of
// its own.
type monitor struct {
	conn  net.Conn
	done  chan struct{}
	mu    sync.Mutex
	lines []string
	seen  chan struct{} // closed when the marker is seen
	mark  string
}

func startMonitor(t *testing.T, addr string) *monitor {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	m := &monitor{conn: conn, done: make(chan struct{}), seen: make(chan struct{}), mark: fmt.Sprintf("monitor-marker-%x", randomBytes(8))}
	if _, err := conn.Write([]byte("MONITOR\r\n")); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(conn)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	if !sc.Scan() || sc.Text() != "+OK" {
		t.Fatalf("MONITOR answered %q, %v", sc.Text(), sc.Err())
	}
	go func() {
		defer close(m.done)
		marked := false
		for sc.Scan() {
			m.mu.Lock()
			m.lines = append(m.lines, sc.Text())
			m.mu.Unlock()
			if !marked && strings.Contains(sc.Text(), m.mark) {
				marked = true
				close(m.seen)
			}
		}
	}()
	t.Cleanup(func() { conn.Close(); <-m.done })
	return m
}

// stop sends a marker through c, waits for MONITOR to show it, so that
// every command before it is recorded, and returns the lines.
func (m *monitor) stop(ctx context.Context, c *redis.Client) []string {
	if err := c.Echo(ctx, m.mark).Err(); err == nil {
		select {
		case <-m.seen:
		case <-ctx.Done():
		}
	}
	m.conn.Close()
	<-m.done
	return m.lines
}
