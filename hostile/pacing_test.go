package hostile_test

// Review 17: attacks on request pacing, fleet restarts and Options.Limiter
// (README "A fleet restarting at once", the Defaults rows MaxReadRate,
// Limiter and FetchTimeout, the failure table's 429 row, the Options, Stats
// and Limiter docs). Every test runs a kvtest.NewInProcess vault inside a
// testing/synctest bubble, so all times below are on the bubble's fake clock
// and exact: no wall-clock assertion.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

// ---- helpers ---------------------------------------------------------------

type limCall struct {
	vault string
	err   error
}

// fakeLimiter is a user Limiter whose behaviour each test chooses.
type fakeLimiter struct {
	mu    sync.Mutex
	calls []limCall
	wait  func(ctx context.Context, vault string) error // nil: grant at once
}

func (l *fakeLimiter) Wait(ctx context.Context, vault string) error {
	l.mu.Lock()
	w := l.wait
	l.mu.Unlock()
	var err error
	if w != nil {
		err = w(ctx, vault)
	}
	l.mu.Lock()
	l.calls = append(l.calls, limCall{vault, err})
	l.mu.Unlock()
	return err
}

func (l *fakeLimiter) set(w func(ctx context.Context, vault string) error) {
	l.mu.Lock()
	l.wait = w
	l.mu.Unlock()
}

func (l *fakeLimiter) snapshot() []limCall {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]limCall(nil), l.calls...)
}

// granted sums the turns of Waits that returned nil.
func (l *fakeLimiter) granted() (waits, turns int) {
	for _, c := range l.snapshot() {
		if c.err == nil {
			waits++
			turns++
		}
	}
	return
}

func seedN(t *testing.T, v *kvtest.Server, prefix string, n int) []string {
	t.Helper()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("%s%d", prefix, i)
		set(t, v, names[i], "value-"+names[i])
	}
	return names
}

// authorizedGets returns the times of the vault's authorised GETs, in order.
func authorizedGets(v *kvtest.Server) []time.Time {
	var ts []time.Time
	for _, r := range v.RequestLog() {
		if r.Authorized && r.Op == "get" {
			ts = append(ts, r.Time)
		}
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
	return ts
}

// maxInWindow is the most timestamps in any half-open window [t, t+w).
func maxInWindow(ts []time.Time, w time.Duration) int {
	best, j := 0, 0
	for i := range ts {
		for j < len(ts) && ts[j].Sub(ts[i]) < w {
			j++
		}
		best = max(best, j-i)
	}
	return best
}

// throttleOnce makes the pacer meet a 429: the next authorised request is
// answered 429 (with retryAfter, if not ""), read through a throwaway name.
// It returns when that 429 has been answered, the pacer now pausing.
//
// The Provider is made busy first (12 reads, more than the first burst,
// so that some queue for their turn): a busy Provider pauses a whole
// window after a 429, an idle one backs off from 1 s (README, "A fleet
// restarting at once").
func throttleOnce(t *testing.T, v *kvtest.Server, p *kvsecrets.Provider, retryAfter string) {
	t.Helper()
	busy := seedN(t, v, "Busy", 12)
	if err := p.Preload(t.Context(), busy...); err != nil {
		t.Fatal(err)
	}
	f := kvtest.Throttled
	f.RetryAfter = retryAfter
	before := v.Counts().Faulted
	v.FailNext(1, f)
	set(t, v, "Trigger429", "t")
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		p.Get(ctx, "Trigger429") // its outcome is not the point
	}()
	for start := time.Now(); v.Counts().Faulted == before && time.Since(start) < time.Second; {
		time.Sleep(time.Millisecond) // its turn comes within 10 ms at 100 a second
	}
	synctest.Wait()
	if v.Counts().Faulted != before+1 {
		t.Fatalf("the 429 was not answered (faulted %d -> %d)", before, v.Counts().Faulted)
	}
}

// ---- cached reads are never paced and never reach the Limiter ---------------

// Promise (README "Pacing, on by default"; Defaults row MaxReadRate): "never
// a cached read". A cached secret is served, in zero time, while the pacer is
// paused after a 429; the paused cold read comes back 10–12.5 s later.
func TestPaceCachedServedDuring429Pause(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		set(t, v, "A", "a")
		set(t, v, "B", "b")
		if _, err := p.Get(t.Context(), "A"); err != nil {
			t.Fatal(err)
		}
		throttleOnce(t, v, p, "")
		t429 := time.Now()
		type res struct {
			err error
			at  time.Time
		}
		done := make(chan res, 1)
		go func() {
			_, err := p.Get(context.Background(), "B")
			done <- res{err, time.Now()}
		}()
		synctest.Wait()
		select {
		case r := <-done:
			t.Fatalf("cold read of B was not paused after the 429: %v at +%v", r.err, r.at.Sub(t429))
		default:
		}
		t0 := time.Now()
		for range 1000 {
			if got, err := p.Get(t.Context(), "A"); err != nil || got != "a" {
				t.Fatalf("cached Get during the pause: %q, %v", got, err)
			}
		}
		if d := time.Since(t0); d != 0 {
			t.Fatalf("1000 cached reads during a pause took %v of fake time", d)
		}
		r := <-done
		if r.err != nil {
			t.Fatalf("B after the pause: %v", r.err)
		}
		if d := r.at.Sub(t429); d < 10*time.Second || d > 12500*time.Millisecond+time.Second {
			t.Errorf("B answered %v after the 429, want 10 s plus up to a quarter at random", d)
		}
		if st := p.Stats(); st.Throttled != 1 {
			t.Errorf("Stats.Throttled = %d, want 1", st.Throttled)
		}
	})
}

// Promise: cached reads never go to the Limiter, and are served while the
// Limiter blocks; a cold read waiting on the Limiter counts against its
// caller's context, and, its caller gone before it was sent, is never sent.
func TestPaceCachedNeverReachLimiterAndAbandonedNotSent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := &fakeLimiter{}
		v, p, _ := env(t, &kvsecrets.Options{Limiter: lim})
		set(t, v, "A", "a")
		set(t, v, "B", "b")
		if _, err := p.Get(t.Context(), "A"); err != nil {
			t.Fatal(err)
		}
		n0 := len(lim.snapshot())
		var sawCancel atomic.Int32
		lim.set(func(ctx context.Context, _ string) error {
			<-ctx.Done() // a Limiter whose budget is spent for ever, but honest about ctx
			sawCancel.Add(1)
			return ctx.Err()
		})
		t0 := time.Now()
		for range 1000 {
			if _, err := p.Get(t.Context(), "A"); err != nil {
				t.Fatal(err)
			}
		}
		if time.Since(t0) != 0 || len(lim.snapshot()) != n0 {
			t.Fatalf("cached reads reached the Limiter (%d calls) or waited (%v)", len(lim.snapshot())-n0, time.Since(t0))
		}
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		t1 := time.Now()
		_, err := p.Get(ctx, "B")
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("cold Get with the Limiter blocking: %v, want the caller's deadline", err)
		}
		if d := time.Since(t1); d != 5*time.Second {
			t.Errorf("cold Get returned after %v, want at its 5 s deadline", d)
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if sawCancel.Load() == 0 {
			t.Errorf("the Limiter's Wait never saw its context end after every caller gave up")
		}
		if n := v.SecretRequests("B"); n != 0 {
			t.Errorf("a read whose caller gave up before it was sent was sent: %d GETs of B", n)
		}
		lim.set(nil)
		if got, err := p.Get(t.Context(), "B"); err != nil || got != "b" {
			t.Errorf("B once the Limiter grants: %q, %v", got, err)
		}
		if got, _ := p.Get(t.Context(), "A"); got != "a" {
			t.Errorf("A lost: %q", got)
		}
	})
}

// Promise (failure table, 429 row): "one whose callers all gave up before it
// was sent is never sent" — for the pacer's pause, Get and Preload.
func TestPaceAbandonedDuringPauseNeverSent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		seedN(t, v, "C", 5)
		throttleOnce(t, v, p, "")
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		t0 := time.Now()
		_, err := p.Get(ctx, "C0")
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(t0) != 2*time.Second {
			t.Fatalf("Get during the pause: %v after %v, want DeadlineExceeded at 2 s", err, time.Since(t0))
		}
		ctx, cancel = context.WithTimeout(t.Context(), 3*time.Second)
		err = p.Preload(ctx, "C1", "C2", "C3", "C4")
		cancel()
		if err == nil {
			t.Fatalf("Preload during the pause succeeded before the pause ended")
		}
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		for _, n := range []string{"C0", "C1", "C2", "C3", "C4"} {
			if got := v.SecretRequests(n); got != 0 {
				t.Errorf("%s: %d GETs sent after every caller gave up during the pause", n, got)
			}
		}
	})
}

// Promise (Defaults row FetchTimeout; Options.FetchTimeout): "it starts when
// the read's first request is sent, not while it waits for the pacer".
// With FetchTimeout 1 s, a read queued behind a 10 s pause still succeeds.
func TestPaceFetchTimeoutStartsAtSend(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{FetchTimeout: time.Second})
		set(t, v, "B", "b")
		throttleOnce(t, v, p, "")
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		t0 := time.Now()
		got, err := p.Get(ctx, "B")
		if err != nil || got != "b" {
			t.Fatalf("read queued behind the pause with FetchTimeout 1 s: %q, %v after %v", got, err, time.Since(t0))
		}
		if time.Since(t0) < 9*time.Second {
			t.Errorf("answered after %v: the pause was not honoured", time.Since(t0))
		}
	})
}

// Same promise for the Limiter: it is waited in before the request is sent,
// so its wait must not count against FetchTimeout either.
func TestPaceFetchTimeoutExcludesLimiterWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := &fakeLimiter{}
		lim.set(func(ctx context.Context, _ string) error {
			select {
			case <-time.After(5 * time.Second): // the fleet's budget: a 5 s queue
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
		v, p, _ := env(t, &kvsecrets.Options{FetchTimeout: time.Second, Limiter: lim})
		set(t, v, "B", "b")
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		got, err := p.Get(ctx, "B")
		if err != nil || got != "b" {
			t.Fatalf("a read whose Limiter turn comes after 5 s, FetchTimeout 1 s, caller 1 min: %q, %v", got, err)
		}
	})
}

// Promise: "a start-up whose deadline allows the vault's rate finishes", with
// a FetchTimeout far shorter than the start-up; and the pacer's start-up
// shape: the first request alone, 3 more at once, then 100 a second.
func TestPacePreloadWithinRateFinishes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{FetchTimeout: 2 * time.Second})
		v.SetLatency(50 * time.Millisecond)
		names := seedN(t, v, "P", 600) // at 100/s: about 6 s, three FetchTimeouts
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		t0 := time.Now()
		if err := p.Preload(ctx, names...); err != nil {
			t.Fatalf("Preload of 600 secrets, deadline 20 s, FetchTimeout 2 s: %v", err)
		}
		el := time.Since(t0)
		ts := authorizedGets(v)
		if len(ts) != 600 {
			t.Errorf("%d authorised GETs for 600 secrets", len(ts))
		}
		if len(ts) > 1 && ts[1].Sub(ts[0]) < 50*time.Millisecond {
			t.Errorf("second request %v after the first: the first did not go alone", ts[1].Sub(ts[0]))
		}
		if m := maxInWindow(ts, time.Second); m > 105 {
			t.Errorf("%d requests in one second at start-up, want about 100 (+4)", m)
		}
		st := p.Stats()
		t.Logf("preload took %v; max/1s %d; %+v", el, maxInWindow(ts, time.Second), st)
		if st.PacedReads == 0 {
			t.Errorf("Stats.PacedReads = 0 although 600 reads queued")
		}
		if st.ReadRate <= 0 || st.ReadRate > kvsecrets.DefaultMaxReadRate {
			t.Errorf("Stats.ReadRate = %v", st.ReadRate)
		}
	})
}

// Promise (MaxReadRate caps the requests a second): with MaxReadRate 20 and
// requests queueing for two minutes (the rate doubling every 10 s), no 10 s
// holds more than 20×10 requests plus the start-up's 4.
func TestPaceMaxReadRateCaps(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{MaxReadRate: 20})
		names := seedN(t, v, "R", 2400)
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
		defer cancel()
		if err := p.Preload(ctx, names...); err != nil {
			t.Fatal(err)
		}
		ts := authorizedGets(v)
		if m := maxInWindow(ts, 10*time.Second); m > 20*10+4 {
			t.Errorf("%d requests in 10 s with MaxReadRate 20", m)
		}
		if m := maxInWindow(ts, time.Second); m > 20+4 {
			t.Errorf("%d requests in 1 s with MaxReadRate 20", m)
		}
		if st := p.Stats(); st.ReadRate > 20 {
			t.Errorf("Stats.ReadRate %v above MaxReadRate 20", st.ReadRate)
		}
	})
}

// Promise (A fleet restarting at once): a 429 cuts the rate; after a minute
// without queueing or throttling it is back to 100 a second; Stats.Throttled
// counts exactly the 429s the vault answered.
//
// Broke in review 17 (fixed since): two idle minutes after the 429, Stats.ReadRate still reads 15 (the
// cut rate) — "requests a second the Provider allows itself now" — while the
// Provider then sends 185 requests in one second: neither the counter nor
// the behaviour is "back to 100 a second".
func TestPace429CutsThenRecovers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		names := seedN(t, v, "Q", 300)
		if err := p.Preload(t.Context(), names[:150]...); err != nil {
			t.Fatal(err)
		}
		before := p.Stats().ReadRate
		v.FailNext(1, kvtest.Throttled)
		if err := p.Preload(t.Context(), names[150:]...); err != nil {
			t.Fatalf("Preload across one 429: %v", err)
		}
		after := p.Stats()
		if after.ReadRate > 0.85*before+1e-9 {
			t.Errorf("ReadRate %v after a 429 from %v: not cut by 15%%", after.ReadRate, before)
		}
		if after.Throttled != 1 || int64(after.Throttled) != v.Counts().Faulted {
			t.Errorf("Stats.Throttled %d, vault answered %d 429s", after.Throttled, v.Counts().Faulted)
		}
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		idle := p.Stats().ReadRate
		// Behaviour, whatever Stats says: 200 new reads at 100 a second take
		// about 2 s; at the cut rate (about 15) they would take 13 s.
		more := seedN(t, v, "Q2-", 200)
		v.ResetCounts()
		t0 := time.Now()
		if err := p.Preload(t.Context(), more...); err != nil {
			t.Fatal(err)
		}
		el := time.Since(t0)
		m := maxInWindow(authorizedGets(v), time.Second)
		t.Logf("ReadRate before %v, after the 429 %v, after 2 idle minutes %v; 200 reads then took %v (max %d in 1 s); ReadRate now %v",
			before, after.ReadRate, idle, el, m, p.Stats().ReadRate)
		if idle != 100 {
			t.Errorf("Stats.ReadRate %v two idle minutes after the 429, want back to 100 a second", idle)
		}
		if m < 90 || m > 105 {
			t.Errorf("two idle minutes after the 429 the Provider sent %d requests in one second (took %v for 200), want back to 100 a second", m, el)
		}
	})
}

// Promise (README: "After a minute without queueing or throttling it is back
// to 100 a second"). A lone Provider whose start-up queued (so its rate
// doubled), then idle for two minutes, must be back to 100 a second.
//
// Broke in review 17 (fixed since): Stats.ReadRate reads 200 and 200 cold reads go in the same instant.
func TestPaceIdleRateBackTo100(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		if err := p.Preload(t.Context(), seedN(t, v, "Q", 150)...); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		idle := p.Stats().ReadRate
		more := seedN(t, v, "Q2-", 200)
		v.ResetCounts()
		t0 := time.Now()
		if err := p.Preload(t.Context(), more...); err != nil {
			t.Fatal(err)
		}
		m := maxInWindow(authorizedGets(v), time.Second)
		t.Logf("after 2 idle minutes: ReadRate %v; 200 reads took %v, %d in one second", idle, time.Since(t0), m)
		if idle != 100 {
			t.Errorf("Stats.ReadRate %v after two minutes without queueing or throttling, want 100", idle)
		}
		if m > 105 {
			t.Errorf("%d requests in one second after two idle minutes, want back to 100 a second", m)
		}
	})
}

// Promise: a 429 storm never loses a cached value (stale served up to
// MaxStale), and the cold reads come back when the throttle lifts.
func TestPaceThrottleStormKeepsCache(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{TTL: time.Minute})
		names := seedN(t, v, "K", 20)
		if err := p.Preload(t.Context(), names...); err != nil {
			t.Fatal(err)
		}
		v.FailFor(30*time.Minute, kvtest.Throttled)
		for range 30 {
			time.Sleep(time.Minute)
			for _, n := range names {
				if got, err := p.Get(t.Context(), n); err != nil || got != "value-"+n {
					t.Fatalf("%s during a 429 storm: %q, %v", n, got, err)
				}
			}
		}
		time.Sleep(5 * time.Minute)
		synctest.Wait()
		set(t, v, "Late", "late")
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		defer cancel()
		if got, err := p.Get(ctx, "Late"); err != nil || got != "late" {
			t.Errorf("cold read 5 min after the storm: %q, %v", got, err)
		}
	})
}

// ---- Close -----------------------------------------------------------------

// Promise: Close ends every wait for the pacer promptly with ErrClosed.
func TestPaceCloseEndsPacerWaits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		names := seedN(t, v, "W", 20)
		throttleOnce(t, v, p, "")
		errs := make(chan error, len(names)+1)
		for _, n := range names {
			go func() { _, err := p.Get(context.Background(), n); errs <- err }()
		}
		go func() { errs <- p.Preload(context.Background(), names...) }()
		synctest.Wait()
		t0 := time.Now()
		p.Close()
		for range len(names) + 1 {
			if err := <-errs; !errors.Is(err, kvsecrets.ErrClosed) {
				t.Errorf("a read waiting for the pacer at Close: %v, want ErrClosed", err)
			}
		}
		if d := time.Since(t0); d != 0 {
			t.Errorf("waits ended %v after Close", d)
		}
		if n := v.Counts().Total; n > 3 {
			t.Logf("requests: %d", n)
		}
	})
}

// Promise: Close ends every wait in an (honest) Limiter promptly with ErrClosed.
func TestPaceCloseEndsLimiterWaits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := &fakeLimiter{}
		lim.set(func(ctx context.Context, _ string) error { <-ctx.Done(); return ctx.Err() })
		v, p, _ := env(t, &kvsecrets.Options{Limiter: lim})
		names := seedN(t, v, "L", 10)
		errs := make(chan error, len(names))
		for _, n := range names {
			go func() { _, err := p.Get(context.Background(), n); errs <- err }()
		}
		synctest.Wait()
		t0 := time.Now()
		p.Close()
		for range names {
			if err := <-errs; !errors.Is(err, kvsecrets.ErrClosed) {
				t.Errorf("a read waiting in the Limiter at Close: %v, want ErrClosed", err)
			}
		}
		if d := time.Since(t0); d != 0 {
			t.Errorf("waits ended %v after Close", d)
		}
		if n := v.Counts().Total; n != 0 {
			t.Errorf("%d requests sent although the Limiter never granted a turn", n)
		}
	})
}

// runChild runs this test binary's test name in a child process with
// KVSECRETS_REVIEW17_CHILD=name, for attacks that may crash the process.
func runChild(t *testing.T, name string) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+name+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "KVSECRETS_REVIEW17_CHILD="+name)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func isChild(name string) bool { return os.Getenv("KVSECRETS_REVIEW17_CHILD") == name }

func head(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// A Limiter that ignores ctx (blocks until released, then grants). The caller
// must still return by its own deadline; a caller waiting at Close must get
// ErrClosed at once. Close cannot end a goroutine stuck in user code, so it
// may wait for it (FINDING, not held as a promise); but when the Limiter
// finally grants the turn after Close, the Provider must not crash.
//
// Broke in review 17 (fixed since): the turn granted after Close makes the Provider's read goroutine
// dereference nil (refresh.go runFlight) and the whole process dies: Close's
// "reads in flight are canceled" ends in a panic instead.
func TestPaceLimiterIgnoringCtx(t *testing.T) {
	if !isChild(t.Name()) {
		out, err := runChild(t, t.Name())
		if strings.Contains(out, "panic:") || !strings.Contains(out, "CHILD-DONE") {
			i := strings.Index(out, "panic:")
			t.Fatalf("a Limiter that grants a turn after Close crashes the process (exit %v):\n%s", err, head(out[max(i, 0):], 1200))
		}
		t.Logf("child:\n%s", head(out, 3000))
		return
	}
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		lim := &fakeLimiter{}
		lim.set(func(context.Context, string) error { <-release; return nil })
		v, p, _ := env(t, &kvsecrets.Options{Limiter: lim})
		set(t, v, "H", "h")
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		t0 := time.Now()
		_, err := p.Get(ctx, "H")
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(t0) != 3*time.Second {
			t.Errorf("Get with a Limiter ignoring ctx: %v after %v, want the caller's 3 s deadline", err, time.Since(t0))
		}
		errc := make(chan error, 1)
		go func() { _, err := p.Get(context.Background(), "H"); errc <- err }()
		synctest.Wait()
		closed := make(chan struct{})
		go func() { p.Close(); close(closed) }()
		synctest.Wait()
		select {
		case err := <-errc:
			if !errors.Is(err, kvsecrets.ErrClosed) {
				t.Errorf("caller at Close: %v, want ErrClosed", err)
			}
		default:
			t.Errorf("a caller waiting (through a Limiter ignoring ctx) was not released by Close")
		}
		time.Sleep(time.Hour)
		synctest.Wait()
		select {
		case <-closed:
			t.Logf("Close returned without waiting for the stuck Limiter")
		default:
			t.Logf("FINDING (not a documented promise): Close waits for a Limiter.Wait that ignores ctx (still blocked after 1 h)")
		}
		close(release) // the Limiter grants, after Close
		<-closed
		if n := v.SecretRequests("H"); n != 0 {
			t.Errorf("%d GETs sent after Close, once the Limiter let go", n)
		}
		fmt.Println("CHILD-DONE")
	})
}

// The same crash without Close, from a Limiter whose call is bounded but does
// not watch ctx (a store client whose timeout is its own, such as a go-redis
// client without ContextTimeoutEnabled, which the redisfanout doc names):
// the caller gives up at 0.5 s, a second caller reads the secret (a new read,
// granted at once), and the first Wait returns nil at 2 s.
//
// Broke in review 17 (fixed since): the process dies with a nil pointer dereference in the Provider
// (refresh.go runFlight). The Limiter doc asks Wait to return ctx's error if
// ctx ends first, but a late nil from user code must not crash a service.
// Also seen: the abandoned read is then sent, although all its callers gave
// up before it was sent (failure table, 429 row) — with this contract-bending
// Limiter only, so reported as a finding, not held as a break.
func TestLimLateGrantAfterCallerGaveUpNoPanic(t *testing.T) {
	if !isChild(t.Name()) {
		out, err := runChild(t, t.Name())
		if strings.Contains(out, "panic:") || !strings.Contains(out, "CHILD-DONE") {
			i := strings.Index(out, "panic:")
			t.Fatalf("a Limiter turn granted after its caller gave up (and the secret was read again) crashes the process (exit %v):\n%s", err, head(out[max(i, 0):], 1200))
		}
		t.Logf("child:\n%s", head(out, 2000))
		return
	}
	for range 30 { // the crash depends on goroutine order: a few tries make it certain
		lateGrantOnce(t)
	}
	fmt.Println("CHILD-DONE")
}

func lateGrantOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		lim := &fakeLimiter{}
		lim.set(func(context.Context, string) error {
			if calls.Add(1) == 1 {
				time.Sleep(2 * time.Second) // a bounded call that does not watch ctx
			}
			return nil
		})
		v, p, _ := env(t, &kvsecrets.Options{Limiter: lim})
		set(t, v, "H", "h")
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		_, err := p.Get(ctx, "H")
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("first caller: %v", err)
		}
		if got, err := p.Get(t.Context(), "H"); err != nil || got != "h" {
			t.Errorf("second caller: %q, %v", got, err)
		}
		time.Sleep(3 * time.Second)
		synctest.Wait()
		fmt.Printf("abandoned read sent? GETs of H: %d\n", v.SecretRequests("H"))
	})
}

// ---- hostile Retry-After ---------------------------------------------------

// Promise: Retry-After is honoured, but a hostile one (huge, negative,
// garbage, far-future date) cannot stall a Provider for ever or panic it.
// The documented ceiling for honouring Retry-After is 10 minutes
// (Options.RetryBackoff); with the pause's jitter of up to a quarter, a read
// must be answered within 12.5 min (+1 min slack) of the 429.
func TestPaceHostileRetryAfter(t *testing.T) {
	for _, ra := range []string{
		"999999999", "99999999999999999999999999", "-5", "-999999999999", "abc", "NaN", "1e9", "0x7fffffff",
		"Fri, 31 Dec 9999 23:59:59 GMT", "Thu, 01 Jan 1970 00:00:00 GMT", "0", " 10 ", "3600", "\t", "10, 20",
	} {
		t.Run(fmt.Sprintf("%q", ra), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				v, p, _ := env(t, nil)
				set(t, v, "A", "a")
				set(t, v, "B", "b")
				if _, err := p.Get(t.Context(), "A"); err != nil {
					t.Fatal(err)
				}
				throttleOnce(t, v, p, ra)
				t429 := time.Now()
				if got, err := p.Get(t.Context(), "A"); err != nil || got != "a" {
					t.Fatalf("cached A after the 429: %q, %v", got, err)
				}
				ctx, cancel := context.WithTimeout(t.Context(), 24*time.Hour)
				defer cancel()
				got, err := p.Get(ctx, "B")
				d := time.Since(t429)
				if err != nil || got != "b" {
					t.Fatalf("B after a 429 with Retry-After %q: %q, %v after %v", ra, got, err, d)
				}
				if d > 13*time.Minute+30*time.Second {
					t.Errorf("Retry-After %q stalled every request of the Provider for %v (documented ceiling 10 min)", ra, d)
				}
				t.Logf("Retry-After %q: next read answered %v after the 429", ra, d)
			})
		})
	}
}

// Retry-After on a background refresh (the "background: as above, honouring
// Retry-After" column): a hostile value must not stop refreshes for ever; a
// rotation is picked up within the 10-minute ceiling plus backoff.
func TestPaceHostileRetryAfterOnRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{TTL: time.Minute, DisableJitter: true})
		set(t, v, "A", "a1")
		if _, err := p.Get(t.Context(), "A"); err != nil {
			t.Fatal(err)
		}
		f := kvtest.Throttled
		f.RetryAfter = "Fri, 31 Dec 9999 23:59:59 GMT"
		v.FailNext(1, f)
		set(t, v, "A", "a2")
		deadline := time.Now().Add(20 * time.Minute)
		for time.Now().Before(deadline) {
			time.Sleep(10 * time.Second)
			if got, _ := p.Get(t.Context(), "A"); got == "a2" {
				t.Logf("rotation picked up %v after the far-future Retry-After", time.Until(deadline.Add(-20*time.Minute))*-1)
				return
			}
		}
		t.Errorf("a 429 with Retry-After year 9999 on a refresh stopped refreshes for 20 min (ceiling 10 min)")
	})
}

// ---- MaxReadRate bounds -----------------------------------------------------

// Promise (Defaults: "zero means the default, negative values are refused";
// Options.MaxReadRate "caps the requests a second the Provider sends"):
// values that are not a rate get a clear error; an accepted value is a cap.
// For each accepted rate r, 60 cold reads with an hour's deadline: the
// first hour may hold at most the start-up's 4 requests plus r×3600.
//
// Broke in review 17 (fixed since) for r = 1e-300 and 5e-324: NewProvider accepts them (its check is
// "(0, 1e6]"), Stats.ReadRate reports them, and every request then goes at
// once, unpaced: a cap of almost nothing behaves as no cap at all (the
// interval 1/r overflows). 1e-9 and 0.001 are honoured literally (one request
// per 31 years, per 1,000 s): legal, if a foot-gun.
func TestPaceMaxReadRateBounds(t *testing.T) {
	for _, r := range []float64{math.NaN(), math.Inf(1), math.Inf(-1), -1, -1e-300, 0, 1e-9, 1e-300, 5e-324, 0.001, 1e6, math.MaxFloat64} {
		t.Run(fmt.Sprint(r), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				vault, err := kvtest.NewInProcess(nil)
				if err != nil {
					t.Fatal(err)
				}
				defer vault.Close()
				p, err := kvsecrets.NewProvider(vault.URL(), vault.Credential(),
					&kvsecrets.Options{ClientOptions: vault.ClientOptions(), MaxReadRate: r})
				if err != nil {
					if !strings.HasPrefix(err.Error(), "kvsecrets:") || !strings.Contains(err.Error(), "MaxReadRate") {
						t.Errorf("MaxReadRate %v refused with an unclear error: %v", r, err)
					}
					t.Logf("MaxReadRate %v refused: %v", r, err)
					return
				}
				defer p.Close()
				if r < 0 || math.IsNaN(r) || math.IsInf(r, 0) {
					t.Errorf("MaxReadRate %v accepted; negative values, NaN and Inf must be refused", r)
				}
				names := seedN(t, vault, "M", 60)
				ctx, cancel := context.WithTimeout(t.Context(), time.Hour)
				defer cancel()
				t0 := time.Now()
				err = p.Preload(ctx, names...)
				rr := p.Stats().ReadRate
				sent := len(authorizedGets(vault))
				t.Logf("MaxReadRate %v accepted: Preload of 60 -> %v after %v, ReadRate %v, %d GETs sent", r, err, time.Since(t0), rr, sent)
				if math.IsNaN(rr) || math.IsInf(rr, 0) || rr <= 0 {
					t.Errorf("MaxReadRate %v accepted: Stats.ReadRate = %v", r, rr)
				}
				capr := r
				if capr == 0 {
					capr = 100 // the default's start-up rate
				}
				if allowed := 4 + capr*3600 + 1; float64(sent) > allowed {
					t.Errorf("MaxReadRate %v accepted, yet %d requests went in the first hour (cap allows %.0f): a tiny cap is no cap", r, sent, allowed)
				}
			})
		})
	}
}

// Promise: "MaxReadRate caps the requests a second the Provider sends to its
// vault" and the pacer "paces its own requests". The SDK's own retries of a
// 503 (4 tries a read) are requests to the vault: during a 5xx storm they
// must not multiply the Provider's rate beyond its pacing.
//
// Broke in review 17 (fixed since): with MaxReadRate 50, 204 requests reach the vault in one second
// (300 reads × 4 tries): only the first try of each read is paced.
func TestPaceSDKRetriesPaced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{MaxReadRate: 50})
		names := seedN(t, v, "S", 300)
		if _, err := p.Get(t.Context(), names[0]); err != nil {
			t.Fatal(err)
		}
		v.ResetCounts()
		v.FailFor(time.Hour, kvtest.ServiceUnavailable)
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		p.Preload(ctx, names[1:]...) // fails: the point is the rate
		var ts []time.Time
		for _, r := range v.RequestLog() {
			if r.Authorized {
				ts = append(ts, r.Time)
			}
		}
		sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
		m := maxInWindow(ts, time.Second)
		t.Logf("5xx storm, MaxReadRate 50: %d requests, at most %d in one second; VaultRequests %d", len(ts), m, p.Stats().VaultRequests)
		if m > 50+4 {
			t.Errorf("%d requests reached the vault in one second with MaxReadRate 50: the SDK's retries are not paced", m)
		}
	})
}

// ---- the Limiter interface, hostile implementations --------------------------

// Promise (Options.Limiter; Limiter doc): the Limiter sees the vault's host;
// every HTTP request sent, the challenge included, had a turn;
// Stats.LimitedReads counts the turns given.
func TestLimWaitArgumentsAndTurns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := &fakeLimiter{}
		v, p, _ := env(t, &kvsecrets.Options{Limiter: lim})
		names := seedN(t, v, "T", 40)
		if err := p.Preload(t.Context(), names...); err != nil {
			t.Fatal(err)
		}
		calls := lim.snapshot()
		if len(calls) == 0 {
			t.Fatal("the Limiter was never asked")
		}
		for i, c := range calls {
			if c.vault != v.Host() {
				t.Errorf("call %d: vault %q, want %q", i, c.vault, v.Host())
			}
			for _, n := range names {
				if strings.Contains(c.vault, n) {
					t.Errorf("call %d: the Limiter saw a secret's name %q", i, n)
				}
			}
		}
		// One turn per HTTP request: the reads and the challenge.
		if len(calls) != len(names)+1 {
			t.Errorf("%d Waits for %d reads, want one more for the challenge", len(calls), len(names))
		}
		waits, turns := lim.granted()
		st := p.Stats()
		if st.LimitedReads != uint64(waits) && st.LimitedReads != uint64(turns) {
			t.Errorf("Stats.LimitedReads %d; the Limiter granted %d Waits (%d turns)", st.LimitedReads, waits, turns)
		}
		if st.LimiterFailures != 0 {
			t.Errorf("Stats.LimiterFailures %d with a Limiter that never failed", st.LimiterFailures)
		}
		if total := v.Counts().Total; int64(turns) < total {
			t.Errorf("%d requests reached the vault on %d turns", total, turns)
		}
	})
}

// Promise ("waits for its turn before each request"; the Limiter counts the
// challenge as a request of its own, so "request" means an HTTP request):
// the SDK's own retries of a 503 are requests to the vault too; each must
// have had a turn, or a 5xx storm multiplies the fleet's load beyond its budget.
//
// Broke in review 17 (fixed since): FailNext(3, ServiceUnavailable) then Get: 4 HTTP requests reach the
// vault on 1 Limiter turn.
func TestLimSDKRetriesTakeTurns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := &fakeLimiter{}
		v, p, _ := env(t, &kvsecrets.Options{Limiter: lim})
		set(t, v, "A", "a")
		set(t, v, "B", "b")
		if _, err := p.Get(t.Context(), "A"); err != nil { // challenge out of the way
			t.Fatal(err)
		}
		_, t0 := lim.granted()
		r0 := v.Counts().Total
		v.FailNext(3, kvtest.ServiceUnavailable)
		if got, err := p.Get(t.Context(), "B"); err != nil || got != "b" {
			t.Fatalf("B through 3 × 503: %q, %v", got, err)
		}
		_, t1 := lim.granted()
		sent := v.Counts().Total - r0
		if turns := t1 - t0; int64(turns) < sent {
			t.Errorf("%d HTTP requests reached the vault for one read on %d Limiter turn(s): the SDK's retries bypass the fleet budget", sent, turns)
		}
	})
}

// Promise: a Limiter that fails lets requests go, paced by the Provider
// alone: no read fails because of it; Stats.LimiterFailures counts them;
// one Warn a minute; its error reaches no caller.
func TestLimFailingLimiterFallsBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const marker = "LIMITER-INTERNAL-ERROR-7731"
		lim := &fakeLimiter{}
		lim.set(func(context.Context, string) error { return errors.New(marker) })
		v, p, logs := env(t, &kvsecrets.Options{Limiter: lim, TTL: 20 * time.Second})
		names := seedN(t, v, "F", 30)
		if err := p.Preload(t.Context(), names...); err != nil {
			t.Fatalf("Preload with a failing Limiter: %v", err)
		}
		for range 10 {
			time.Sleep(time.Minute)
			for _, n := range names {
				if _, err := p.Get(t.Context(), n); err != nil {
					t.Fatalf("Get with a failing Limiter: %v", err)
				}
			}
		}
		st := p.Stats()
		fails := 0
		for _, c := range lim.snapshot() {
			if c.err != nil {
				fails++
			}
		}
		if st.LimiterFailures != uint64(fails) {
			t.Errorf("Stats.LimiterFailures %d, the Limiter failed %d times", st.LimiterFailures, fails)
		}
		if st.LimitedReads != 0 {
			t.Errorf("Stats.LimitedReads %d with a Limiter that always failed", st.LimitedReads)
		}
		warns := 0
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, "level=WARN") && strings.Contains(strings.ToLower(l), "limit") {
				warns++
			}
		}
		if warns == 0 || warns > 12 {
			t.Errorf("%d Warn logs about the Limiter in 10 min of failures, want one a minute", warns)
		}
		mustNotContain(t, "logs", logs.String(), "value-F")
	})
}

// Promise (Limiter doc): "It returns ctx's error if ctx ends first. Any other
// error means the Limiter cannot answer; the Provider then sends the request
// paced only by itself." A Limiter whose own internal timeout wraps
// context.DeadlineExceeded (as a store client's per-call timeout does), while
// the caller's context is alive, is "any other error": the read must go.
func TestLimOwnTimeoutErrorIsAFailureNotTheCallers(t *testing.T) {
	for name, e := range map[string]error{
		"DeadlineExceeded": context.DeadlineExceeded,
		"wrapped":          fmt.Errorf("store: GET bucket: %w", context.DeadlineExceeded),
		"Canceled":         context.Canceled,
	} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				lim := &fakeLimiter{}
				lim.set(func(context.Context, string) error { return e })
				v, p, _ := env(t, &kvsecrets.Options{Limiter: lim})
				set(t, v, "A", "a")
				ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
				defer cancel()
				if got, err := p.Get(ctx, "A"); err != nil || got != "a" {
					t.Errorf("caller's ctx alive, Limiter returned %v of its own: Get = %q, %v", e, got, err)
				}
			})
		})
	}
}

// A Limiter that returns nil at once, always: LimitedReads counts, reads work,
// and the Provider's own pacing still holds (the Limiter is after the pacer).
func TestLimInstantLimiterStillPaced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := &fakeLimiter{}
		v, p, _ := env(t, &kvsecrets.Options{Limiter: lim})
		names := seedN(t, v, "I", 300)
		if err := p.Preload(t.Context(), names...); err != nil {
			t.Fatal(err)
		}
		if m := maxInWindow(authorizedGets(v), time.Second); m > 105 {
			t.Errorf("%d requests in one second: an always-yes Limiter bypassed the pacer", m)
		}
		if p.Stats().LimitedReads == 0 {
			t.Errorf("LimitedReads 0")
		}
	})
}

// Finding probe: a Limiter that panics. Nothing documents what happens;
// OnRotate and OnChange panics are recovered and logged, so a demanding user
// expects the same of a user-supplied Limiter. Run in a child process.
// Observed: recovered (no crash), but the read fails with ErrUnavailable
// ("internal error") instead of falling back to pacing as for a failing
// Limiter. Held as "no crash"; the read failing is reported as a finding.
func TestLimPanickingLimiter(t *testing.T) {
	if !isChild(t.Name()) {
		out, err := runChild(t, t.Name())
		if !strings.Contains(out, "CHILD-RESULT") {
			i := strings.Index(out, "panic:")
			t.Fatalf("a panicking Limiter.Wait crashes the whole process (exit %v): %s", err, head(out[max(i, 0):], 1200))
		}
		i := strings.Index(out, "CHILD-RESULT")
		t.Logf("recovered; %s", strings.SplitN(out[i:], "\n", 2)[0])
		return
	}
	synctest.Test(t, func(t *testing.T) {
		lim := &fakeLimiter{}
		lim.set(func(context.Context, string) error { panic("limiter exploded") })
		v, p, _ := env(t, &kvsecrets.Options{Limiter: lim})
		set(t, v, "A", "a")
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		got, err := p.Get(ctx, "A")
		st := p.Stats()
		fmt.Printf("CHILD-RESULT Get=%q err=%v LimiterFailures=%d VaultRequests=%d\n", got, err, st.LimiterFailures, st.VaultRequests)
	})
}

// Promise (Stats doc): with DisablePacing the pacer's fields are zero.
func TestPaceStatsZeroWithoutPacing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{DisablePacing: true})
		names := seedN(t, v, "Z", 200)
		if err := p.Preload(t.Context(), names...); err != nil {
			t.Fatal(err)
		}
		v.FailNext(1, kvtest.Throttled)
		set(t, v, "Z-extra", "x")
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		p.Get(ctx, "Z-extra")
		st := p.Stats()
		if st.ReadRate != 0 || st.PacedReads != 0 {
			t.Errorf("DisablePacing: ReadRate %v PacedReads %d, want zero", st.ReadRate, st.PacedReads)
		}
		t.Logf("DisablePacing: Throttled %d (vault answered %d)", st.Throttled, v.Counts().Faulted)
	})
}

// The vault host given to the Limiter is the bucket's key: instances whose
// vault URL is spelled differently (case, explicit :443) must meet in one
// bucket, or the fleet's bound silently becomes one per spelling.
func TestLimVaultSpellingsShareOneHost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		vault, err := kvtest.NewInProcess(nil)
		if err != nil {
			t.Fatal(err)
		}
		defer vault.Close()
		set(t, vault, "A", "a")
		hosts := map[string]bool{}
		for _, u := range []string{vault.URL(), strings.ToUpper(vault.URL()[:8]) + strings.ToUpper(vault.Host()) + "/", "https://" + vault.Host() + ":443/"} {
			lim := &fakeLimiter{}
			p, err := kvsecrets.NewProvider(u, vault.Credential(), &kvsecrets.Options{ClientOptions: vault.ClientOptions(), Limiter: lim})
			if err != nil {
				t.Logf("%s refused: %v", u, err)
				continue
			}
			if _, err := p.Get(t.Context(), "A"); err != nil {
				t.Logf("%s: %v", u, err)
			}
			p.Close()
			for _, c := range lim.snapshot() {
				hosts[c.vault] = true
			}
			t.Logf("%s -> %v", u, lim.snapshot())
		}
		if len(hosts) > 1 {
			t.Errorf("one vault reached the Limiter under %d names %v: each is a separate fleet budget", len(hosts), hosts)
		}
	})
}
