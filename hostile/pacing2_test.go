package hostile_test

// Review 17b: attacks on the redesigned pacing and Limiter (README "A fleet
// restarting at once", Defaults rows FetchTimeout/MaxReadRate/Limiter, the
// failure table's 429 and credential rows; Options.MaxReadRate,
// Options.FetchTimeout, Options.Limiter, Limiter, Stats docs). Everything runs
// in a testing/synctest bubble on a kvtest.NewInProcess vault: times are on
// the fake clock and exact. Harness (env, seedN, fakeLimiter, authorizedGets,
// maxInWindow, throttleOnce) comes from pacing_test.go.

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

// ---- helpers ----------------------------------------------------------------

// hostileCred wraps the vault's credential; mode chooses how GetToken behaves.
type hostileCred struct {
	inner azcore.TokenCredential
	mode  atomic.Int32 // 0 ok, 1 fail, 2 hang until ctx ends
	calls atomic.Int32
}

func (c *hostileCred) GetToken(ctx context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	c.calls.Add(1)
	switch c.mode.Load() {
	case 1:
		return azcore.AccessToken{}, errors.New("AADSTS7000215: invalid client secret (review17b)")
	case 2:
		<-ctx.Done()
		return azcore.AccessToken{}, ctx.Err()
	}
	return c.inner.GetToken(ctx, o)
}

func env2(t *testing.T, cred func(v *kvtest.Server) azcore.TokenCredential, o *kvsecrets.Options) (*kvtest.Server, *kvsecrets.Provider) {
	t.Helper()
	vault, err := kvtest.NewInProcess(nil)
	if err != nil {
		t.Fatal(err)
	}
	if o == nil {
		o = &kvsecrets.Options{}
	}
	o.ClientOptions = vault.ClientOptions()
	p, err := kvsecrets.NewProvider(vault.URL(), cred(vault), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(); vault.Close() })
	return vault, p
}

// allRequestTimes is every HTTP request's time (challenges included), sorted.
func allRequestTimes(v *kvtest.Server, readsOnly bool) []time.Time {
	var ts []time.Time
	for _, r := range v.RequestLog() {
		if readsOnly && r.Method != "GET" {
			continue
		}
		ts = append(ts, r.Time)
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
	return ts
}

type timedErr struct {
	name string
	err  error
	at   time.Duration
}

// concurrentGets starts one Get per name with ctx and returns their outcomes.
func concurrentGets(p *kvsecrets.Provider, ctx context.Context, names []string) []timedErr {
	t0 := time.Now()
	out := make([]timedErr, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := p.Get(ctx, n)
			out[i] = timedErr{n, err, time.Since(t0)}
		}()
	}
	wg.Wait()
	return out
}

// ---- one challenge per Provider ----------------------------------------------

// Promise (README "A fleet restarting at once"; Options.MaxReadRate): "A new
// Provider holds its requests until its first has met the vault's
// authentication challenge and has a token: one challenge per Provider, not
// one per concurrent read." For 50 concurrent first Gets, a Preload of 100,
// and a mix of Get, GetSecret, Verify, PreloadVerify and GetVersion.
func TestPace2OneChallengePerProvider(t *testing.T) {
	cases := map[string]func(t *testing.T, v *kvtest.Server, p *kvsecrets.Provider){
		"50ConcurrentGets": func(t *testing.T, v *kvtest.Server, p *kvsecrets.Provider) {
			for _, r := range concurrentGets(p, t.Context(), seedN(t, v, "G", 50)) {
				if r.err != nil {
					t.Errorf("%s: %v", r.name, r.err)
				}
			}
		},
		"Preload100": func(t *testing.T, v *kvtest.Server, p *kvsecrets.Provider) {
			if err := p.Preload(t.Context(), seedN(t, v, "P", 100)...); err != nil {
				t.Error(err)
			}
		},
		"Mixed": func(t *testing.T, v *kvtest.Server, p *kvsecrets.Provider) {
			names := seedN(t, v, "M", 20)
			ver := set(t, v, "Pinned", "pinned")
			var wg sync.WaitGroup
			var bad atomic.Int32
			for i, n := range names {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var err error
					switch i % 4 {
					case 0:
						_, err = p.Get(t.Context(), n)
					case 1:
						_, err = p.Verify(t.Context(), n, "value-"+n)
					case 2:
						err = p.PreloadVerify(t.Context(), n)
					case 3:
						_, err = p.GetVersion(t.Context(), "Pinned", ver)
					}
					if err != nil {
						bad.Add(1)
						t.Errorf("%s (kind %d): %v", n, i%4, err)
					}
				}()
			}
			wg.Wait()
		},
	}
	for name, run := range cases {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				v, p, _ := env(t, nil)
				v.SetLatency(20 * time.Millisecond) // the challenge is in flight while the others arrive
				run(t, v, p)
				if n := v.Counts().Unauthenticated; n != 1 {
					t.Errorf("%d authentication challenges for one new Provider, want 1 (one challenge per Provider)", n)
				}
			})
		})
	}
}

// Promise: the hold behind the first request must not turn one failure into
// a hang for the others. The first request's credential fails (failure table:
// "the credential cannot get a token: ErrUnauthenticated, at once: not
// retried"): every concurrent first read must end at once with
// ErrUnauthenticated, with no request of theirs left waiting.
func TestPace2FirstCredentialFailsOthersEndAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var cred *hostileCred
		v, p := env2(t, func(v *kvtest.Server) azcore.TokenCredential {
			cred = &hostileCred{inner: v.Credential()}
			return cred
		}, nil)
		cred.mode.Store(1)
		names := seedN(t, v, "U", 30)
		res := concurrentGets(p, context.Background(), names)
		for _, r := range res {
			if !errors.Is(r.err, kvsecrets.ErrUnauthenticated) {
				t.Errorf("%s with a failing credential: %v, want ErrUnauthenticated", r.name, r.err)
			}
			if r.at > time.Second {
				t.Errorf("%s answered after %v with a failing credential, want at once", r.name, r.at)
			}
			mustNotContain(t, "error", fmt.Sprint(r.err), "value-")
		}
		t.Logf("failing credential: %d challenges, %d GetToken calls, %d requests for 30 concurrent reads",
			v.Counts().Unauthenticated, cred.calls.Load(), v.Counts().Total)
		// the credential recovers: the next read works and meets one more challenge at most
		cred.mode.Store(0)
		if got, err := p.Get(t.Context(), names[0]); err != nil || got != "value-"+names[0] {
			t.Errorf("after the credential recovered: %q, %v", got, err)
		}
	})
}

// Promise (Defaults row FetchTimeout: "bound on one shared vault read ... it
// starts when the read's first request is sent"): a credential that hangs
// after the challenge was sent is bounded by FetchTimeout for the first read;
// and the reads held behind it (callers with no deadline) must not each pay
// a FetchTimeout in turn, nor hang for ever.
// Broke in review 17b (fixed since): the first read ends at FetchTimeout (2 s), but the 9
// held reads are never bounded: still blocked after 10 min.
func TestPace2HangingCredentialBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var cred *hostileCred
		v, p := env2(t, func(v *kvtest.Server) azcore.TokenCredential {
			cred = &hostileCred{inner: v.Credential()}
			return cred
		}, &kvsecrets.Options{FetchTimeout: 2 * time.Second})
		cred.mode.Store(2)
		names := seedN(t, v, "H", 10)
		done := make(chan []timedErr, 1)
		go func() { done <- concurrentGets(p, context.Background(), names) }()
		var res []timedErr
		select {
		case res = <-done:
		case <-time.After(10 * time.Minute):
			// Broke in review 17b (fixed since): FetchTimeout never starts, the challenge was sent but
			// no request with a token ever goes.
			t.Errorf("10 concurrent first reads with a hanging credential, FetchTimeout 2 s, no caller deadline: still blocked after 10 min (%d GetToken calls, %d requests sent); FetchTimeout \"starts when the read's first request is sent\" and must bound them",
				cred.calls.Load(), v.Counts().Total)
			t0 := time.Now()
			p.Close()
			res = <-done
			for _, r := range res {
				if !errors.Is(r.err, kvsecrets.ErrClosed) {
					t.Errorf("%s at Close: %v, want ErrClosed", r.name, r.err)
				}
			}
			if d := time.Since(t0); d != 0 {
				t.Errorf("Close took %v to end reads stuck in the credential", d)
			}
			return
		}
		var worst time.Duration
		for _, r := range res {
			worst = max(worst, r.at)
			if r.err == nil {
				t.Errorf("%s succeeded with a hanging credential", r.name)
			}
		}
		t.Logf("hanging credential: slowest of 10 reads answered after %v; %d GetToken calls, %d challenges; first error: %v",
			worst, cred.calls.Load(), v.Counts().Unauthenticated, res[0].err)
		if worst > 2*2*time.Second+time.Second {
			t.Errorf("with a hanging credential, FetchTimeout 2 s, the slowest of 10 concurrent first reads answered after %v: each held read paid its own FetchTimeout in turn", worst)
		}
	})
}

// One read at a time against a hanging credential (IMDS not answering), each
// caller with a 1-minute deadline. The first read is bounded by FetchTimeout
// (2 s). The second read — a new one, after the first failed — must be
// bounded by FetchTimeout too: waiting for a credential is not "waiting for
// its turn in the pacer or the Limiter" (Options.FetchTimeout), and the
// failure table says a credential that cannot get a token fails "at once".
// Broke in review 17b (fixed since): read 1 ends at 2 s; reads 2 and 3 end only at their
// callers' 1-minute deadlines; after the credential recovers the Provider is
// still wedged (GetToken of read 2 is never cancelled).
func TestPace2HangingCredentialSecondReadBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var cred *hostileCred
		v, p := env2(t, func(v *kvtest.Server) azcore.TokenCredential {
			cred = &hostileCred{inner: v.Credential()}
			return cred
		}, &kvsecrets.Options{FetchTimeout: 2 * time.Second})
		cred.mode.Store(2)
		seedN(t, v, "A", 3)
		for i := range 3 {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			t0 := time.Now()
			_, err := p.Get(ctx, fmt.Sprintf("A%d", i))
			cancel()
			d := time.Since(t0)
			t.Logf("read %d: %v after %v (GetToken calls %d, requests %d)", i+1, err, d, cred.calls.Load(), v.Counts().Total)
			if err == nil || d > 2*time.Second {
				t.Errorf("read %d with a hanging credential, FetchTimeout 2 s, caller 1 min: %v after %v, want ErrUnavailable within FetchTimeout", i+1, err, d)
			}
		}
		// The credential answers again (new calls succeed): the Provider must recover.
		cred.mode.Store(0)
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		if got, err := p.Get(ctx, "A0"); err != nil || got != "value-A0" {
			t.Errorf("after the credential recovered: %q, %v (GetToken calls %d): the Provider stays wedged behind a token request no deadline bounds", got, err, cred.calls.Load())
		}
	})
}

// A credential that hangs on a background refresh (the cached token expired)
// must not wedge the Provider: the refresh is "one read of the vault",
// bounded by FetchTimeout; values stay served; once the credential answers
// again, a rotation is picked up.
// Broke in review 17b (fixed since): the refresh stuck in GetToken was never
// bounded; after 1 h RefreshFailures was 0 and Status still said "fresh"; an
// hour after the credential recovered the rotation was still not picked up.
func TestPace2HangingCredentialOnRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		vault, err := kvtest.NewInProcess(&kvtest.Options{TokenLifetime: 20 * time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		cred := &hostileCred{inner: vault.Credential()}
		p, err := kvsecrets.NewProvider(vault.URL(), cred, &kvsecrets.Options{
			ClientOptions: vault.ClientOptions(), TTL: 10 * time.Minute, FetchTimeout: 5 * time.Second, MaxStale: 24 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		defer vault.Close()
		defer p.Close()
		set(t, vault, "A", "a1")
		if _, err := p.Get(t.Context(), "A"); err != nil {
			t.Fatal(err)
		}
		cred.mode.Store(2) // IMDS hangs
		// A is read every 5 minutes, as a service would: an entry nobody
		// reads for IdleTimeout (2 × TTL) is dropped by design, so it
		// must be read for its stale value to be kept.
		for range 12 {
			time.Sleep(5 * time.Minute)
			if got, err := p.Get(t.Context(), "A"); err != nil || got != "a1" {
				t.Errorf("stale value during a hanging credential: %q, %v", got, err)
			}
		}
		synctest.Wait()
		st := p.Stats()
		t.Logf("after 1 h of a hanging credential: GetToken calls %d, Refreshes %d, RefreshFailures %d, status %v", cred.calls.Load(), st.Refreshes, st.RefreshFailures, p.Status("A"))
		if st.RefreshFailures == 0 {
			t.Errorf("an hour of refreshes against a hanging credential recorded no failure: the refresh is stuck, not bounded by FetchTimeout")
		}
		cred.mode.Store(0)
		set(t, vault, "A", "a2")
		time.Sleep(time.Hour)
		synctest.Wait()
		if got, _ := p.Get(t.Context(), "A"); got != "a2" {
			t.Errorf("an hour after the credential recovered the Provider still serves %q, not the rotated a2: wedged by a hang", got)
		}
	})
}

// Hanging vault: the challenge itself never answers (latency 1 h). The first
// read ends at FetchTimeout; the held reads must not be left to hang, and
// Close must end whatever is still waiting at once.
// Broke in review 17b (fixed since): after the first challenge times out, all 9 held reads
// send a challenge at once: 10 challenges for 10 concurrent reads.
func TestPace2HangingChallengeHeldReads(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{FetchTimeout: 2 * time.Second})
		names := seedN(t, v, "V", 10)
		v.SetLatency(time.Hour)
		done := make(chan []timedErr, 1)
		go func() { done <- concurrentGets(p, context.Background(), names) }()
		var res []timedErr
		select {
		case res = <-done:
		case <-time.After(10 * time.Minute):
			synctest.Wait()
			t.Errorf("10 first reads against a hanging vault, FetchTimeout 2 s: still blocked after 10 min (%d requests sent)", v.Counts().Total)
			p.Close()
			res = <-done
			for _, r := range res {
				if !errors.Is(r.err, kvsecrets.ErrClosed) {
					t.Errorf("%s at Close: %v", r.name, r.err)
				}
			}
			return
		}
		var worst time.Duration
		for _, r := range res {
			worst = max(worst, r.at)
		}
		t.Logf("hanging vault: slowest of 10 answered after %v; %d requests sent", worst, v.Counts().Total)
		if worst > 2*2*time.Second+time.Second {
			t.Errorf("hanging vault, FetchTimeout 2 s: the slowest of 10 concurrent first reads answered after %v (each held read paid its own FetchTimeout)", worst)
		}
		// "one challenge per Provider, not one per concurrent read": when the
		// first challenge times out, the held reads must not all go at once,
		// each meeting the challenge of a vault already not answering.
		if n := v.Counts().Total; n > 2 {
			t.Errorf("hanging vault: %d unauthenticated challenge requests for 10 concurrent first reads (the first timed out, then every held read sent its own): one challenge per Provider, not one per concurrent read", n)
		}
	})
}

// Promise: Close ends the reads held behind the first request's challenge at
// once, with ErrClosed, and nothing is sent after.
func TestPace2CloseEndsChallengeHold(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		names := seedN(t, v, "C", 20)
		v.SetLatency(time.Minute)
		errs := make(chan error, len(names))
		for _, n := range names {
			go func() { _, err := p.Get(context.Background(), n); errs <- err }()
		}
		time.Sleep(time.Second)
		synctest.Wait()
		sent := v.Counts().Total
		t0 := time.Now()
		p.Close()
		for range names {
			if err := <-errs; !errors.Is(err, kvsecrets.ErrClosed) {
				t.Errorf("read held behind the challenge at Close: %v, want ErrClosed", err)
			}
		}
		if d := time.Since(t0); d != 0 {
			t.Errorf("held reads ended %v after Close", d)
		}
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		if n := v.Counts().Total; n > 1 {
			t.Errorf("%d requests (answered) for 20 reads held behind one challenge and Closed, want at most the one challenge (sent before Close: %d answered)", n, sent)
		}
	})
}

// ---- MaxReadRate: any second holds at most the rate and 4 more -----------------

// Promise (Options.MaxReadRate): "any second holds at most MaxReadRate and 4
// more", counting every request (the challenge included), at start-up and
// after an idle spell longer than "a minute without queueing" (where the
// rate returns to 100 a second — which must still be capped by MaxReadRate).
func TestPace2MaxReadRateAfterIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{MaxReadRate: 10})
		if err := p.Preload(t.Context(), seedN(t, v, "A", 60)...); err != nil {
			t.Fatal(err)
		}
		if m := maxInWindow(allRequestTimes(v, false), time.Second); m > 14 {
			t.Errorf("start-up: %d requests in one second with MaxReadRate 10 (cap 14)", m)
		}
		time.Sleep(5 * time.Minute)
		synctest.Wait()
		if r := p.Stats().ReadRate; r > 10 {
			t.Errorf("Stats.ReadRate %v after an idle spell with MaxReadRate 10", r)
		}
		v.ResetCounts()
		if err := p.Preload(t.Context(), seedN(t, v, "B", 60)...); err != nil {
			t.Fatal(err)
		}
		if m := maxInWindow(allRequestTimes(v, false), time.Second); m > 14 {
			t.Errorf("after 5 idle minutes: %d requests in one second with MaxReadRate 10 (cap 14)", m)
		}
	})
}

// Same promise with the SDK's retries of 503s (FailNext, after an idle
// spell), with 429s answered by the vault's throttle (each retried by the
// Provider), and with Verify key sets (versions lists, paged).
func TestPace2MaxReadRateRetriesAndKeySets(t *testing.T) {
	t.Run("503AfterIdle", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			v, p, _ := env(t, &kvsecrets.Options{MaxReadRate: 10})
			set(t, v, "W", "w")
			if _, err := p.Get(t.Context(), "W"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Minute)
			synctest.Wait()
			names := seedN(t, v, "S", 40)
			v.ResetCounts()
			v.FailNext(60, kvtest.ServiceUnavailable)
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			p.Preload(ctx, names...)
			ts := allRequestTimes(v, false)
			m := maxInWindow(ts, time.Second)
			t.Logf("503s after idle: %d requests, at most %d in 1 s", len(ts), m)
			if m > 14 {
				t.Errorf("%d requests in one second (SDK retries of 503s) with MaxReadRate 10, cap 14", m)
			}
		})
	})
	t.Run("Throttle429", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			v, p, _ := env(t, &kvsecrets.Options{MaxReadRate: 10})
			v.SetThrottle(30, 10*time.Second)
			names := seedN(t, v, "T", 80)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
			defer cancel()
			if err := p.Preload(ctx, names...); err != nil {
				t.Logf("Preload through a throttle: %v", err)
			}
			ts := allRequestTimes(v, false)
			m := maxInWindow(ts, time.Second)
			t.Logf("throttled vault: %d requests, %d answered 429, at most %d in 1 s", len(ts), v.Counts().Throttled, m)
			if m > 14 {
				t.Errorf("%d requests in one second through 429 retries with MaxReadRate 10, cap 14", m)
			}
		})
	})
	t.Run("KeySetPages", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			v, p, _ := env(t, &kvsecrets.Options{MaxReadRate: 5})
			var names []string
			for i := range 10 {
				n := fmt.Sprintf("K%d", i)
				names = append(names, n)
				for j := range 60 { // enough versions for several pages of the versions list
					set(t, v, n, fmt.Sprintf("k-%d-%d", i, j))
				}
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
			defer cancel()
			if err := p.PreloadVerify(ctx, names...); err != nil {
				t.Fatalf("PreloadVerify: %v", err)
			}
			ts := allRequestTimes(v, false)
			m := maxInWindow(ts, time.Second)
			lists := 0
			for _, r := range v.RequestLog() {
				if r.Op == "versions" {
					lists++
				}
			}
			t.Logf("key sets: %d requests (%d versions pages), at most %d in 1 s", len(ts), lists, m)
			if m > 9 {
				t.Errorf("%d requests in one second reading key sets with MaxReadRate 5, cap 9", m)
			}
		})
	})
}

// ---- the Limiter: every read request takes a turn; writes never wait ----------

// Promise (Options.Limiter, Limiter doc, Stats): every read request takes a
// turn (the challenge and the SDK's retries included), Stats.LimitedReads
// counts the turns; "never a write": Rotate neither waits in the Limiter nor
// is paced — it completes while the Limiter blocks every read and while the
// pacer is paused after a 429.
func TestLim2WritesNeverWaitAndTurnsTruthful(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := &fakeLimiter{}
		v, p, _ := env(t, &kvsecrets.Options{Limiter: lim})
		names := seedN(t, v, "R", 10)
		v.FailNext(3, kvtest.ServiceUnavailable)
		if err := p.Preload(t.Context(), names...); err != nil {
			t.Fatal(err)
		}
		_, turns := lim.granted()
		st := p.Stats()
		total := v.Counts().Total
		if int64(turns) != total || st.LimitedReads != uint64(turns) {
			t.Errorf("%d read requests (challenge and retries included), %d Limiter turns, Stats.LimitedReads %d: want all equal", total, turns, st.LimitedReads)
		}
		// Writes: the Limiter now blocks for ever (honest about ctx).
		n0 := len(lim.snapshot())
		lim.set(func(ctx context.Context, _ string) error { <-ctx.Done(); return ctx.Err() })
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		t0 := time.Now()
		if _, err := p.Rotate(ctx, names[0], "rotated-value-1", nil); err != nil {
			t.Errorf("Rotate while the Limiter blocks reads: %v (after %v)", err, time.Since(t0))
		} else if d := time.Since(t0); d != 0 {
			t.Errorf("Rotate took %v while the Limiter blocked: a write waited", d)
		}
		synctest.Wait()
		if n := len(lim.snapshot()) - n0; n != 0 {
			t.Errorf("Rotate asked the Limiter %d times: writes are not paced", n)
		}
		mustNotContain(t, "Limiter", fmt.Sprint(lim.snapshot()), "rotated-value-1")
	})
}

// Writes are not paced by the pacer either: Rotate during a 429 pause.
func TestPace2RotateDuringPauseNotPaced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		set(t, v, "A", "a")
		if _, err := p.Get(t.Context(), "A"); err != nil {
			t.Fatal(err)
		}
		throttleOnce(t, v, p, "")
		t0 := time.Now()
		if _, err := p.Rotate(t.Context(), "A", "a2-secret", nil); err != nil {
			t.Fatalf("Rotate during a pause: %v", err)
		}
		if d := time.Since(t0); d != 0 {
			t.Errorf("Rotate waited %v during the pacer's 429 pause: writes are not paced", d)
		}
		if got, _ := p.Get(t.Context(), "A"); got != "a2-secret" {
			t.Errorf("after Rotate: %q", got)
		}
	})
}

// A new Provider's first call is a write (Rotate) with a Limiter that never
// grants a turn: writes "never wait on the Limiter", even for the challenge
// a write meets.
func TestLim2FirstCallRotateBlockedLimiter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := &fakeLimiter{}
		lim.set(func(ctx context.Context, _ string) error { <-ctx.Done(); return ctx.Err() })
		v, p, _ := env(t, &kvsecrets.Options{Limiter: lim})
		set(t, v, "A", "a")
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		t0 := time.Now()
		_, err := p.Rotate(ctx, "A", "first-write-value", nil)
		t.Logf("first-call Rotate with a blocking Limiter: %v after %v; Limiter calls %d", err, time.Since(t0), len(lim.snapshot()))
		if err != nil || time.Since(t0) != 0 {
			t.Errorf("a new Provider's Rotate waited %v and returned %v with a Limiter that never grants: writes are not paced and never wait on the Limiter", time.Since(t0), err)
		}
	})
}

// ---- FetchTimeout ------------------------------------------------------------

// Promise (Options.FetchTimeout): "until the read's first request with a
// token goes (a new Provider's first request meets the authentication
// challenge instead) it stops while a request waits for its turn in the pacer
// or the Limiter". A Limiter that delays only the second request (the
// authorised one after the challenge) by 5 s, FetchTimeout 1 s, caller 1 min:
// the read must succeed.
func TestPace2FetchTimeoutPausedUntilTokenRequest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var n atomic.Int32
		lim := &fakeLimiter{}
		lim.set(func(ctx context.Context, _ string) error {
			if n.Add(1) == 2 {
				select {
				case <-time.After(5 * time.Second):
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		})
		v, p, _ := env(t, &kvsecrets.Options{FetchTimeout: time.Second, Limiter: lim})
		set(t, v, "A", "a")
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		t0 := time.Now()
		got, err := p.Get(ctx, "A")
		t.Logf("Limiter calls %d, took %v", n.Load(), time.Since(t0))
		if err != nil || got != "a" {
			t.Errorf("Limiter delaying the authorised request after the challenge by 5 s, FetchTimeout 1 s: %q, %v (the wait before the first request with a token must not count)", got, err)
		}
	})
}

// Promise (failure table, 429 row; FetchTimeout): an endless 429 storm ends a
// cold read "within FetchTimeout (30 s) of its first request", whatever the
// pauses; the caller has no deadline.
func TestPace2Endless429EndsAtFetchTimeout(t *testing.T) {
	for _, ra := range []string{"", "7", "25"} {
		t.Run("RetryAfter"+ra, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				v, p, _ := env(t, nil)
				set(t, v, "A", "a")
				if _, err := p.Get(t.Context(), "A"); err != nil {
					t.Fatal(err)
				}
				set(t, v, "B", "b")
				f := kvtest.Throttled
				f.RetryAfter = ra
				v.FailFor(24*time.Hour, f)
				v.ResetCounts()
				done := make(chan error, 1)
				go func() { _, err := p.Get(context.Background(), "B"); done <- err }()
				var err error
				select {
				case err = <-done:
				case <-time.After(10 * time.Minute):
					t.Fatalf("a cold read under an endless 429 storm, no caller deadline, still blocked after 10 min")
				}
				var first time.Time
				for _, r := range v.RequestLog() {
					if first.IsZero() || r.Time.Before(first) {
						first = r.Time
					}
				}
				d := time.Since(first)
				t.Logf("Retry-After %q: %v after its first request, %d requests", ra, d, v.Counts().Total)
				if err == nil || !errors.Is(err, kvsecrets.ErrUnavailable) {
					t.Errorf("endless 429: %v, want ErrUnavailable", err)
				}
				if d > 30*time.Second+100*time.Millisecond {
					t.Errorf("endless 429 storm (Retry-After %q): the cold read ended %v after its first request, want within FetchTimeout (30 s)", ra, d)
				}
			})
		})
	}
}

// ---- 429 pauses when idle: 1, 2, 4, 8, 10 s, back to 1 s ----------------------

// Promise (README, failure table): "If nothing was queueing, it backs off as
// Key Vault advises: 1, 2, 4, 8 s, up to 10 s", and after a window without a
// 429 back to 1 s. One lone read at a time, each meeting one 429.
func TestPace2IdleBackoffSequence(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		set(t, v, "Warm", "w")
		if _, err := p.Get(t.Context(), "Warm"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		read := func(name string) time.Duration {
			set(t, v, name, "x")
			v.FailNext(1, kvtest.Throttled)
			t0 := time.Now()
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
			defer cancel()
			if _, err := p.Get(ctx, name); err != nil {
				t.Fatalf("%s after one 429: %v", name, err)
			}
			return time.Since(t0)
		}
		want := []time.Duration{1, 2, 4, 8, 10, 10}
		var got []time.Duration
		for i, w := range want {
			d := read(fmt.Sprintf("X%d", i))
			got = append(got, d)
			w *= time.Second
			if d < w || d > w+w/4+50*time.Millisecond {
				t.Errorf("429 #%d with nothing queueing: the read came back after %v, want %v (plus jitter)", i+1, d, w)
			}
		}
		time.Sleep(30 * time.Second) // a window (and more) without a 429
		synctest.Wait()
		d := read("Y")
		t.Logf("idle backoff: %v; after 30 s quiet: %v", got, d)
		if d > 1250*time.Millisecond+50*time.Millisecond {
			t.Errorf("after 30 s without a 429 the idle backoff is %v, want back to 1 s", d)
		}
	})
}

// ---- a read under way goes ahead of reads not yet begun ------------------------

// Promise (README): "The requests of a read under way go ahead of reads not yet
// begun." MaxReadRate 2 (one turn per 500 ms), a queue of 30 reads not yet
// begun; a read whose first try met a 503 must have its SDK retries sent
// before the queued reads, not behind them.
func TestPace2ReadUnderWayGoesFirst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{MaxReadRate: 2, PreloadConcurrency: 64})
		set(t, v, "Warm", "w")
		if _, err := p.Get(t.Context(), "Warm"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		set(t, v, "A", "a")
		q := seedN(t, v, "Q", 30)
		v.ResetCounts()
		v.FailSecret("A", kvtest.ServiceUnavailable)
		aDone := make(chan error, 1)
		go func() { _, err := p.Get(context.Background(), "A"); aDone <- err }()
		time.Sleep(time.Millisecond) // A's first try is sent and answered 503
		synctest.Wait()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
		defer cancel()
		go p.Preload(ctx, q...)
		<-aDone
		log := v.RequestLog()
		var aTimes []time.Time
		for _, r := range log {
			if r.Secret == "A" || r.Secret == "a" {
				aTimes = append(aTimes, r.Time)
			}
		}
		if len(aTimes) < 2 {
			t.Fatalf("A sent %d requests", len(aTimes))
		}
		last := aTimes[len(aTimes)-1]
		others := 0
		for _, r := range log {
			if r.Secret != "A" && r.Secret != "a" && r.Time.Before(last) {
				others++
			}
		}
		t.Logf("A: %d tries over %v; %d requests of queued reads went before A's last try", len(aTimes), last.Sub(aTimes[0]), others)
		if others > 4 {
			t.Errorf("%d requests of reads not yet begun went before the retries of a read under way (the first burst is 4)", others)
		}
		cancel()
	})
}

// ---- hostile Limiters: slow, instant nil after ctx ended ------------------------

// A Limiter that returns nil instantly even when ctx is already done, and a
// slow honest one: no panic, no request after every caller gave up (the
// abandoned read), Stats truthful, no value anywhere in the Limiter's view.
func TestLim2NilAfterCtxEnded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := &fakeLimiter{}
		var calls atomic.Int32
		lim.set(func(ctx context.Context, _ string) error {
			calls.Add(1)
			time.Sleep(300 * time.Millisecond) // a slow store that does not watch ctx
			return nil
		})
		v, p, _ := env(t, &kvsecrets.Options{Limiter: lim})
		names := seedN(t, v, "N", 5)
		for _, n := range names {
			ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
			_, err := p.Get(ctx, n)
			cancel()
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("%s: %v, want the caller's deadline", n, err)
			}
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		sent := 0
		for _, n := range names {
			sent += int(v.SecretRequests(n))
		}
		t.Logf("abandoned reads with a slow nil-returning Limiter: %d GETs sent, %d Limiter calls, stats %+v", sent, calls.Load(), p.Stats())
		if sent != 0 {
			t.Errorf("%d GETs sent for reads whose callers all gave up before they were sent", sent)
		}
		for _, n := range names {
			if got, err := p.Get(t.Context(), n); err != nil || got != "value-"+n {
				t.Errorf("%s later: %q, %v", n, got, err)
			}
		}
	})
}

// Close with the pacer paused and the Limiter slow: no goroutine outlives
// Close (goleak in TestMain checks the process; here the bubble does).
func TestPace2CloseDuringEverything(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := &fakeLimiter{}
		lim.set(func(ctx context.Context, _ string) error {
			select {
			case <-time.After(3 * time.Second):
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
		v, p, _ := env(t, &kvsecrets.Options{Limiter: lim, TTL: 10 * time.Second})
		names := seedN(t, v, "E", 30)
		v.SetLatency(time.Second)
		v.FailFor(time.Hour, kvtest.Throttled)
		var wg sync.WaitGroup
		for _, n := range names {
			wg.Add(1)
			go func() { defer wg.Done(); p.Get(context.Background(), n); p.Verify(context.Background(), n, "x") }()
		}
		go p.Preload(context.Background(), names...)
		time.Sleep(7 * time.Second)
		p.Close()
		wg.Wait()
		synctest.Wait()
		if strings.Contains(fmt.Sprint(lim.snapshot()), "value-") {
			t.Errorf("a value reached the Limiter")
		}
	})
}

// The first request's read fails after the challenge (404, 403, 503 on its
// secret): the held reads go once it has a token, all succeed, one challenge.
func TestPace2FirstReadFailsOthersProceed(t *testing.T) {
	for name, fail := range map[string]func(v *kvtest.Server){
		"404": func(v *kvtest.Server) {},
		"403": func(v *kvtest.Server) { v.FailSecret("First", kvtest.ForbiddenByRbac) },
		"503": func(v *kvtest.Server) { v.FailSecret("First", kvtest.ServiceUnavailable) },
	} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				v, p, _ := env(t, nil)
				if name != "404" {
					set(t, v, "First", "first")
				}
				fail(v)
				v.SetLatency(20 * time.Millisecond)
				names := seedN(t, v, "O", 30)
				first := make(chan error, 1)
				go func() { _, err := p.Get(context.Background(), "First"); first <- err }()
				time.Sleep(time.Millisecond)
				res := concurrentGets(p, context.Background(), names)
				err := <-first
				if err == nil {
					t.Errorf("First: no error")
				}
				for _, r := range res {
					if r.err != nil || r.at > 2*time.Second {
						t.Errorf("%s held behind a first read that failed with %s: %v after %v", r.name, name, r.err, r.at)
					}
				}
				if n := v.Counts().Unauthenticated; n != 1 {
					t.Errorf("%d challenges, want 1", n)
				}
			})
		})
	}
}

// Stats.LimitedReads is truthful through 429s (each retry of a throttled
// read takes a turn) and the pacer's PacedReads/Throttled agree with the vault.
func TestLim2TurnsThroughThrottle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := &fakeLimiter{}
		v, p, _ := env(t, &kvsecrets.Options{Limiter: lim})
		v.SetThrottle(20, 10*time.Second)
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
		defer cancel()
		if err := p.Preload(ctx, seedN(t, v, "T", 60)...); err != nil {
			t.Logf("Preload: %v", err)
		}
		_, turns := lim.granted()
		st := p.Stats()
		c := v.Counts()
		t.Logf("requests %d (429 %d), turns %d, %+v", c.Total, c.Throttled, turns, st)
		if int64(turns) != c.Total || st.LimitedReads != uint64(turns) {
			t.Errorf("%d requests through a throttle, %d Limiter turns, Stats.LimitedReads %d: every read request takes a turn", c.Total, turns, st.LimitedReads)
		}
		if int64(st.Throttled) != c.Throttled {
			t.Errorf("Stats.Throttled %d, vault answered %d 429s", st.Throttled, c.Throttled)
		}
	})
}

// Promise (Options.Limiter, new wording): "A Limiter that fails or panics
// lets requests go, paced by this Provider alone (Stats.LimiterFailures
// counts them)". Review 17 saw a panicking Limiter fail the read instead.
func TestLim2PanickingLimiterLetsRequestsGo(t *testing.T) {
	if !isChild(t.Name()) {
		out, err := runChild(t, t.Name())
		if !strings.Contains(out, "CHILD-RESULT") {
			i := strings.Index(out, "panic:")
			t.Fatalf("a panicking Limiter.Wait crashes the process (exit %v): %s", err, head(out[max(i, 0):], 1200))
		}
		i := strings.Index(out, "CHILD-RESULT")
		line := strings.SplitN(out[i:], "\n", 2)[0]
		t.Logf("%s", line)
		if !strings.Contains(line, "OK") {
			t.Errorf("a panicking Limiter did not let the requests go: %s", line)
		}
		return
	}
	synctest.Test(t, func(t *testing.T) {
		lim := &fakeLimiter{}
		lim.set(func(context.Context, string) error { panic("limiter exploded") })
		v, p, _ := env(t, &kvsecrets.Options{Limiter: lim})
		names := seedN(t, v, "P", 5)
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		err := p.Preload(ctx, names...)
		st := p.Stats()
		verdict := "OK"
		if err != nil || st.LimiterFailures == 0 {
			verdict = "BAD"
		}
		fmt.Printf("CHILD-RESULT %s Preload=%v LimiterFailures=%d requests=%d\n", verdict, err, st.LimiterFailures, v.Counts().Total)
	})
}
