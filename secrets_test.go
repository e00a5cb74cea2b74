package kvsecrets

import (
	"context"
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestGetReadsOnceThenServesFromMemory(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		ver := v.set("MyApiKey", "s3cret-1")
		p := v.newProvider(t, nil)
		ctx := context.Background()
		for range 100 {
			got, err := p.Get(ctx, "MyApiKey")
			if err != nil || got != "s3cret-1" {
				t.Fatalf("Get = %q, %v", got, err)
			}
		}
		if n := v.requests.Load(); n != 1 {
			t.Fatalf("vault requests = %d, want 1", n)
		}
		s, err := p.GetSecret(ctx, "MyApiKey")
		if err != nil || s.Version != ver || s.Name != "MyApiKey" || s.Value() != "s3cret-1" {
			t.Fatalf("GetSecret = %v (%q), %v", s, s.Value(), err)
		}
		st := p.Stats()
		if st.Hits != 100 || st.Misses != 1 || st.VaultRequests != 1 || st.Entries != 1 {
			t.Fatalf("stats = %+v", st)
		}
	})
}

func TestColdBurstSharesOneRequest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("Burst", "value")
		v.gate = make(chan struct{})
		p := v.newProvider(t, nil)
		const n = 1000
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for range n {
			wg.Go(func() {
				got, err := p.Get(context.Background(), "Burst")
				if err == nil && got != "value" {
					err = errors.New("wrong value")
				}
				errs <- err
			})
		}
		synctest.Wait() // everyone is waiting on the one request
		close(v.gate)
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if got := v.requests.Load(); got != 1 {
			t.Fatalf("vault requests = %d, want 1", got)
		}
	})
}

func TestCanceledCallerDoesNotFailOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("K", "value")
		v.gate = make(chan struct{})
		p := v.newProvider(t, nil)
		ctx, cancel := context.WithCancel(context.Background())
		var aErr, bErr error
		var b string
		var wg sync.WaitGroup
		wg.Go(func() { _, aErr = p.Get(ctx, "K") })
		wg.Go(func() { b, bErr = p.Get(context.Background(), "K") })
		synctest.Wait()
		cancel()
		synctest.Wait()
		if !errors.Is(aErr, context.Canceled) {
			t.Fatalf("canceled caller got %v, want context.Canceled at once", aErr)
		}
		close(v.gate)
		wg.Wait()
		if bErr != nil || b != "value" {
			t.Fatalf("other caller got %q, %v", b, bErr)
		}
	})
}

func TestSharedReadIsBoundedByFetchTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("K", "value")
		v.gate = make(chan struct{}) // never opens
		p := v.newProvider(t, &Options{FetchTimeout: 5 * time.Second})
		start := time.Now()
		_, err := p.Get(context.Background(), "K")
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("err = %v, want ErrUnavailable", err)
		}
		if d := time.Since(start); d != 5*time.Second {
			t.Fatalf("gave up after %v, want 5s", d)
		}
	})
}

func TestInvalidNamesNeverReachTheNetwork(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("Good", "x")
		p := v.newProvider(t, nil)
		mustGet(t, p, "Good", "x")
		bad := []string{"", "has space", "under_score", "dot.ted", "slash/name", "q?x=1", "ünïcode",
			strings.Repeat("a", 128), "../secrets", "name\n", "%2e%2e"}
		ctx := context.Background()
		for _, name := range bad {
			_, err := p.Get(ctx, name)
			if !errors.Is(err, ErrInvalidName) {
				t.Errorf("Get(%q) = %v, want ErrInvalidName", name, err)
			}
			if name != "" && strings.Contains(err.Error(), name) {
				t.Errorf("error repeats the invalid name: %v", err)
			}
			if _, err := p.GetSecret(ctx, name); !errors.Is(err, ErrInvalidName) {
				t.Errorf("GetSecret(%q) = %v", name, err)
			}
			if _, err := p.Refresh(ctx, name); !errors.Is(err, ErrInvalidName) {
				t.Errorf("Refresh(%q) = %v", name, err)
			}
			if _, err := p.GetVersion(ctx, name, "abc"); !errors.Is(err, ErrInvalidName) {
				t.Errorf("GetVersion(%q) = %v", name, err)
			}
		}
		if err := p.Preload(ctx, "Good", "bad name", "Other"); !errors.Is(err, ErrInvalidName) {
			t.Fatalf("Preload = %v", err)
		}
		for _, ver := range []string{"", "abc-def", "abc/def", strings.Repeat("a", 65)} {
			if _, err := p.GetVersion(ctx, "Good", ver); !errors.Is(err, ErrInvalidVersion) || !errors.Is(err, ErrInvalidName) {
				t.Errorf("GetVersion(Good, %q) = %v", ver, err)
			}
		}
		if n := v.requests.Load(); n != 1 {
			t.Fatalf("requests = %d, want only the valid one", n)
		}
		mustGet(t, p, "Good", "x") // nothing cached was lost
		for _, name := range []string{"a", "A-1", strings.Repeat("Z", 127), "0", "-"} {
			if err := checkName(name); err != nil {
				t.Errorf("checkName(%q) = %v", name, err)
			}
		}
	})
}

func TestNamesAreCaseInsensitive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("MyApiKey", "v1")
		p := v.newProvider(t, &Options{TTL: time.Minute})
		spellings := []string{"MyApiKey", "myapikey", "MYAPIKEY", "myApiKey"}
		for _, s := range spellings {
			mustGet(t, p, s, "v1")
		}
		if n := v.requests.Load(); n != 1 || p.Stats().Entries != 1 {
			t.Fatalf("requests = %d, entries = %d; want one of each", n, p.Stats().Entries)
		}
		v.set("MYAPIKEY", "v2")
		time.Sleep(time.Minute)
		synctest.Wait()
		for _, s := range spellings {
			mustGet(t, p, s, "v2")
		}
		// Many spellings beyond the fast-path slots still agree.
		for i := range 20 {
			b := []byte("myapikey")
			for j := range b {
				if i>>j&1 == 1 {
					b[j] -= 'a' - 'A'
				}
			}
			mustGet(t, p, string(b), "v2")
		}
	})
}

func TestGetVersionPinsAVersion(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v1 := v.set("K", "v1")
		v.set("K", "v2")
		p := v.newProvider(t, &Options{TTL: time.Hour})
		ctx := context.Background()
		for range 3 {
			s, err := p.GetVersion(ctx, "K", v1)
			if err != nil || s.Value() != "v1" || s.Version != v1 {
				t.Fatalf("GetVersion = %v, %v", s, err)
			}
		}
		if _, err := p.GetVersion(ctx, "k", strings.ToUpper(v1)); err != nil {
			t.Fatal(err)
		}
		if n := v.requests.Load(); n != 1 {
			t.Fatalf("requests = %d, want 1", n)
		}
		mustGet(t, p, "K", "v2") // the latest is its own entry
		time.Sleep(10 * time.Hour)
		synctest.Wait()
		// The latest is refreshed every 45m; the pinned version never.
		for _, r := range v.requestLog()[2:] {
			if r.Version != "" {
				t.Fatalf("pinned version refreshed in the background at %v", r.At)
			}
		}
		// On use after TTL, a pinned version is re-validated in the background.
		n := v.requests.Load()
		if _, err := p.GetVersion(ctx, "K", v1); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if v.requests.Load() != n+1 {
			t.Fatal("stale pinned version was not re-validated")
		}
		if _, err := p.GetVersion(ctx, "K", "0123456789abcdef0123456789abcdef"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown version: %v", err)
		}
	})
}

func TestPreloadIsParallelAndBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		var names []string
		for i := range 40 {
			n := "secret-" + strconv.Itoa(i)
			names = append(names, n)
			v.set(n, "value-"+strconv.Itoa(i))
		}
		v.latency = 100 * time.Millisecond
		// Without pacing, which would spread the first window's requests
		// (TestPacingLoneStart measures what it costs).
		p := v.newProvider(t, &Options{PreloadConcurrency: 8, DisablePacing: true})
		start := time.Now()
		if err := p.Preload(context.Background(), append(names, "SECRET-0")...); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d != 500*time.Millisecond {
			t.Fatalf("Preload of 40 at 100ms with 8 at once took %v, want 500ms", d)
		}
		if peak := v.peak.Load(); peak != 8 {
			t.Fatalf("peak concurrency = %d, want 8", peak)
		}
		if n := v.requests.Load(); n != 40 {
			t.Fatalf("requests = %d, want 40", n)
		}
		before := v.requests.Load()
		for i, n := range names {
			mustGet(t, p, n, "value-"+strconv.Itoa(i))
		}
		if v.requests.Load() != before {
			t.Fatal("preloaded secrets were read again")
		}
	})
}

func TestPreloadJoinsEveryFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("Ok", "x")
		v.setFail(func(name string) (int, string) {
			if name == "Forbidden" {
				return http.StatusForbidden, "Forbidden"
			}
			return 0, ""
		})
		p := v.newProvider(t, nil)
		err := p.Preload(context.Background(), "Ok", "MissingOne", "Forbidden")
		if !errors.Is(err, ErrNotFound) || !errors.Is(err, ErrForbidden) {
			t.Fatalf("err = %v", err)
		}
		for _, want := range []string{`"MissingOne"`, `"Forbidden"`} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error does not name %s: %v", want, err)
			}
		}
		mustGet(t, p, "Ok", "x")
		if n := v.count("Ok"); n != 1 {
			t.Fatalf("the success was not kept: %d reads", n)
		}
	})
}

func TestErrorsWrapSentinelAndResponseError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		p := v.newProvider(t, nil)
		_, err := p.Get(context.Background(), "Missing")
		var re *azcore.ResponseError
		if !errors.Is(err, ErrNotFound) || !errors.As(err, &re) || re.StatusCode != 404 || re.ErrorCode != "SecretNotFound" {
			t.Fatalf("err = %v", err)
		}
		var se *SecretError
		if !errors.As(err, &se) || se.Name != "Missing" {
			t.Fatalf("err = %#v", err)
		}
		if got := err.Error(); got != `kvsecrets: secret "Missing": secret not found (404 SecretNotFound)` {
			t.Fatalf("message = %q", got)
		}
	})
}

func TestCloseStopsEverything(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("K", "v")
		v.set("Slow", "v")
		p := v.newProvider(t, &Options{TTL: time.Second})
		mustGet(t, p, "K", "v")
		v.gate = make(chan struct{})
		done := make(chan error)
		go func() { _, err := p.Get(context.Background(), "Slow"); done <- err }()
		synctest.Wait()
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-done; !errors.Is(err, ErrClosed) {
			t.Fatalf("a read in flight at Close: %v, want ErrClosed", err)
		}
		for _, err := range []error{
			func() error { _, err := p.Get(context.Background(), "K"); return err }(),
			func() error { _, err := p.GetSecret(context.Background(), "K"); return err }(),
			func() error { _, err := p.GetVersion(context.Background(), "K", "abc"); return err }(),
			func() error { _, err := p.Refresh(context.Background(), "K"); return err }(),
			p.Preload(context.Background(), "K"),
		} {
			if !errors.Is(err, ErrClosed) {
				t.Errorf("after Close: %v, want ErrClosed", err)
			}
		}
		if err := p.Close(); err != nil {
			t.Fatal("second Close:", err)
		}
		n := v.requests.Load()
		time.Sleep(time.Hour)
		if v.requests.Load() != n {
			t.Fatal("refreshes after Close")
		}
		// synctest.Test itself fails if any goroutine of the bubble is left.
	})
}

func TestNewProviderValidates(t *testing.T) {
	cred := &azfake.TokenCredential{}
	for _, u := range []string{"http://x.vault.azure.net/", "x.vault.azure.net", "https://", "https:///path",
		"https://user:pw@x.vault.azure.net/", "https://x.vault.azure.net/?a=b", "https://x.vault.azure.net/secrets", "://"} {
		if _, err := NewProvider(u, cred, nil); err == nil || !strings.HasPrefix(err.Error(), "kvsecrets: ") {
			t.Errorf("NewProvider(%q) = %v", u, err)
		}
	}
	for _, o := range []Options{{TTL: -1}, {MaxStale: -time.Second}, {NegativeTTL: -1}, {RefreshAt: 1.5},
		{RefreshAt: 0.9, RefreshJitter: 0.2}, {RefreshAt: 0.95}, {PreloadConcurrency: -1}, {FetchTimeout: -1},
		{RetryBackoff: time.Minute, MaxRetryBackoff: time.Second}, {RefreshJitter: math.NaN()}} {
		_, err := NewProvider(fakeVaultURL, cred, &o)
		if err == nil || !strings.HasPrefix(err.Error(), "kvsecrets: Options.") {
			t.Errorf("NewProvider(%+v) = %v", o, err)
		}
	}
	p, err := NewProvider("https://x.vault.azure.net", cred, &Options{TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.VaultURL() != "https://x.vault.azure.net/" || p.cfg.ttl != time.Second || p.cfg.maxStale != DefaultMaxStale {
		t.Fatalf("url %q, cfg %+v", p.VaultURL(), p.cfg)
	}
}

func TestNilCredentialMeansDefaultAzureCredential(t *testing.T) {
	p, err := NewProvider("https://x.vault.azure.net/", nil, nil)
	if err != nil {
		t.Skipf("DefaultAzureCredential unavailable here: %v", err)
	}
	p.Close()
}

// TestBurstsWithoutAGateStillReadOnce races callers against the end of the
// shared read, on the real clock: a caller that saw the empty entry just
// before the read finished must not start a second read.
func TestBurstsWithoutAGateStillReadOnce(t *testing.T) {
	for range 20 {
		v := newFakeVault()
		v.set("K", "v")
		v.latency = time.Millisecond
		p := v.newProvider(t, nil)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 200 {
			wg.Go(func() {
				<-start
				if _, err := p.Get(context.Background(), "K"); err != nil {
					t.Error(err)
				}
			})
		}
		close(start)
		wg.Wait()
		if n := v.requests.Load(); n != 1 {
			t.Fatalf("vault reads = %d, want 1", n)
		}
		p.Close()
	}
}

func TestPinnedVersionStaleRulesAndRevocation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v1 := v.set("K", "v1")
		p := v.newProvider(t, &Options{TTL: time.Hour, MaxStale: 3 * time.Hour, IdleTimeout: 24 * time.Hour})
		ctx := context.Background()
		get := func() (Secret, error) { return p.GetVersion(ctx, "K", v1) }
		if _, err := get(); err != nil {
			t.Fatal(err)
		}
		v.setFail(func(string) (int, string) { return http.StatusServiceUnavailable, "" })
		time.Sleep(2 * time.Hour)
		if s, err := get(); err != nil || s.Value() != "v1" {
			t.Fatalf("within MaxStale during an outage: %v, %v", s, err)
		}
		synctest.Wait() // the re-validation fails; the value stays
		if p.Stats().RefreshFailures != 1 {
			t.Fatalf("stats = %+v", p.Stats())
		}
		time.Sleep(time.Hour)
		if _, err := get(); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("past MaxStale: %v, want ErrUnavailable", err)
		}
		v.setFail(nil)
		if s, err := get(); err != nil || s.Value() != "v1" {
			t.Fatalf("after the outage: %v, %v", s, err)
		}
		// Disabling a version is seen at the next re-validation.
		v.setFail(func(string) (int, string) { return http.StatusForbidden, "Forbidden" })
		time.Sleep(time.Hour)
		get() // served once more while it is re-validated
		synctest.Wait()
		if _, err := get(); !errors.Is(err, ErrForbidden) {
			t.Fatalf("after revocation: %v, want ErrForbidden", err)
		}
	})
}

// TestRefreshAtAndJitterFollowOneRule: RefreshAt+RefreshJitter above 1 is
// refused whether the jitter was set or defaulted, and the error says what
// to set.
func TestRefreshAtAndJitterFollowOneRule(t *testing.T) {
	cred := &azfake.TokenCredential{}
	for _, o := range []Options{{RefreshAt: 0.95}, {RefreshAt: 0.95, RefreshJitter: 0.15}, {RefreshAt: 1}} {
		_, err := NewProvider(fakeVaultURL, cred, &o)
		if err == nil || !strings.Contains(err.Error(), "RefreshJitter") || !strings.Contains(err.Error(), "DisableJitter") {
			t.Errorf("NewProvider(RefreshAt %v, RefreshJitter %v) = %v", o.RefreshAt, o.RefreshJitter, err)
		}
	}
	for _, o := range []Options{{RefreshAt: 0.85}, {RefreshAt: 0.95, RefreshJitter: 0.05}, {RefreshAt: 0.95, DisableJitter: true},
		{RefreshAt: 1, DisableJitter: true}, {RefreshAt: 0.7, RefreshJitter: 0.3}} {
		p, err := NewProvider(fakeVaultURL, cred, &o)
		if err != nil {
			t.Errorf("NewProvider(%+v) = %v", o, err)
			continue
		}
		p.Close()
	}
}
