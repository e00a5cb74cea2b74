package kvsecrets

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

// throttled429 is a 429 as the SDK returns it, with a Retry-After if ra is
// not "".
func throttled429(ra string) error {
	resp := &http.Response{StatusCode: http.StatusTooManyRequests, Header: http.Header{}}
	if ra != "" {
		resp.Header.Set("Retry-After", ra)
	}
	return &azcore.ResponseError{StatusCode: http.StatusTooManyRequests, ErrorCode: "Throttled", RawResponse: resp}
}

// take acquires n turns one after the other and returns when the last one
// was given.
func take(t *testing.T, pc *pacer, n int) time.Duration {
	t.Helper()
	start := time.Now()
	for range n {
		ep, err := pc.acquire(t.Context(), nil, false)
		if err != nil {
			t.Fatal(err)
		}
		pc.done(ep, nil)
	}
	return time.Since(start)
}

func TestPacerSlowStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pc := newPacer(DefaultMaxReadRate, true)
		if d := take(t, pc, pacingInitialBurst); d != 0 {
			t.Fatalf("the initial burst waited %v", d)
		}
		// Then one every 1/100 s.
		if d := take(t, pc, 100); d != time.Second {
			t.Fatalf("100 requests after the burst took %v, want 1s at %v a second", d, pacingInitialRate)
		}
		// A window in which requests waited and none was throttled
		// doubles the rate, up to MaxReadRate.
		time.Sleep(pacingWindow)
		take(t, pc, 1) // the next window: the one of the 100 doubles the rate
		if r := pc.currentRate(); r != 2*pacingInitialRate {
			t.Fatalf("rate %v after the first busy window, want %v", r, 2*pacingInitialRate)
		}
		for _, want := range []float64{400, 400} {
			// Requests waiting for their turn for a whole window, then
			// one in the next.
			for end := time.Now().Add(pacingWindow); time.Now().Before(end); {
				take(t, pc, 1)
			}
			take(t, pc, 1)
			if r := pc.currentRate(); r != want {
				t.Fatalf("rate %v after a busy window, want %v", r, want)
			}
		}
		if pc.delayed.Load() == 0 {
			t.Fatal("no request counted as delayed")
		}
	})
}

func TestPacerAIMD(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pc := newPacer(DefaultMaxReadRate, true)
		take(t, pc, 20) // 20 granted in the last window
		ep, _ := pc.acquire(t.Context(), nil, false)
		old, _ := pc.acquire(t.Context(), nil, false) // in flight when the first 429 comes
		at := time.Now()
		pc.done(ep, throttled429(""))
		// Cut to what the vault granted: 20 in 10 s.
		if r := pc.currentRate(); r != 2 {
			t.Fatalf("rate after a 429 = %v, want 2 (20 granted in the window)", r)
		}
		// A second 429 from a request sent before the cut is not cut for again.
		pc.done(old, throttled429(""))
		if r := pc.currentRate(); r != 2 {
			t.Fatalf("rate after a stale 429 = %v, want 2", r)
		}
		if pc.throttled.Load() != 2 {
			t.Fatalf("throttled = %d", pc.throttled.Load())
		}
		// Paused for a window: no request goes before it ends.
		ep, err := pc.acquire(t.Context(), nil, false)
		if err != nil || time.Since(at) != pacingWindow {
			t.Fatalf("first request after the 429 went after %v (%v), want %v", time.Since(at), err, pacingWindow)
		}
		pc.done(ep, nil)
		take(t, pc, 20) // at 2 a second: the vault grants what is asked
		// A 429 of this new epoch cuts again, multiplicatively.
		ep, _ = pc.acquire(t.Context(), nil, false)
		before := pc.currentRate()
		pc.mu.Lock()
		granted := float64(pc.grantedLocked(time.Now())) / pacingWindow.Seconds()
		pc.mu.Unlock()
		pc.done(ep, throttled429(""))
		if r, want := pc.currentRate(), min(before*pacingDecrease, granted); r != want {
			t.Fatalf("rate after a second 429 = %v, want min(%v×%v, %v granted a second)", r, before, pacingDecrease, granted)
		}
		// Additive increase: a busy window without a 429 adds
		// max(pacingIncrease, rate/8); the one with the cut adds nothing.
		time.Sleep(pacingWindow)
		prev, grew := pc.currentRate(), 0
		for range 4 {
			take(t, pc, int(pacingWindow.Seconds()*pc.currentRate())+1)
			r := pc.currentRate()
			if step := max(pacingIncrease, prev/8); r != prev && (r < prev+step-1e-9 || r > prev+step+1e-9) {
				t.Fatalf("rate went from %v to %v in a window, want +%v", prev, r, step)
			}
			if r != prev {
				grew++
			}
			prev = r
		}
		if grew < 3 {
			t.Fatalf("rate grew in %d of 4 busy windows", grew)
		}
	})
}

// TestPacerRetryAfterAndJitter: a busy Provider (its requests queued for
// their turn) pauses a window after a 429, an idle one a second; a
// Retry-After sets the pause either way; jitter adds up to a quarter.
func TestPacerRetryAfterAndJitter(t *testing.T) {
	for _, c := range []struct {
		ra       string
		noJitter bool
		busy     bool
		min, max time.Duration
	}{
		{"", true, true, pacingWindow, pacingWindow},
		{"", false, true, pacingWindow, pacingWindow * 5 / 4},
		{"", true, false, pacingIdlePause, pacingIdlePause},
		{"", false, false, pacingIdlePause, pacingIdlePause * 5 / 4},
		{"30", true, true, 30 * time.Second, 30 * time.Second},
		{"30", false, false, 30 * time.Second, 30 * time.Second * 5 / 4},
		{"1", false, true, time.Second, time.Second * 5 / 4},
	} {
		t.Run(fmt.Sprintf("Retry-After=%q/jitter=%v/busy=%v", c.ra, !c.noJitter, c.busy), func(t *testing.T) {
			var seen []time.Duration
			for range 20 {
				synctest.Test(t, func(t *testing.T) {
					pc := newPacer(DefaultMaxReadRate, c.noJitter)
					if c.busy {
						take(t, pc, 30) // the last ones wait for a token
					}
					ep, _ := pc.acquire(t.Context(), nil, false)
					at := time.Now()
					pc.done(ep, throttled429(c.ra))
					if _, err := pc.acquire(t.Context(), nil, false); err != nil {
						t.Fatal(err)
					}
					seen = append(seen, time.Since(at))
				})
			}
			distinct := map[time.Duration]bool{}
			for _, d := range seen {
				distinct[d] = true
				if d < c.min || d > c.max {
					t.Fatalf("paused %v, want within [%v, %v]", d, c.min, c.max)
				}
			}
			if !c.noJitter && len(distinct) < 10 {
				t.Fatalf("20 pauses took only %d distinct values: %v", len(distinct), seen)
			}
		})
	}
}

func TestPacerRetryGoesFirst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pc := newPacer(1, true) // one a second
		take(t, pc, pacingInitialBurst)
		var order []string
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, who := range []string{"a", "b"} {
			wg.Go(func() {
				pc.acquire(t.Context(), nil, false)
				mu.Lock()
				order = append(order, who)
				mu.Unlock()
			})
			synctest.Wait()
		}
		wg.Go(func() {
			pc.acquire(t.Context(), nil, true)
			mu.Lock()
			order = append(order, "retry")
			mu.Unlock()
		})
		wg.Wait()
		if fmt.Sprint(order) != "[retry a b]" {
			t.Fatalf("order %v, want the retry first", order)
		}
	})
}

func TestPacerCancelWhileQueued(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pc := newPacer(1, true)
		take(t, pc, pacingInitialBurst)
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		gone := make(chan struct{})
		errs := make(chan error, 3)
		go func() { _, err := pc.acquire(ctx, nil, false); errs <- err }()
		synctest.Wait()
		go func() { _, err := pc.acquire(t.Context(), gone, false); errs <- err }()
		synctest.Wait()
		start := time.Now()
		go func() { _, err := pc.acquire(t.Context(), nil, false); errs <- err }()
		if err := <-errs; !errors.Is(err, context.DeadlineExceeded) || time.Since(start) != 300*time.Millisecond {
			t.Fatalf("queued past its deadline: %v after %v", err, time.Since(start))
		}
		close(gone)
		if err := <-errs; !errors.Is(err, errPacingAbandoned) {
			t.Fatalf("abandoned while queued: %v", err)
		}
		// The one left takes the turn the others left.
		if err := <-errs; err != nil || time.Since(start) != time.Second {
			t.Fatalf("the last in the queue: %v after %v, want its turn at 1s", err, time.Since(start))
		}
		if len(pc.queue) != 0 {
			t.Fatalf("queue holds %d", len(pc.queue))
		}
	})
}

// pacedProvider is a Provider on kvtest's in-process vault with n secrets
// s-0… and the given latency.
func pacedProvider(t *testing.T, o Options, n int, latency time.Duration) (*kvtest.Server, *Provider, []string) {
	t.Helper()
	vault, err := kvtest.NewInProcess(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vault.Close() })
	var names []string
	for i := range n {
		names = append(names, fmt.Sprintf("s-%d", i))
		vault.SetSecret(names[i], "v", nil)
	}
	vault.SetLatency(latency)
	o.ClientOptions = vault.ClientOptions()
	p, err := NewProvider(vault.URL(), vault.Credential(), &o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return vault, p, names
}

// TestPacingLoneStart: a service starting alone is not noticeably slowed:
// 20 secrets preloaded at 50 ms a read, with pacing and without.
func TestPacingLoneStart(t *testing.T) {
	took := map[bool]time.Duration{}
	for _, off := range []bool{true, false} {
		synctest.Test(t, func(t *testing.T) {
			_, p, names := pacedProvider(t, Options{DisablePacing: off}, 20, 50*time.Millisecond)
			start := time.Now()
			if err := p.Preload(t.Context(), names...); err != nil {
				t.Fatal(err)
			}
			took[off] = time.Since(start)
			defer p.Close()
		})
	}
	t.Logf("Preload of 20 secrets at 50 ms a read, alone: %v with pacing, %v without (%.2f×)",
		took[false], took[true], float64(took[false])/float64(took[true]))
	if took[false] > took[true]+200*time.Millisecond {
		t.Fatalf("pacing slowed a lone start from %v to %v", took[true], took[false])
	}
}

// TestPacingQueuedCountsAgainstCaller: with a slow pacer, a Preload whose
// reads wait far longer than FetchTimeout for their turn still succeeds
// within its own deadline: FetchTimeout starts when a request is sent.
func TestPacingQueuedCountsAgainstCaller(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, p, names := pacedProvider(t, Options{MaxReadRate: 1, FetchTimeout: time.Second, PreloadConcurrency: 20}, 20, 0)
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		start := time.Now()
		if err := p.Preload(ctx, names...); err != nil {
			t.Fatalf("Preload: %v", err)
		}
		// Four requests at once (the first read's challenge, its
		// request with a token, two more reads; the others wait for the
		// first read), then one a second for the other 17.
		if d := time.Since(start); d != 17*time.Second {
			t.Fatalf("Preload took %v, want 17s", d)
		}
		if st := p.Stats(); st.PacedReads < 16 || st.PacedReads > 19 || st.ReadRate != 1 {
			t.Fatalf("stats %+v", st)
		}
	})
}

// TestPacingAbandonedReadIsNotSent: a caller's first read still waiting
// for its turn when every caller gave up is never sent, and leaves nothing
// behind; a later caller starts a new one.
func TestPacingAbandonedReadIsNotSent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		vault, p, names := pacedProvider(t, Options{MaxReadRate: 1}, 6, 0)
		if err := p.Preload(t.Context(), names[:4]...); err != nil { // the burst
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		if _, err := p.Get(ctx, names[4]); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Get queued past its deadline: %v", err)
		}
		synctest.Wait()
		if n := vault.SecretRequests(names[4]); n != 0 {
			t.Fatalf("the abandoned read was sent %d times", n)
		}
		if got, err := p.Get(t.Context(), names[4]); err != nil || got != "v" {
			t.Fatalf("a later Get: %q, %v", got, err)
		}
	})
}

// TestPacingCloseEndsQueuedReads: Close while reads wait for their turn
// ends every one of them, with ErrClosed (goleak checks the goroutines in
// TestMain).
func TestPacingCloseEndsQueuedReads(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		vault, p, names := pacedProvider(t, Options{}, 30, 0)
		vault.SetThrottle(4, 10*time.Second)
		errs := make(chan error, len(names))
		for _, n := range names {
			go func() { _, err := p.Get(context.Background(), n); errs <- err }()
		}
		time.Sleep(time.Second) // a 429 has paused the pacer; the rest wait
		synctest.Wait()
		if st := p.Stats(); st.Throttled == 0 || st.PacedReads == 0 {
			t.Fatalf("stats %+v: want throttling and queued reads", st)
		}
		p.Close()
		ok, closed := 0, 0
		for range names {
			switch err := <-errs; {
			case err == nil:
				ok++
			case errors.Is(err, ErrClosed):
				closed++
			default:
				t.Errorf("a queued read ended with %v, want ErrClosed", err)
			}
		}
		if ok != 4 || closed != len(names)-4 {
			t.Fatalf("%d served, %d closed", ok, closed)
		}
	})
}

func TestPacingOptions(t *testing.T) {
	for _, bad := range []float64{-1, 2e6} {
		if _, err := newConfig(&Options{MaxReadRate: bad}); err == nil {
			t.Errorf("MaxReadRate %v accepted", bad)
		}
	}
	if c, err := newConfig(nil); err != nil || c.maxReadRate != DefaultMaxReadRate || c.noPacing {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
	p, err := NewProvider("https://x.vault.azure.net/", staticCredential{"t"}, &Options{DisablePacing: true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.pacer != nil || p.Stats().ReadRate != 0 {
		t.Fatal("DisablePacing left a pacer")
	}
}

// TestPacerCutsToGrantedOnlyWhenItSetThePace: a 429 to a Provider whose
// pacer held nothing back (it asked for little) cuts its rate
// multiplicatively, not to the few reads it asked for; a Provider whose
// requests queued is cut to what the vault granted it.
func TestPacerCutsToGrantedOnlyWhenItSetThePace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pc := newPacer(DefaultMaxReadRate, true)
		take(t, pc, 1)
		take(t, pc, 1) // 2 granted, nothing waited: the probe's answer came first
		ep, _ := pc.acquire(t.Context(), nil, false)
		pc.done(ep, throttled429(""))
		if r, want := pc.currentRate(), pacingInitialRate*pacingDecrease; r != want {
			t.Fatalf("an idle Provider's rate after a 429 = %v, want %v (cut, not set to the 0.2/s it asked for)", r, want)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		pc := newPacer(DefaultMaxReadRate, true)
		take(t, pc, 30) // the last 26 waited for their turn
		ep, _ := pc.acquire(t.Context(), nil, false)
		pc.done(ep, throttled429(""))
		if r := pc.currentRate(); r != 3 {
			t.Fatalf("a busy Provider's rate after a 429 = %v, want 3 (30 granted in the window)", r)
		}
	})
}

// TestPacerRecoversAfterQuiet: a rate cut during a crowded start returns
// to a new Provider's after pacingQuiet windows without queueing or
// throttling, in slow start; busy windows in between keep it.
func TestPacerRecoversAfterQuiet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pc := newPacer(DefaultMaxReadRate, true)
		take(t, pc, 30)
		ep, _ := pc.acquire(t.Context(), nil, false)
		pc.done(ep, throttled429(""))
		cut := pc.currentRate()
		if cut >= pacingInitialRate {
			t.Fatalf("rate %v after the 429", cut)
		}
		// A request now and then, never waiting: quiet windows.
		for w := 1; w <= pacingQuiet+1; w++ {
			time.Sleep(pacingWindow)
			take(t, pc, 1)
			if r := pc.currentRate(); w < pacingQuiet+1 && r > cut*2 {
				t.Fatalf("rate %v after %d quiet windows, want it to stay near %v until %d", r, w, cut, pacingQuiet)
			}
		}
		pc.mu.Lock()
		r, slow := pc.rate, pc.slowStart
		pc.mu.Unlock()
		if r != pacingInitialRate || !slow {
			t.Fatalf("after %d quiet windows: rate %v, slow start %v; want %v in slow start", pacingQuiet, r, slow, pacingInitialRate)
		}
	})
}

// TestPacerIdleBackoffDoubles: an idle Provider's pauses after 429s double
// (1, 2, 4, 8 s…, up to a window), as Key Vault advises, and start again
// at a second after a window without a 429.
func TestPacerIdleBackoffDoubles(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pc := newPacer(DefaultMaxReadRate, true)
		pause := func() time.Duration {
			ep, err := pc.acquire(t.Context(), nil, false)
			if err != nil {
				t.Fatal(err)
			}
			at := time.Now()
			pc.done(ep, throttled429(""))
			ep, err = pc.acquire(t.Context(), nil, false)
			if err != nil {
				t.Fatal(err)
			}
			pc.done(ep, nil)
			return time.Since(at)
		}
		for _, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, pacingWindow, pacingWindow} {
			if got := pause(); got != want {
				t.Fatalf("an idle Provider paused %v after a 429, want %v", got, want)
			}
		}
		time.Sleep(2 * pacingWindow) // a window without a 429
		if got := pause(); got != time.Second {
			t.Fatalf("after a window without a 429 the pause was %v, want 1s again", got)
		}
	})
}
