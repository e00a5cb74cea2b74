package hostile

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvsecrets/kvsecrets"
)

const secretValue = "VALUE-7c1d-DISTINCTIVE-do-not-leak"

// TestNotifyInvalidInputRefused: bad notices are refused with an error that
// does not repeat the input, change nothing, and make no request.
func TestNotifyInvalidInputRefused(t *testing.T) {
	srv := newVault(t)
	srv.SetSecret("Api", secretValue, nil)
	lb := &logBuf{}
	const v2 = "V2PLACEHOLDER"

	marker := "LEAKMARK" + secretValue
	huge := strings.Repeat("A", 1<<20) + marker
	cases := []struct {
		what   string
		n      kvsecrets.Notice
		is     error // expected sentinel, nil: any error
		needEr bool
	}{
		{"empty name", kvsecrets.Notice{Name: ""}, kvsecrets.ErrInvalidName, true},
		{"name with slash", kvsecrets.Notice{Name: "Api/" + marker}, kvsecrets.ErrInvalidName, true},
		{"name with dotdot", kvsecrets.Notice{Name: "../" + marker}, kvsecrets.ErrInvalidName, true},
		{"name 128 chars", kvsecrets.Notice{Name: strings.Repeat("a", 128) + marker}, kvsecrets.ErrInvalidName, true},
		{"name unicode", kvsecrets.Notice{Name: "Äpi" + marker}, kvsecrets.ErrInvalidName, true},
		{"name NUL", kvsecrets.Notice{Name: "Api\x00" + marker}, kvsecrets.ErrInvalidName, true},
		{"name newline (log injection)", kvsecrets.Notice{Name: "Api\nlevel=ERROR msg=" + marker}, kvsecrets.ErrInvalidName, true},
		{"name 1MiB", kvsecrets.Notice{Name: huge}, kvsecrets.ErrInvalidName, true},
		{"name is a value", kvsecrets.Notice{Name: "Server=x;Password=" + marker}, kvsecrets.ErrInvalidName, true},
		{"version non-hex", kvsecrets.Notice{Name: "Api", Version: "zz" + marker}, kvsecrets.ErrInvalidVersion, true},
		{"version slash", kvsecrets.Notice{Name: "Api", Version: v2 + "/" + marker}, kvsecrets.ErrInvalidVersion, true},
		{"version ?query", kvsecrets.Notice{Name: "Api", Version: v2 + "?" + marker}, kvsecrets.ErrInvalidVersion, true},
		{"version 1MiB", kvsecrets.Notice{Name: "Api", Version: huge}, kvsecrets.ErrInvalidVersion, true},
		{"version unicode", kvsecrets.Notice{Name: "Api", Version: "ａｂｃ" + marker}, kvsecrets.ErrInvalidVersion, true},
		{"negative Delay", kvsecrets.Notice{Name: "Api", Version: v2, Delay: -time.Hour}, nil, true},
		{"negative Spread", kvsecrets.Notice{Name: "Api", Version: v2, Spread: -time.Hour}, nil, true},
		{"MinInt64 Delay", kvsecrets.Notice{Name: "Api", Version: v2, Delay: math.MinInt64}, nil, true},
		{"MaxInt64 Delay+Spread (overflow)", kvsecrets.Notice{Name: "Api", Version: v2, Delay: math.MaxInt64, Spread: math.MaxInt64}, nil, true},
		{"vault with spaces", kvsecrets.Notice{Vault: "evil host " + marker, Name: "Api", Version: v2}, nil, true},
		{"vault 1MiB", kvsecrets.Notice{Vault: huge, Name: "Api", Version: v2}, nil, true},
		{"vault NUL/newline", kvsecrets.Notice{Vault: "kvtest.vault.azure.net\x00\n" + marker, Name: "Api", Version: v2}, nil, true},
		{"vault javascript:", kvsecrets.Notice{Vault: "javascript:alert(1)//" + marker, Name: "Api", Version: v2}, nil, true},
		{"vault URL with userinfo+path", kvsecrets.Notice{Vault: "https://" + marker + "@kvtest.vault.azure.net/secrets/x?y#z", Name: "Api", Version: v2}, nil, true},
	}
	for _, c := range cases {
		t.Run(c.what, func(t *testing.T) {
			p := newProvider(t, srv, &kvsecrets.Options{Logger: lb.logger()})
			old := mustGet(t, p, "Api")
			next, _ := srv.SetSecret("Api", secretValue+"-next", nil)
			c.n.Name = strings.ReplaceAll(c.n.Name, v2, next)
			c.n.Version = strings.ReplaceAll(c.n.Version, v2, next)
			srv.ResetCounts()
			before := p.Stats()
			acted, err := p.Notify(c.n)
			after := p.Stats()
			if acted {
				t.Errorf("Notify acted (true) on invalid input")
			}
			if after != before {
				t.Errorf("stats changed by the call: Notices %d→%d, EventsActedOn %d→%d", before.Notices, after.Notices, before.EventsActedOn, after.EventsActedOn)
			}
			if err == nil {
				if c.needEr {
					t.Errorf("Notify returned no error for invalid input (acted=%v)", acted)
				}
			} else {
				if c.is != nil && !errors.Is(err, c.is) {
					t.Errorf("error %q does not wrap %v", err, c.is)
				}
				if strings.Contains(err.Error(), "LEAKMARK") || len(err.Error()) > 300 {
					t.Errorf("error repeats the input (len %d): %.200q", len(err.Error()), err.Error())
				}
				t.Logf("error: %v", err)
			}
			time.Sleep(150 * time.Millisecond) // nothing to wait on: checking that no refresh happens
			if n := len(srv.RequestLog()); n != 0 {
				t.Errorf("invalid notice made %d vault request(s)", n)
			}
			if s := mustGet(t, p, "Api"); s.Version != old.Version {
				t.Errorf("served version changed")
			}
			p.Close()
		})
	}
	if strings.Contains(lb.String(), "LEAKMARK") || strings.Contains(lb.String(), secretValue) {
		t.Errorf("logs repeat input or value")
	}
}

// TestNotifyHugeDelayDoesNotSwallowLaterNotice: a notice with an absurd Delay
// (forged, or a fan-out's arithmetic gone wrong) must not plan a refresh far
// away into which every later, genuine notice is coalesced.
func TestNotifyHugeDelayDoesNotSwallowLaterNotice(t *testing.T) {
	srv := newVault(t)
	srv.SetSecret("Api", secretValue, nil)
	p := newProvider(t, srv, &kvsecrets.Options{EventCoalesceWindow: 100 * time.Millisecond})
	mustGet(t, p, "Api")
	v2, _ := srv.SetSecret("Api", secretValue+"-2", nil)
	srv.ResetCounts()
	acted, err := p.Notify(kvsecrets.Notice{Name: "Api", Version: v2, Delay: 100 * 365 * 24 * time.Hour})
	t.Logf("Notify(Delay=100y) = %v, %v", acted, err)
	time.Sleep(250 * time.Millisecond) // past the coalesce window
	acted, err = p.Notify(kvsecrets.Notice{Name: "Api", Version: v2})
	t.Logf("Notify(genuine) = %v, %v", acted, err)
	eventually(t, 5*time.Second, "the genuine notice's refresh", func() bool {
		return mustGet(t, p, "Api").Version == v2
	})
}

// TestNotifyFloodCoalesced: many notices, forged versions included, fold into
// at most one read per secret per window.
func TestNotifyFloodCoalesced(t *testing.T) {
	srv := newVault(t)
	srv.SetSecret("Api", secretValue, nil)
	const window = 200 * time.Millisecond
	p := newProvider(t, srv, &kvsecrets.Options{EventCoalesceWindow: window})
	mustGet(t, p, "Api")
	srv.ResetCounts()
	start := time.Now()
	const dur = time.Second
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; time.Since(start) < dur; i++ {
				// forged versions: well-formed but nonexistent, each different
				v := strings.Repeat("0", 24) + hex8(uint32(g<<24|i))
				if _, err := p.Notify(kvsecrets.Notice{Name: "Api", Version: v}); err != nil {
					t.Errorf("Notify: %v", err)
					return
				}
				p.Notify(kvsecrets.Notice{Name: "Api"}) // unknown version
			}
		}(g)
	}
	wg.Wait()
	elapsed := time.Since(start)
	time.Sleep(2 * window) // let the last window's refresh land; nothing to wait on
	n := getsOf(srv, "Api")
	max := int(elapsed/window) + 2
	t.Logf("%d reads in %v (window %v, allowed %d)", n, elapsed, window, max)
	if n > max {
		t.Errorf("%d vault reads for a flood over %v with window %v: want at most %d", n, elapsed, window, max)
	}
	if n == 0 {
		t.Errorf("no read at all")
	}
}

func hex8(x uint32) string {
	const h = "0123456789abcdef"
	b := make([]byte, 8)
	for i := 7; i >= 0; i-- {
		b[i] = h[x&15]
		x >>= 4
	}
	return string(b)
}

// TestNotifyNoRequestWhenNotNews: other vaults, uncached names, the version
// served, and a closed Provider make no request.
func TestNotifyNoRequestWhenNotNews(t *testing.T) {
	srv := newVault(t)
	v1, _ := srv.SetSecret("Api", secretValue, nil)
	srv.SetSecret("Uncached", secretValue, nil)
	p := newProvider(t, srv, &kvsecrets.Options{EventCoalesceWindow: time.Millisecond})
	mustGet(t, p, "Api")
	v2, _ := srv.SetSecret("Api", secretValue+"-2", nil)
	srv.ResetCounts()
	for i := 0; i < 1000; i++ {
		for _, n := range []kvsecrets.Notice{
			{Vault: "other.vault.azure.net", Name: "Api", Version: v2},
			{Vault: "https://other.vault.azure.net/", Name: "Api", Version: v2},
			{Vault: "kvtest.vault.azure.net.evil.com", Name: "Api", Version: v2},
			{Vault: "evilkvtest.vault.azure.net", Name: "Api", Version: v2},
			{Name: "Uncached", Version: v2},
			{Name: "Uncached"},
			{Name: "Api", Version: v1},
			{Name: "api", Version: v1}, // names are case-insensitive in Key Vault
			{Name: "Api", Version: strings.ToUpper(v1)},
		} {
			acted, err := p.Notify(n)
			if acted || err != nil {
				t.Fatalf("Notify(%+v) = %v, %v; want false, nil", n, acted, err)
			}
		}
	}
	time.Sleep(100 * time.Millisecond) // nothing to wait on: checking that nothing happens
	if n := len(srv.RequestLog()); n != 0 {
		t.Errorf("%d requests for notices that were not news: %+v", n, srv.RequestLog()[0])
	}
	p.Close()
	acted, err := p.Notify(kvsecrets.Notice{Name: "Api", Version: v2})
	if acted {
		t.Errorf("Notify after Close acted (err %v)", err)
	}
	if n := p.NotifyAll(time.Second); n != 0 {
		t.Errorf("NotifyAll after Close = %d", n)
	}
	time.Sleep(100 * time.Millisecond)
	if n := len(srv.RequestLog()); n != 0 {
		t.Errorf("%d requests after Close", n)
	}
}

// TestNotifyOwnVaultSpellings: the Provider's own vault, however spelled, is
// its own vault.
func TestNotifyOwnVaultSpellings(t *testing.T) {
	srv := newVault(t)
	srv.SetSecret("Api", secretValue, nil)
	for _, vault := range []string{"", "kvtest.vault.azure.net", "https://kvtest.vault.azure.net/", "https://kvtest.vault.azure.net", "KVTEST.VAULT.AZURE.NET", "kvtest.vault.azure.net:443"} {
		t.Run(vault, func(t *testing.T) {
			p := newProvider(t, srv, nil)
			mustGet(t, p, "Api")
			v, _ := srv.SetSecret("Api", secretValue+vault, nil)
			acted, err := p.Notify(kvsecrets.Notice{Vault: vault, Name: "Api", Version: v})
			if err != nil || !acted {
				t.Fatalf("Notify(own vault as %q) = %v, %v", vault, acted, err)
			}
			eventually(t, 5*time.Second, "refresh", func() bool { return mustGet(t, p, "Api").Version == v })
			p.Close()
		})
	}
}

// TestNotifyAllReadsEachOnceWithinSpread.
func TestNotifyAllReadsEachOnceWithinSpread(t *testing.T) {
	srv := newVault(t)
	p := newProvider(t, srv, nil)
	names := []string{}
	for i := 0; i < 20; i++ {
		n := "S" + hex8(uint32(i))
		srv.SetSecret(n, secretValue, nil)
		names = append(names, n)
		mustGet(t, p, n)
	}
	srv.ResetCounts()
	const spread = time.Second
	start := time.Now()
	got := p.NotifyAll(spread)
	if got != len(names) {
		t.Errorf("NotifyAll = %d, want %d", got, len(names))
	}
	// A second call at once must not double the reads.
	p.NotifyAll(spread)
	eventually(t, spread+3*time.Second, "every secret re-read", func() bool {
		for _, n := range names {
			if getsOf(srv, n) < 1 {
				return false
			}
		}
		return true
	})
	time.Sleep(spread) // let any extra reads show; nothing to wait on
	ts := getTimes(srv, "")
	var first, last time.Time
	for i, tt := range ts {
		if i == 0 || tt.Before(first) {
			first = tt
		}
		if tt.After(last) {
			last = tt
		}
	}
	for _, n := range names {
		if c := getsOf(srv, n); c != 1 {
			t.Errorf("%s read %d times, want 1", n, c)
		}
	}
	if last.Sub(start) > spread+500*time.Millisecond {
		t.Errorf("last read %v after NotifyAll, spread %v", last.Sub(start), spread)
	}
	if last.Sub(first) < spread/4 {
		t.Errorf("reads not spread: all within %v", last.Sub(first))
	}
}

// TestAddOnRotateHooks: removal, panics recovered, no value in the log.
func TestAddOnRotateHooks(t *testing.T) {
	srv := newVault(t)
	srv.SetSecret("Api", secretValue, nil)
	lb := &logBuf{}
	p := newProvider(t, srv, &kvsecrets.Options{Logger: lb.logger()})
	mustGet(t, p, "Api")

	var mu sync.Mutex
	var calls []string
	rec := func(tag string) func(kvsecrets.RotationEvent) {
		return func(kvsecrets.RotationEvent) { mu.Lock(); calls = append(calls, tag); mu.Unlock() }
	}
	removeA := p.AddOnRotate(rec("A"))
	p.AddOnRotate(func(ev kvsecrets.RotationEvent) { panic(ev) }) // a Secret inside
	p.AddOnRotate(func(ev kvsecrets.RotationEvent) { panic("hook failed on " + ev.Secret.Value()) })
	p.AddOnRotate(func(ev kvsecrets.RotationEvent) { panic(errors.New("wrapped: " + ev.Secret.Value())) })
	removeB := p.AddOnRotate(rec("B"))
	p.AddOnRotate(rec("C"))

	if _, err := p.Rotate(context.Background(), "Api", secretValue+"-r1", nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "hooks", func() bool { mu.Lock(); defer mu.Unlock(); return len(calls) == 3 })
	mu.Lock()
	if strings.Join(calls, "") != "ABC" {
		t.Errorf("hooks ran as %v, want A B C in order", calls)
	}
	calls = nil
	mu.Unlock()
	removeA()
	removeA() // twice: harmless
	removeB()
	if _, err := p.Rotate(context.Background(), "Api", secretValue+"-r2", nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "hook C", func() bool { mu.Lock(); defer mu.Unlock(); return len(calls) >= 1 })
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	if strings.Join(calls, "") != "C" {
		t.Errorf("after removing A and B, hooks ran as %v, want C", calls)
	}
	mu.Unlock()
	logs := lb.String()
	if !strings.Contains(strings.ToLower(logs), "panic") {
		t.Errorf("no panic logged")
	}
	if strings.Contains(logs, secretValue) {
		i := strings.Index(logs, secretValue)
		lo := max(0, i-200)
		t.Errorf("panic log contains the secret value: ...%s...", logs[lo:min(len(logs), i+60)])
	}
}
