package hostile

// Review 17b: attacks on redisfanout.Limiter's redesigned breaker ("a
// caller's own deadline is not a Redis failure") against a real redis-server
// on 127.0.0.1. Counts and bounds only; wall time is a hang guard.

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/redisfanout"
	"github.com/redis/go-redis/v9"
)

// classify counts outcomes of Waits: granted, ctx errors, Redis *Errors.
type outcomes struct{ ok, ctxErr, redisErr, other atomic.Int64 }

func (o *outcomes) add(err error) {
	var re *redisfanout.Error
	switch {
	case err == nil:
		o.ok.Add(1)
	case errors.As(err, &re):
		o.redisErr.Add(1)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		o.ctxErr.Add(1)
	default:
		o.other.Add(1)
	}
}

// Promise (Wait: "It returns ctx's error if ctx ends first"; the breaker is
// for Redis failures): many CONCURRENT callers with deadlines of 0–3 ms on a
// healthy Redis, through a client whose pool is smaller than the crowd (so
// callers' deadlines end while waiting for a connection, and mid-command),
// and again right after SCRIPT FLUSH (the NOSCRIPT fallback path): no Redis
// failure is counted and the breaker never opens.
func TestLimiter2ConcurrentCallerDeadlinesNotFailures(t *testing.T) {
	needRedis(t)
	r := startRedis(t)
	c := redis.NewClient(&redis.Options{Addr: r.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1, PoolSize: 2})
	t.Cleanup(func() { c.Close() })
	l := newLim(t, c, &redisfanout.LimiterOptions{Limit: 1_000_000, Window: 10 * time.Second})
	const v = "crowd.vault.azure.net"
	if err := waitGuard(t, l, context.Background(), v, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	raw := rawClient(t, r)
	var o outcomes
	for round := range 6 {
		if round%2 == 1 {
			if err := raw.ScriptFlush(context.Background()).Err(); err != nil {
				t.Fatal(err)
			}
		}
		var wg sync.WaitGroup
		for i := range 200 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%30)*100*time.Microsecond)
				defer cancel()
				o.add(l.Wait(ctx, v))
			}()
		}
		wg.Wait()
	}
	st := l.Status()
	t.Logf("1200 concurrent Waits with 0–3 ms deadlines: ok %d, ctx %d, redis %d, other %d; status %+v",
		o.ok.Load(), o.ctxErr.Load(), o.redisErr.Load(), o.other.Load(), st)
	if st.Failures != 0 || st.Open || o.redisErr.Load() != 0 || o.other.Load() != 0 {
		t.Errorf("callers' own short deadlines on a healthy Redis counted as Redis failures: %d failures, %d Redis errors returned, breaker open %v (a caller's own deadline is not a Redis failure)",
			st.Failures, o.redisErr.Load(), st.Open)
	}
	// and the breaker really is closed: a patient caller gets a turn from Redis
	if err := waitGuard(t, l, context.Background(), v, 10*time.Second); err != nil {
		t.Errorf("a patient Wait after the crowd: %v", err)
	}
}

// Promise (Wait; MaxWait): a Wait that defers (turn further than MaxWait) and
// whose caller's deadline ends during the pause returns ctx's error; neither a
// failure nor a breaker.
func TestLimiter2DeadlineDuringDeferral(t *testing.T) {
	needRedis(t)
	r := startRedis(t)
	l := newLim(t, limClient(t, r), &redisfanout.LimiterOptions{Limit: 1, Window: 10 * time.Second, Burst: -1, MaxWait: time.Second})
	const v = "defer.vault.azure.net"
	if err := waitGuard(t, l, context.Background(), v, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	var o outcomes
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(50+i*10)*time.Millisecond)
			defer cancel()
			o.add(l.Wait(ctx, v))
		}()
	}
	wg.Wait()
	st := l.Status()
	t.Logf("deferred crowd: ok %d ctx %d redis %d other %d; %+v", o.ok.Load(), o.ctxErr.Load(), o.redisErr.Load(), o.other.Load(), st)
	if st.Failures != 0 || st.Open || o.redisErr.Load() != 0 || o.other.Load() != 0 {
		t.Errorf("deadlines ending during deferral pauses counted as Redis failures: %+v", st)
	}
	if o.ok.Load() > 1 {
		t.Errorf("%d turns granted within 0.55 s with Limit 1 per 10 s, Burst none", o.ok.Load())
	}
}

// Promise: still fails fast when Redis is really down (hung, SIGSTOP), even
// while most callers have deadlines shorter than Timeout: the callers with
// longer deadlines get an *Error (not a hang to their deadline), the breaker
// opens, and later Waits fail at once (FastFails).
func TestLimiter2HungRedisWithShortDeadlineCrowd(t *testing.T) {
	needRedis(t)
	r := startRedis(t)
	l := newLim(t, limClient(t, r), &redisfanout.LimiterOptions{Timeout: 200 * time.Millisecond})
	const v = "hung2.vault.azure.net"
	if err := waitGuard(t, l, context.Background(), v, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	r.signal(syscall.SIGSTOP)
	defer r.signal(syscall.SIGCONT)
	var short, long outcomes
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%5 == 0 {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				long.add(l.Wait(ctx, v))
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			defer cancel()
			short.add(l.Wait(ctx, v))
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("Waits with Redis hung still blocked after 20 s (Timeout 200 ms)")
	}
	st := l.Status()
	t.Logf("hung Redis: long ok %d ctx %d redis %d; short ok %d ctx %d redis %d; %+v",
		long.ok.Load(), long.ctxErr.Load(), long.redisErr.Load(), short.ok.Load(), short.ctxErr.Load(), short.redisErr.Load(), st)
	if long.redisErr.Load() != 20 {
		t.Errorf("%d of 20 Waits with 30 s deadlines got a Redis error with Redis hung (want all: fail within Timeout)", long.redisErr.Load())
	}
	if !st.Open && st.Failures == 0 {
		t.Errorf("Redis hung, yet no failure counted and the breaker closed")
	}
	t0 := time.Now()
	err := l.Wait(context.Background(), v)
	if !errors.Is(err, redisfanout.ErrBreakerOpen) || time.Since(t0) > 100*time.Millisecond {
		t.Errorf("Wait right after, Redis still hung: %v after %v, want ErrBreakerOpen at once", err, time.Since(t0))
	}
	r.signal(syscall.SIGCONT)
	eventually(t, 40*time.Second, "the breaker to close after SIGCONT", func() bool {
		return l.Wait(context.Background(), v) == nil
	})
}

// Through a Provider: 100 concurrent cold Gets with 1–5 ms deadlines on a
// Provider whose Limiter is redisfanout's over a healthy Redis. The callers
// all give up; the Limiter must count no Redis failure, open no breaker, and
// the Provider no LimiterFailures; a later patient read is granted a turn.
func TestLimiter2ProviderShortDeadlinesNoBreaker(t *testing.T) {
	needRedis(t)
	r := startRedis(t)
	l := newLim(t, limClient(t, r), nil)
	srv := newVault(t)
	var names []string
	for i := range 100 {
		n := "S" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		names = append(names, n)
		if _, err := srv.SetSecret(n, "value-"+n, nil); err != nil {
			t.Fatal(err)
		}
	}
	p := newProvider(t, srv, &kvsecrets.Options{Limiter: l})
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(1+i%5)*time.Millisecond)
			defer cancel()
			p.Get(ctx, n)
		}()
	}
	wg.Wait()
	time.Sleep(500 * time.Millisecond) // abandoned reads end
	st, ps := l.Status(), p.Stats()
	t.Logf("limiter %+v; provider LimitedReads %d LimiterFailures %d", st, ps.LimitedReads, ps.LimiterFailures)
	if st.Failures != 0 || st.Open || ps.LimiterFailures != 0 {
		t.Errorf("callers' short deadlines through a Provider opened the breaker or counted failures: Failures %d Open %v LimiterFailures %d", st.Failures, st.Open, ps.LimiterFailures)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if got, err := p.Get(ctx, names[0]); err != nil || got != "value-"+names[0] {
		t.Errorf("patient Get after: %q, %v", got, err)
	}
	if st := l.Status(); st.Open || st.Granted == 0 {
		t.Errorf("after a patient read: %+v", st)
	}
}
