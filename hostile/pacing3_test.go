package hostile_test

// Review 17c: attacks on the newest promises about a new Provider's first
// requests (README "A fleet restarting at once"; Options.FetchTimeout,
// Options.MaxReadRate, Limiter): one call at a time is the "probe"; if the
// probe ends without the vault answering past its challenge the role passes
// to one waiting call; if the vault did not answer the probe at all, the
// waiting calls fail with its error. FetchTimeout starts at a read's first
// request and does not run while it waits for its first turn with a token; a
// hanging credential is bounded by FetchTimeout; a cold read in an endless
// 429 storm ends about FetchTimeout after its first request. Everything runs
// in a testing/synctest bubble on a kvtest.NewInProcess vault (fake clock,
// exact times). Harness from pacing_test.go and pacing2_test.go.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

// ---- helpers ----------------------------------------------------------------

// flakyTransport wraps the vault's transport. mode: 0 pass, 1 refuse the
// connection (a transport-level failure, never reaching the vault), 2 hang
// until the request's context ends. failFirst refuses the first n requests
// whatever the mode; hangFirst hangs the first n.
type flakyTransport struct {
	inner     policy.Transporter
	mode      atomic.Int32
	failFirst atomic.Int32
	hangFirst atomic.Int32
	calls     atomic.Int32 // every request the SDK tried to send
	live      atomic.Int32 // of which with a context not yet ended
	closed    atomic.Bool  // set by a test at Close
	mu        sync.Mutex
	afterLog  []string     // live requests after closed was set
	unauth    atomic.Int32 // of which without a token (challenges)
}

func refused() error {
	return &net.OpError{Op: "dial", Net: "tcp", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}
}

func (f *flakyTransport) Do(r *http.Request) (*http.Response, error) {
	f.calls.Add(1)
	if r.Context().Err() == nil {
		f.live.Add(1)
		if f.closed.Load() {
			f.mu.Lock()
			f.afterLog = append(f.afterLog, fmt.Sprintf("%s %s auth=%v", r.Method, r.URL.Path, r.Header.Get("Authorization") != ""))
			f.mu.Unlock()
		}
	}
	if r.Header.Get("Authorization") == "" {
		f.unauth.Add(1)
	}
	if f.failFirst.Add(-1) >= 0 {
		return nil, refused()
	}
	if f.hangFirst.Add(-1) >= 0 {
		<-r.Context().Done()
		return nil, r.Context().Err()
	}
	switch f.mode.Load() {
	case 1:
		return nil, refused()
	case 2:
		<-r.Context().Done()
		return nil, r.Context().Err()
	}
	return f.inner.Do(r)
}

// env3 builds a vault and a Provider whose transport is a flakyTransport and
// whose credential is a hostileCred.
func env3(t *testing.T, o *kvsecrets.Options) (*kvtest.Server, *kvsecrets.Provider, *flakyTransport, *hostileCred) {
	t.Helper()
	vault, err := kvtest.NewInProcess(nil)
	if err != nil {
		t.Fatal(err)
	}
	if o == nil {
		o = &kvsecrets.Options{}
	}
	co := vault.ClientOptions()
	ft := &flakyTransport{inner: co.Transport}
	co.Transport = ft
	o.ClientOptions = co
	cred := &hostileCred{inner: vault.Credential()}
	p, err := kvsecrets.NewProvider(vault.URL(), cred, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(); vault.Close() })
	return vault, p, ft, cred
}

// firstCall runs one kind of first call on name (value "value-"+name).
func firstCall(p *kvsecrets.Provider, ctx context.Context, kind, name, version string) error {
	var err error
	switch kind {
	case "Get":
		_, err = p.Get(ctx, name)
	case "Verify":
		_, err = p.Verify(ctx, name, "value-"+name)
	case "GetVersion":
		_, err = p.GetVersion(ctx, name, version)
	case "Preload":
		err = p.Preload(ctx, name)
	case "PreloadVerify":
		err = p.PreloadVerify(ctx, name)
	case "GetSecret":
		_, err = p.GetSecret(ctx, name)
	default:
		panic(kind)
	}
	return err
}

var firstKinds = []string{"Get", "Verify", "GetVersion", "Preload", "PreloadVerify"}

// mixedGets starts one call per name, its kind chosen round-robin, with ctx,
// and returns their outcomes.
func mixedCalls(p *kvsecrets.Provider, ctx context.Context, names []string, versions map[string]string) []timedErr {
	t0 := time.Now()
	out := make([]timedErr, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := firstCall(p, ctx, firstKinds[i%len(firstKinds)], n, versions[n])
			out[i] = timedErr{n, err, time.Since(t0)}
		}()
	}
	wg.Wait()
	return out
}

func seedV(t *testing.T, v *kvtest.Server, prefix string, n int) ([]string, map[string]string) {
	t.Helper()
	names := make([]string, n)
	vers := map[string]string{}
	for i := range names {
		names[i] = fmt.Sprintf("%s%d", prefix, i)
		vers[names[i]] = set(t, v, names[i], "value-"+names[i])
	}
	return names, vers
}

func isCtxErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// ---- promise 1: the probe's caller gives up --------------------------------

// Promise (README; Options.MaxReadRate): "one challenge per Provider, not one
// per concurrent read"; the probe role passes to one waiting call if the
// probe ends without the vault answering past its challenge. The first call
// (each kind) has a 1 ms deadline, the vault answers in 20 ms; 20 calls of
// mixed kinds with no deadline arrive while it is in flight. They must all
// succeed promptly (not fail with another caller's context error), with one
// challenge, or two at most if the abandoned probe's is not reused.
func TestPace3FirstCallerCancelsEarly(t *testing.T) {
	for _, kind := range firstKinds {
		t.Run(kind, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				v, p, _ := env(t, nil)
				names, vers := seedV(t, v, "W", 20)
				vers["First"] = set(t, v, "First", "value-First")
				v.SetLatency(20 * time.Millisecond)
				first := make(chan error, 1)
				go func() {
					ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
					defer cancel()
					first <- firstCall(p, ctx, kind, "First", vers["First"])
				}()
				time.Sleep(100 * time.Microsecond)
				res := mixedCalls(p, context.Background(), names, vers)
				ferr := <-first
				if !isCtxErr(ferr) {
					t.Errorf("first %s with a 1 ms deadline: %v, want its caller's deadline", kind, ferr)
				}
				var worst time.Duration
				for _, r := range res {
					worst = max(worst, r.at)
					if r.err != nil {
						t.Errorf("%s waiting behind an abandoned %s probe: %v after %v", r.name, kind, r.err, r.at)
					}
					mustNotContain(t, "error", fmt.Sprint(r.err), "value-")
				}
				ch := v.Counts().Unauthenticated
				t.Logf("abandoned %s probe: 20 waiters done in %v, %d challenges, %d requests", kind, worst, ch, v.Counts().Total)
				// 28 read requests at 100 a second after a burst of 4, 20 ms each: ~300 ms is the pace itself
				if worst > 500*time.Millisecond {
					t.Errorf("20 waiters behind a probe whose caller gave up after 1 ms took %v (vault latency 20 ms, pace ~300 ms)", worst)
				}
				if ch > 2 {
					t.Errorf("%d challenges for one new Provider whose first caller gave up: one challenge per Provider", ch)
				}
			})
		})
	}
}

// The probe's caller gives up while the probe waits in a Limiter that
// blocks (honestly, until ctx ends) only that first Wait. The waiting calls
// must proceed at once, with one challenge, and the abandoned read is never
// sent (README: "A read whose callers all gave up before it was sent is
// never sent").
func TestPace3ProbeAbandonedInBlockingLimiter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var n atomic.Int32
		lim := &fakeLimiter{}
		lim.set(func(ctx context.Context, _ string) error {
			if n.Add(1) == 1 {
				<-ctx.Done()
				return ctx.Err()
			}
			return nil
		})
		v, p, _ := env(t, &kvsecrets.Options{Limiter: lim})
		names, vers := seedV(t, v, "L", 20)
		set(t, v, "First", "value-First")
		first := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
			defer cancel()
			_, err := p.Get(ctx, "First")
			first <- err
		}()
		time.Sleep(time.Millisecond)
		res := mixedCalls(p, context.Background(), names, vers)
		if err := <-first; !isCtxErr(err) {
			t.Errorf("first Get, 10 ms deadline, stuck in the Limiter: %v", err)
		}
		var worst time.Duration
		for _, r := range res {
			worst = max(worst, r.at)
			if r.err != nil {
				t.Errorf("%s behind a probe abandoned in the Limiter: %v", r.name, r.err)
			}
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		t.Logf("probe abandoned in Limiter: waiters done in %v; %d challenges; %d GETs of First; %d Limiter calls", worst, v.Counts().Unauthenticated, v.SecretRequests("First"), n.Load())
		if worst > 500*time.Millisecond { // the pace alone (100 a second) is ~270 ms
			t.Errorf("waiters took %v behind a probe abandoned at 10 ms", worst)
		}
		if c := v.Counts().Unauthenticated; c != 1 {
			t.Errorf("%d challenges, want 1", c)
		}
		if s := v.SecretRequests("First"); s != 0 {
			t.Errorf("%d requests for First, whose only caller gave up before it was sent", s)
		}
	})
}

// Promise 2 (Options.FetchTimeout: it "starts when the read's first request
// is sent, and does not run while the read waits for its first turn with a
// token (the callers' deadlines bound that)"): a Limiter that holds every Wait for 5 s
// (honest about ctx), FetchTimeout 1 s, callers 1 min: the probe and the 20
// reads waiting behind it (each meeting the 5 s Limiter at least once
// before its first request) all succeed, with one challenge.
func TestPace3SlowLimiterProbeAndWaitersFetchTimeout(t *testing.T) {
	// Broke in review 17c: every call waiting behind the probe fails
	// "vault unavailable (timed out)" at 1 s, before any request of its own
	// (or any at all) was sent: FetchTimeout runs while a read waits for its
	// first turn. Only Gets here, the Limiter slow (5 s) for its first two
	// Waits (the challenge and the probe's request with a token) only.
	t.Run("SlowFirstTwoTurnsGets", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var n atomic.Int32
			lim := &fakeLimiter{}
			lim.set(func(ctx context.Context, _ string) error {
				if n.Add(1) > 2 {
					return nil
				}
				select {
				case <-time.After(5 * time.Second):
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			})
			v, p, _ := env(t, &kvsecrets.Options{Limiter: lim, FetchTimeout: time.Second})
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
			defer cancel()
			res := concurrentGets(p, ctx, seedN(t, v, "G", 20))
			var worst time.Duration
			for _, r := range res {
				worst = max(worst, r.at)
				if r.err != nil {
					t.Errorf("%s waiting behind the probe (Limiter 5 s for the first two turns, FetchTimeout 1 s, caller 5 min): %v after %v; it had sent no request", r.name, r.err, r.at)
				}
			}
			t.Logf("slow first two turns: done in %v, %d challenges, %d requests", worst, v.Counts().Unauthenticated, v.Counts().Total)
		})
	})
	t.Run("SlowEveryTurnMixed", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			lim := &fakeLimiter{}
			lim.set(func(ctx context.Context, _ string) error {
				select {
				case <-time.After(5 * time.Second):
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			})
			v, p, _ := env(t, &kvsecrets.Options{Limiter: lim, FetchTimeout: time.Second})
			names, vers := seedV(t, v, "S", 20)
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
			defer cancel()
			res := mixedCalls(p, ctx, names, vers)
			var worst time.Duration
			for _, r := range res {
				worst = max(worst, r.at)
				if r.err != nil {
					t.Errorf("%s (Limiter 5 s a turn, FetchTimeout 1 s, caller 5 min): %v after %v", r.name, r.err, r.at)
				}
			}
			t.Logf("slow Limiter: %d calls done in %v, %d challenges, %d requests", len(res), worst, v.Counts().Unauthenticated, v.Counts().Total)
			if c := v.Counts().Unauthenticated; c != 1 {
				t.Errorf("%d challenges, want 1", c)
			}
		})
	})
}

// ---- promise 1: transport-level failures of the first connections ----------

// The first connections are refused (a network failure, never reaching the
// vault): with 1 or 3 refused, the SDK's retries of the probe get through
// and everyone succeeds with one challenge. With the vault down for good,
// 20 concurrent first calls (mixed kinds, no deadline) must end promptly
// with ErrUnavailable (not a hang, not a context error, not each trying in
// turn), without a value in the error; when the vault is back, the next
// reads succeed with one challenge.
func TestPace3RefusedFirstConnections(t *testing.T) {
	for _, n := range []int32{1, 3} {
		t.Run(fmt.Sprintf("Refuse%d", n), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				v, p, ft, _ := env3(t, nil)
				names, vers := seedV(t, v, "R", 20)
				ft.failFirst.Store(n)
				res := mixedCalls(p, context.Background(), names, vers)
				for _, r := range res {
					if r.err != nil {
						t.Errorf("%s after %d refused connections: %v", r.name, n, r.err)
					}
				}
				t.Logf("%d refused: %d tries, %d without token, %d challenges answered", n, ft.calls.Load(), ft.unauth.Load(), v.Counts().Unauthenticated)
				if c := ft.unauth.Load(); c > n+1 {
					t.Errorf("%d requests without a token (%d refused): one challenge per Provider", c, n)
				}
			})
		})
	}
	t.Run("DownThenBack", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			v, p, ft, _ := env3(t, &kvsecrets.Options{FetchTimeout: 5 * time.Second})
			names, vers := seedV(t, v, "D", 20)
			ft.mode.Store(1)
			done := make(chan []timedErr, 1)
			go func() { done <- mixedCalls(p, context.Background(), names, vers) }()
			var res []timedErr
			select {
			case res = <-done:
			case <-time.After(10 * time.Minute):
				t.Errorf("20 first calls against a refusing vault, no deadline: still blocked after 10 min (%d tries)", ft.calls.Load())
				p.Close()
				<-done
				return
			}
			var worst time.Duration
			for _, r := range res {
				worst = max(worst, r.at)
				if !errors.Is(r.err, kvsecrets.ErrUnavailable) || isCtxErr(r.err) {
					t.Errorf("%s against a refusing vault: %v, want ErrUnavailable (not a context error)", r.name, r.err)
				}
				mustNotContain(t, "error", fmt.Sprint(r.err), "value-")
			}
			tries := ft.calls.Load()
			t.Logf("refusing vault: 20 calls ended by %v, %d tries; error: %v", worst, tries, res[0].err)
			if worst > 5*time.Second+time.Second {
				t.Errorf("refusing vault: the slowest of 20 first calls ended after %v (FetchTimeout 5 s): each tried in turn?", worst)
			}
			if tries > 10 {
				t.Errorf("refusing vault: %d tries for 20 first calls; the waiting calls were to fail with the probe's error, not each try", tries)
			}
			ft.mode.Store(0)
			ft.calls.Store(0)
			ft.unauth.Store(0)
			res = mixedCalls(p, context.Background(), names, vers)
			for _, r := range res {
				if r.err != nil {
					t.Errorf("%s after the vault came back: %v", r.name, r.err)
				}
			}
			t.Logf("after recovery: %d tries, %d without a token", ft.calls.Load(), ft.unauth.Load())
			if c := ft.unauth.Load(); c != 1 {
				t.Errorf("after the vault came back: %d requests without a token for 20 concurrent calls, want 1 challenge", c)
			}
		})
	})
}

// Only the probe's first connection hangs (a lost SYN), and the probe's
// caller gives up after 5 ms. The vault is healthy. The 20 calls waiting
// (no deadline) must not fail with the first caller's context error: "the
// vault did not answer the probe" because its caller left, not because the
// vault failed.
//
// Broke in review 17c: all 20 waiters (no deadline, never cancelled) fail
// with "vault unavailable (kvsecrets: the vault did not answer this
// Provider's first request: context canceled)", and errors.Is(err,
// context.Canceled) is true — though nothing was cancelled: the probe ran
// out its FetchTimeout (3 s). Same with the probe's caller staying.
func TestPace3ProbeHangsCallerLeaves(t *testing.T) {
	for _, firstDeadline := range []time.Duration{5 * time.Millisecond, time.Hour} {
		t.Run(fmt.Sprintf("FirstCaller%v", firstDeadline), func(t *testing.T) { probeHangs(t, firstDeadline) })
	}
}

func probeHangs(t *testing.T, firstDeadline time.Duration) {
	synctest.Test(t, func(t *testing.T) {
		v, p, ft, _ := env3(t, &kvsecrets.Options{FetchTimeout: 3 * time.Second})
		names, vers := seedV(t, v, "H", 20)
		set(t, v, "First", "value-First")
		ft.hangFirst.Store(1)
		first := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), firstDeadline)
			defer cancel()
			_, err := p.Get(ctx, "First")
			first <- err
		}()
		time.Sleep(time.Millisecond)
		done := make(chan []timedErr, 1)
		go func() { done <- mixedCalls(p, context.Background(), names, vers) }()
		var res []timedErr
		select {
		case res = <-done:
		case <-time.After(10 * time.Minute):
			t.Errorf("waiters behind a hung probe whose caller left: blocked after 10 min")
			p.Close()
			<-done
			return
		}
		ferr := <-first
		var worst time.Duration
		failed := 0
		for _, r := range res {
			worst = max(worst, r.at)
			if r.err != nil {
				failed++
				if isCtxErr(r.err) {
					t.Errorf("%s (no deadline) failed with another caller's context error: %v", r.name, r.err)
				} else if !errors.Is(r.err, kvsecrets.ErrUnavailable) {
					t.Errorf("%s: %v, want success or ErrUnavailable", r.name, r.err)
				}
			}
		}
		t.Logf("first: %v; waiters: %d failed, slowest %v; %d tries, %d challenges; a waiter's error: %v", ferr, failed, worst, ft.calls.Load(), v.Counts().Unauthenticated, res[0].err)
		if worst > 3*time.Second+time.Second {
			t.Errorf("waiters took %v (FetchTimeout 3 s)", worst)
		}
		// the vault is healthy: later reads work
		for _, n := range names[:3] {
			if _, err := p.Get(context.Background(), n); err != nil {
				t.Errorf("later Get %s: %v", n, err)
			}
		}
	})
}

// ---- promise 2: a hanging credential, the probe's caller leaving ---------------

// The credential hangs (IMDS not answering) and the probe's caller gives up
// at 1 ms; 9 calls wait, no deadline, FetchTimeout 2 s. The vault answered
// the challenge but not past it, so the role passes to a waiting call: each
// waiting call must not pay a FetchTimeout in turn (9 × 2 s), and the
// challenges must not multiply. Then the credential recovers.
func TestPace3HangingCredentialProbeCallerLeaves(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, ft, cred := env3(t, &kvsecrets.Options{FetchTimeout: 2 * time.Second})
		names, vers := seedV(t, v, "C", 9)
		set(t, v, "First", "value-First")
		cred.mode.Store(2)
		first := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
			defer cancel()
			_, err := p.Get(ctx, "First")
			first <- err
		}()
		time.Sleep(100 * time.Microsecond)
		done := make(chan []timedErr, 1)
		go func() { done <- mixedCalls(p, context.Background(), names, vers) }()
		var res []timedErr
		select {
		case res = <-done:
		case <-time.After(10 * time.Minute):
			t.Errorf("9 calls behind a hanging credential (FetchTimeout 2 s): blocked after 10 min, %d GetToken calls", cred.calls.Load())
			p.Close()
			<-done
			return
		}
		<-first
		var worst time.Duration
		for _, r := range res {
			worst = max(worst, r.at)
			if r.err == nil {
				t.Errorf("%s succeeded with a hanging credential", r.name)
			} else if isCtxErr(r.err) && !errors.Is(r.err, kvsecrets.ErrUnavailable) && !errors.Is(r.err, kvsecrets.ErrUnauthenticated) {
				t.Errorf("%s (no deadline): bare context error %v", r.name, r.err)
			}
		}
		t.Logf("hanging credential, probe's caller left: slowest %v; %d GetToken calls; %d challenges; %d tries; error %v", worst, cred.calls.Load(), v.Counts().Unauthenticated, ft.calls.Load(), res[0].err)
		if worst > 2*2*time.Second+time.Second {
			t.Errorf("hanging credential, FetchTimeout 2 s: the slowest of 9 waiting calls ended after %v (each paid its own FetchTimeout in turn)", worst)
		}
		if c := v.Counts().Unauthenticated; c > 2 {
			t.Errorf("%d challenges for one Provider with a hanging credential", c)
		}
		cred.mode.Store(0)
		if _, err := p.Get(t.Context(), names[0]); err != nil {
			t.Errorf("after the credential recovered: %v", err)
		}
	})
}

// The credential hangs only on its first call, then answers. The first read
// is bounded by FetchTimeout; whatever happens to the reads waiting, reads
// after it succeed.
func TestPace3CredentialHangsOnceThenRecovers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		vault, err := kvtest.NewInProcess(nil)
		if err != nil {
			t.Fatal(err)
		}
		inner := vault.Credential()
		var calls atomic.Int32
		cred := credFunc(func(ctx context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
			if calls.Add(1) == 1 {
				<-ctx.Done()
				return azcore.AccessToken{}, ctx.Err()
			}
			return inner.GetToken(ctx, o)
		})
		p, err := kvsecrets.NewProvider(vault.URL(), cred, &kvsecrets.Options{ClientOptions: vault.ClientOptions(), FetchTimeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer vault.Close()
		defer p.Close()
		names, vers := seedV(t, vault, "O", 10)
		res := mixedCalls(p, context.Background(), names, vers)
		var worst time.Duration
		bad := 0
		for _, r := range res {
			worst = max(worst, r.at)
			if r.err != nil {
				bad++
				mustNotContain(t, "error", fmt.Sprint(r.err), "value-")
			}
		}
		t.Logf("credential hangs once: %d of 10 failed, slowest %v, %d GetToken calls, %d challenges", bad, worst, calls.Load(), vault.Counts().Unauthenticated)
		if worst > 2*time.Second+time.Second {
			t.Errorf("slowest %v, FetchTimeout 2 s", worst)
		}
		res = mixedCalls(p, context.Background(), names, vers)
		for _, r := range res {
			if r.err != nil {
				t.Errorf("%s after the credential answered again: %v", r.name, r.err)
			}
		}
	})
}

type credFunc func(ctx context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error)

func (f credFunc) GetToken(ctx context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return f(ctx, o)
}

// ---- promise 3: cold reads in an endless 429 storm -----------------------------

// Promise: "a cold read during an endless 429 storm ends at about
// FetchTimeout after its first request" — here on a new Provider (the probe
// meets the challenge, then only 429s), five concurrent cold reads, no
// caller deadline, default FetchTimeout 30 s, Retry-After absent, longer
// than FetchTimeout, and absurd. Each read must end within 30 s of its own
// first request (the request log names the secret).
func TestPace3ColdReadEndless429(t *testing.T) {
	for _, ra := range []string{"", "45", "3600"} {
		t.Run("RetryAfter"+ra, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				v, p, _ := env(t, nil)
				names := seedN(t, v, "Z", 5)
				f := kvtest.Throttled
				f.RetryAfter = ra
				v.FailFor(24*time.Hour, f)
				v.ResetCounts()
				ends := make([]time.Time, len(names))
				errs := make([]error, len(names))
				var wg sync.WaitGroup
				for i, n := range names {
					wg.Add(1)
					go func() {
						defer wg.Done()
						_, errs[i] = p.Get(context.Background(), n)
						ends[i] = time.Now()
					}()
				}
				finished := make(chan struct{})
				go func() { wg.Wait(); close(finished) }()
				select {
				case <-finished:
				case <-time.After(6 * time.Hour):
					t.Errorf("5 cold reads in an endless 429 storm (Retry-After %q), no deadline: still blocked after 6 h", ra)
					p.Close()
					<-finished
					return
				}
				firsts := map[string]time.Time{}
				for _, r := range v.RequestLog() {
					if f, ok := firsts[r.Secret]; !ok || r.Time.Before(f) {
						firsts[r.Secret] = r.Time
					}
				}
				for i, n := range names {
					if !errors.Is(errs[i], kvsecrets.ErrUnavailable) {
						t.Errorf("%s in an endless 429 storm: %v, want ErrUnavailable", n, errs[i])
					}
					mustNotContain(t, "error", fmt.Sprint(errs[i]), "value-")
					f, ok := firsts[n]
					if !ok {
						t.Logf("%s: no request sent; ended %v", n, errs[i])
						continue
					}
					d := ends[i].Sub(f)
					t.Logf("%s first request at +%v", n, f.Sub(v.RequestLog()[0].Time))
					t.Logf("Retry-After %q: %s ended %v after its first request", ra, n, d)
					if d > 30*time.Second+500*time.Millisecond {
						t.Errorf("cold read %s in an endless 429 storm (Retry-After %q) ended %v after its first request, want about FetchTimeout (30 s)", n, ra, d)
					}
				}
			})
		})
	}
}

// ---- Close at every stage of the probe ------------------------------------------

// Close while the probe is (a) waiting in a blocking Limiter, (b) in flight
// against a hanging vault, (c) in a hanging credential, (d) between SDK
// retries of refused connections, (e) just after the probe failed for a
// refusing vault. Every call still waiting ends at once with ErrClosed,
// nothing is sent after Close, no goroutine outlives it (the bubble and
// goleak check).
func TestPace3CloseAtEveryStage(t *testing.T) {
	stages := map[string]func(v *kvtest.Server, ft *flakyTransport, cred *hostileCred, lim *fakeLimiter){
		"LimiterBlocks": func(v *kvtest.Server, ft *flakyTransport, cred *hostileCred, lim *fakeLimiter) {
			lim.set(func(ctx context.Context, _ string) error { <-ctx.Done(); return ctx.Err() })
		},
		"VaultHangs":      func(v *kvtest.Server, ft *flakyTransport, cred *hostileCred, lim *fakeLimiter) { ft.mode.Store(2) },
		"CredentialHangs": func(v *kvtest.Server, ft *flakyTransport, cred *hostileCred, lim *fakeLimiter) { cred.mode.Store(2) },
		"Refused":         func(v *kvtest.Server, ft *flakyTransport, cred *hostileCred, lim *fakeLimiter) { ft.mode.Store(1) },
		"Latency": func(v *kvtest.Server, ft *flakyTransport, cred *hostileCred, lim *fakeLimiter) {
			v.SetLatency(time.Hour)
		},
	}
	for name, setup := range stages {
		for _, at := range []time.Duration{0, 50 * time.Microsecond, time.Millisecond, 100 * time.Millisecond, 3 * time.Second} {
			t.Run(fmt.Sprintf("%s/%v", name, at), func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					lim := &fakeLimiter{}
					v, p, ft, cred := env3(t, &kvsecrets.Options{Limiter: lim, FetchTimeout: 10 * time.Second})
					names, vers := seedV(t, v, "X", 12)
					setup(v, ft, cred, lim)
					done := make(chan []timedErr, 1)
					go func() { done <- mixedCalls(p, context.Background(), names, vers) }()
					time.Sleep(at)
					t0 := time.Now()
					tries := ft.calls.Load()
					p.Close()
					ft.closed.Store(true)
					res := <-done
					if d := time.Since(t0); d != 0 {
						t.Errorf("calls ended %v after Close", d)
					}
					for _, r := range res {
						if r.err == nil {
							t.Errorf("%s succeeded", r.name)
						} else if r.at >= at && !errors.Is(r.err, kvsecrets.ErrClosed) {
							t.Errorf("%s, still waiting at Close: %v, want ErrClosed", r.name, r.err)
						}
						mustNotContain(t, "error", fmt.Sprint(r.err), "value-")
					}
					time.Sleep(time.Hour)
					synctest.Wait()
					// live requests handed to the transport after Close returned
					ft.mu.Lock()
					if len(ft.afterLog) > 0 {
						t.Errorf("%d requests sent with a live context after Close returned (%d tries in all): %v", len(ft.afterLog), ft.calls.Load()-tries, ft.afterLog)
					}
					ft.mu.Unlock()
				})
			})
		}
	}
}

var _ = errors.New

// Promise 2 without a Limiter: the vault answers every request in 600 ms,
// FetchTimeout 1 s, callers 5 min. The probe's challenge and its request with
// a token take 1.2 s, so the probe times out at 1 s, the vault having answered
// its challenge: the role passes to a waiting call. The 9 waiting Gets sent
// nothing before then, so their FetchTimeout has not started: each needs
// 600 ms from its first request and must succeed.
// Broke in review 17c: all 10 fail "vault unavailable (timed out)" at 1 s;
// the vault saw 2 requests (the probe's), no waiting Get sent one.
func TestPace3SlowVaultWaitersFetchTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{FetchTimeout: time.Second})
		names := seedN(t, v, "V", 10)
		v.SetLatency(600 * time.Millisecond)
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
		defer cancel()
		res := concurrentGets(p, ctx, names)
		failed := 0
		for _, r := range res {
			if r.err != nil {
				failed++
				t.Logf("%s: %v after %v", r.name, r.err, r.at)
			}
		}
		firsts := map[string]time.Time{}
		for _, r := range v.RequestLog() {
			if f, ok := firsts[r.Secret]; !ok || r.Time.Before(f) {
				firsts[r.Secret] = r.Time
			}
		}
		t.Logf("slow vault: %d of 10 failed; %d challenges; %d requests; %d secrets with a request", failed, v.Counts().Unauthenticated, v.Counts().Total, len(firsts))
		if failed > 1 {
			t.Errorf("vault answering in 600 ms, FetchTimeout 1 s, callers 5 min: %d of 10 first Gets failed; at most the probe may (the others' FetchTimeout starts at their first request)", failed)
		}
	})
}

// Close while 20 reads are held behind the probe's challenge (the vault
// answers in 1 min): nothing but that challenge may reach the vault, before
// or after Close (TestPace2CloseEndsChallengeHold, run many times, with the
// transport watching what is handed to it and when).
// Broke in review 17c (intermittent, ~1 run in 5 here; also why
// TestPace2CloseEndsChallengeHold fails ~5% of runs): Close cancels the
// probe's challenge, and 4 held reads (the first burst) are then handed to
// the transport anyway, with contexts already ended, and reach the vault's
// log as 4 more unauthenticated requests (status 0), after Close.
func TestPace3CloseDuringChallengeHoldNoSends(t *testing.T) {
	for i := range 20 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				v, p, ft, _ := env3(t, nil)
				names, vers := seedV(t, v, "C", 20)
				v.SetLatency(time.Minute)
				done := make(chan []timedErr, 1)
				go func() { done <- mixedCalls(p, context.Background(), names, vers) }()
				time.Sleep(time.Second)
				synctest.Wait()
				before := ft.calls.Load()
				p.Close()
				ft.closed.Store(true)
				for _, r := range <-done {
					if !errors.Is(r.err, kvsecrets.ErrClosed) {
						t.Errorf("%s held at Close: %v", r.name, r.err)
					}
				}
				time.Sleep(2 * time.Minute)
				synctest.Wait()
				var log []string
				for _, r := range v.RequestLog() {
					log = append(log, fmt.Sprintf("%s %s auth=%v status=%d", r.Op, r.Secret, r.Authorized, r.Status))
				}
				if before > 1 || ft.calls.Load() > 1 {
					t.Errorf("20 reads held behind one challenge, Closed at 1 s: %d requests handed to the transport before Close, %d in all; vault log %v; live after Close %v", before, ft.calls.Load(), log, ft.afterLog)
				}
			})
		})
	}
}
