package kvsecrets_test

// Hostile review 12: reproducers for the "Bounded whatever callers send"
// promises of README.md, written against the public API and kvtest only.
// Each test fails when the promise it names is broken.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
	"go.uber.org/goleak"
)

// h12ProviderGoroutines counts the goroutines running the Provider's own
// code (its scheduler and reads). runtime.NumGoroutine counts the whole
// process, where other tests' servers come and go.
func h12ProviderGoroutines() int {
	buf := make([]byte, 1<<22)
	return strings.Count(string(buf[:runtime.Stack(buf, true)]), "kvsecrets.(*Provider).run")
}

func h12Race() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" && s.Value == "true" {
			return true
		}
	}
	return false
}

// h12Scale picks the size of a test: normal, or under -race (about ten
// times slower).
func h12Scale(normal, race int) int {
	if h12Race() {
		return race
	}
	return normal
}

func h12Heap() uint64 {
	var m runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func h12Vault(t *testing.T) *kvtest.Server {
	t.Helper()
	v, err := kvtest.NewInProcess(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	return v
}

func h12Prov(t *testing.T, v *kvtest.Server, o *kvsecrets.Options) *kvsecrets.Provider {
	t.Helper()
	if o == nil {
		o = &kvsecrets.Options{}
	}
	o.ClientOptions = v.ClientOptions()
	p, err := kvsecrets.NewProvider(v.URL(), v.Credential(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func h12Set(t *testing.T, v *kvtest.Server, name, val string) string {
	t.Helper()
	id, err := v.SetSecret(name, val, nil)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func h12Get(t *testing.T, p *kvsecrets.Provider, name, want string) {
	t.Helper()
	got, err := p.Get(context.Background(), name)
	if err != nil || got != want {
		t.Fatalf("Get(%s) = %q, %v; want %q", name, got, err, want)
	}
}

func h12Deliver(h http.Handler, body []byte) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, "/events", bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func h12SmallEvent(typ, name, version string) string {
	return fmt.Sprintf(`{"eventType":"%s","data":{"Id":"https://kvtest.vault.azure.net/secrets/%s/%s"}}`, typ, name, version)
}

// ---- shared builders ----

func h12Junk() map[string][]byte {
	const mib = 1 << 20
	m := map[string][]byte{}
	m["deep-array"] = bytes.Repeat([]byte("["), mib)
	m["deep-object"] = []byte(strings.Repeat(`{"a":`, mib/5))
	m["deep-in-event"] = []byte(`[{"eventType":"Microsoft.KeyVault.SecretNewVersionCreated","data":` + strings.Repeat(`{"a":`, (mib-200)/5) + `}]`)
	m["deep-array-in-event"] = []byte(`[{"eventType":"Microsoft.KeyVault.SecretNewVersionCreated","data":{"Id":` + strings.Repeat(`[`, mib-200) + `}}]`)
	m["huge-string"] = []byte(`[{"eventType":"x","data":"` + strings.Repeat("a", mib-100) + `"}]`)
	m["huge-id-handled"] = []byte(`[{"eventType":"Microsoft.KeyVault.SecretNewVersionCreated","data":{"Id":"https://kvtest.vault.azure.net/secrets/` + strings.Repeat("a", mib-200) + `/v"}}]`)
	m["huge-escaped-string"] = []byte(`[{"eventType":"Microsoft.KeyVault.SecretNewVersionCreated","data":{"Id":"` + strings.Repeat(`\u0041`, (mib-200)/6) + `"}}]`)
	var b strings.Builder
	b.WriteString(`[{"eventType":"x"`)
	for i := 0; b.Len() < mib-100; i++ {
		fmt.Fprintf(&b, `,"k%d":1`, i)
	}
	b.WriteString(`}]`)
	m["many-keys"] = []byte(b.String())
	b.Reset()
	b.WriteString(`[{"eventType":"Microsoft.KeyVault.SecretNewVersionCreated","data":{"Id":"https://kvtest.vault.azure.net/secrets/s/v"`)
	for i := 0; b.Len() < mib-100; i++ {
		fmt.Fprintf(&b, `,"k%d":1`, i)
	}
	b.WriteString(`}}]`)
	m["many-keys-handled"] = []byte(b.String())
	b.Reset()
	b.WriteString(`[{"eventType":"x"`)
	for b.Len() < mib-100 {
		b.WriteString(`,"eventType":"Microsoft.KeyVault.SecretNewVersionCreated"`)
	}
	b.WriteString(`}]`)
	m["dup-keys"] = []byte(b.String())
	b.Reset()
	b.WriteString("[")
	for i := range 5000 {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(h12SmallEvent(kvsecrets.EventSecretNewVersionCreated, fmt.Sprintf("unknown-%d", i), "0123456789abcdef0123456789abcdef"))
	}
	b.WriteString("]")
	m["5000-unknown-secrets"] = []byte(b.String())
	b.Reset()
	b.WriteString("[")
	for i := range 5000 {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(h12SmallEvent(kvsecrets.EventSecretNewVersionCreated, fmt.Sprintf("c-%d", i%200), fmt.Sprintf("%032x", i)))
	}
	b.WriteString("]")
	m["5000-cached-secrets"] = []byte(b.String())
	b.Reset()
	b.WriteString("[")
	for i := range 5000 {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(h12SmallEvent(kvsecrets.EventSecretNearExpiry, fmt.Sprintf("c-%d", i%200), fmt.Sprintf("%032x", i)))
	}
	b.WriteString("]")
	m["5000-near-expiry"] = []byte(b.String())
	b.Reset()
	b.WriteString("[")
	for i := range 5001 {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString("{}")
	}
	b.WriteString("]")
	m["5001-events"] = []byte(b.String())
	m["numbers"] = []byte("[" + strings.Repeat("1e999999,", mib/9) + "1]")
	m["whitespace"] = append(append([]byte("["), bytes.Repeat([]byte(" "), mib-10)...), ']')
	m["nulls"] = []byte("[" + strings.Repeat("null,", mib/5-1) + "null]")
	m["single-object-huge"] = []byte(`{"eventType":"Microsoft.KeyVault.SecretNewVersionCreated","subject":"` + strings.Repeat("a", mib-200) + `"}`)
	return m
}

type h12CountingTransport struct {
	next  policy.Transporter
	mu    sync.Mutex
	hosts map[string]int
}

func (c *h12CountingTransport) Do(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.hosts[strings.ToLower(r.URL.Host)]++
	c.mu.Unlock()
	return c.next.Do(r)
}

func (c *h12CountingTransport) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.hosts)
}

const h12Ver = "0123456789abcdef0123456789abcdef"

// h12MissOps are the public entry points that can remember a miss.
var h12MissOps = map[string]func(p *kvsecrets.Provider, name string) error{
	"Get": func(p *kvsecrets.Provider, n string) error { _, err := p.Get(context.Background(), n); return err },
	"Verify": func(p *kvsecrets.Provider, n string) error {
		_, err := p.Verify(context.Background(), n, "k")
		return err
	},
	"GetVersion": func(p *kvsecrets.Provider, n string) error {
		_, err := p.GetVersion(context.Background(), n, h12Ver)
		return err
	},
	"Refresh": func(p *kvsecrets.Provider, n string) error { _, err := p.Refresh(context.Background(), n); return err },
	"Resolve": func(p *kvsecrets.Provider, n string) error {
		_, err := p.Resolve(context.Background(), "https://kvtest.vault.azure.net/secrets/"+n)
		return err
	},
	"ResolvePinned": func(p *kvsecrets.Provider, n string) error {
		_, err := p.Resolve(context.Background(), "https://kvtest.vault.azure.net/secrets/"+n+"/"+h12Ver)
		return err
	},
	"Preload":       func(p *kvsecrets.Provider, n string) error { return p.Preload(context.Background(), n) },
	"PreloadVerify": func(p *kvsecrets.Provider, n string) error { return p.PreloadVerify(context.Background(), n) },
}

// ===== Promise 1: a miss leaves once NegativeTTL has passed =====

// TestHostile12MissTouchedTwiceLeavesAfterNegativeTTL: a missing name read
// through one entry point and then through another that adds a pinned
// version or a key set (Get then GetVersion, Get then Verify, ...) must
// still leave once NegativeTTL (30s) has passed, and the heap must go back
// to where it started. README: "leaves once NegativeTTL has passed.
// 100,000 missing names leave the heap where it started."
func TestHostile12MissTouchedTwiceLeavesAfterNegativeTTL(t *testing.T) {
	for _, pair := range [][2]string{
		{"Get", "GetVersion"}, {"Get", "Verify"}, {"Preload", "PreloadVerify"},
		{"Resolve", "ResolvePinned"}, {"Refresh", "Verify"}, {"Verify", "GetVersion"},
	} {
		t.Run(pair[0]+"_then_"+pair[1], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				n := h12Scale(1000, 600)
				v := h12Vault(t)
				h12Set(t, v, "warm", "w")
				p := h12Prov(t, v, &kvsecrets.Options{MaxEntries: 10 * n})
				h12Get(t, p, "warm", "w")
				start := h12Heap()
				for i := range n {
					name := fmt.Sprintf("missing-%05d", i)
					if err := h12MissOps[pair[0]](p, name); !errors.Is(err, kvsecrets.ErrNotFound) {
						t.Fatalf("%s(%s): %v", pair[0], name, err)
					}
				}
				time.Sleep(time.Second)
				for i := range n {
					name := fmt.Sprintf("missing-%05d", i)
					if err := h12MissOps[pair[1]](p, name); !errors.Is(err, kvsecrets.ErrNotFound) {
						t.Fatalf("%s(%s): %v", pair[1], name, err)
					}
				}
				time.Sleep(kvsecrets.DefaultNegativeTTL + kvsecrets.DefaultFetchTimeout + time.Second)
				synctest.Wait()
				v.ResetCounts()
				entries := p.Stats().Entries
				grown := int64(h12Heap()) - int64(start)
				gone := time.Duration(0)
				for p.Stats().Entries > 1 && gone < 5*time.Hour {
					time.Sleep(time.Minute)
					gone += time.Minute
					synctest.Wait()
				}
				t.Logf("%d missing names: %d entries and %d heap bytes left 61s later; the last left %v after that",
					n, entries, grown, gone)
				if entries > 1 {
					t.Errorf("entries after NegativeTTL = %d, want 1 (the warm secret): %d misses outlived NegativeTTL (by %v more)", entries, entries-1, gone)
				}
				if grown > 1<<20 {
					t.Errorf("heap after NegativeTTL is %d bytes above the start", grown)
				}
			})
		})
	}
}

// TestHostile12VerifyMissesLeaveAfterNegativeTTL: Verify of missing names
// on a Provider that also caches one secret: every miss must leave once
// NegativeTTL has passed.
func TestHostile12VerifyMissesLeaveAfterNegativeTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 3000
		v := h12Vault(t)
		h12Set(t, v, "warm", "w")
		p := h12Prov(t, v, &kvsecrets.Options{MaxEntries: 4 * n})
		h12Get(t, p, "warm", "w")
		for i := range n {
			if _, err := p.Verify(context.Background(), fmt.Sprintf("missing-%05d", i), "k"); !errors.Is(err, kvsecrets.ErrNotFound) {
				t.Fatal(err)
			}
		}
		time.Sleep(kvsecrets.DefaultNegativeTTL + kvsecrets.DefaultFetchTimeout + time.Second)
		synctest.Wait()
		if e := p.Stats().Entries; e != 1 {
			t.Errorf("entries 61s after %d Verify misses = %d, want 1 (the warm secret)", n, e)
		}
	})
}

// TestHostile12MissCostPerName: a name the vault does not hold keeps at
// most ~512 bytes per entry while remembered (README: "about 440 bytes"),
// whichever public entry point met the miss and however long the name.
func TestHostile12MissCostPerName(t *testing.T) {
	short := func(i int) string { return fmt.Sprintf("missing-%06d", i) }
	long := func(i int) string { s := fmt.Sprintf("m%06d", i); return s + strings.Repeat("x", 127-len(s)) }
	for _, c := range []struct {
		name  string
		names func(int) string
		op    string
	}{
		{"Get-short", short, "Get"}, {"Get-127chars", long, "Get"}, {"Refresh-short", short, "Refresh"},
		{"Verify-short", short, "Verify"}, {"GetVersion-short", short, "GetVersion"},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				n := h12Scale(3000, 1000)
				v := h12Vault(t)
				h12Set(t, v, "warm", "w")
				p := h12Prov(t, v, &kvsecrets.Options{MaxEntries: 4 * n})
				h12Get(t, p, "warm", "w")
				names := make([]string, n)
				for i := range names {
					names[i] = c.names(i)
				}
				start := h12Heap()
				for _, nm := range names {
					if err := h12MissOps[c.op](p, nm); !errors.Is(err, kvsecrets.ErrNotFound) {
						t.Fatal(err)
					}
				}
				v.ResetCounts() // the local vault's own per-name counters
				per := float64(int64(h12Heap())-int64(start)) / float64(n)
				e := p.Stats().Entries - 1
				runtime.KeepAlive(names)
				t.Logf("%s: %.0f bytes per missing name (%d entries for %d names)", c.name, per, e, n)
				// README: about 440 bytes per entry; Verify and GetVersion
				// make two (the name's and the key set's or version's).
				if limit := 560.0 * float64(e) / float64(n); per > limit {
					t.Errorf("a missing name met through %s keeps %.0f bytes for %d entries each, want at most %.0f", c.op, per, e/n, limit)
				}
			})
		})
	}
}

// TestHostile12MissesDuringOutageOrSlowVault: names read while the vault
// fails transiently (503, 429, dropped connections) or is slow and callers
// give up are "not remembered": entries and heap go back to the start.
func TestHostile12MissesDuringOutageOrSlowVault(t *testing.T) {
	for _, c := range []struct {
		name  string
		setup func(v *kvtest.Server)
	}{
		{"503", func(v *kvtest.Server) { v.FailFor(1000*time.Hour, kvtest.ServiceUnavailable) }},
		{"429", func(v *kvtest.Server) { v.FailFor(1000*time.Hour, kvtest.Throttled) }},
		{"drop", func(v *kvtest.Server) { v.FailFor(1000*time.Hour, kvtest.DropConnection) }},
		{"slow", func(v *kvtest.Server) { v.SetLatency(10 * time.Minute) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				n := h12Scale(1000, 600)
				v := h12Vault(t)
				h12Set(t, v, "warm", "w")
				p := h12Prov(t, v, &kvsecrets.Options{MaxEntries: 4 * n})
				h12Get(t, p, "warm", "w")
				g0 := h12ProviderGoroutines()
				start := h12Heap()
				c.setup(v)
				peak := 0
				for i := range n {
					ctx, cancel := context.WithTimeout(context.Background(), time.Second)
					if _, err := p.Get(ctx, fmt.Sprintf("missing-%05d", i)); err == nil {
						t.Fatal("a missing name was served")
					}
					cancel()
					peak = max(peak, p.Stats().Entries)
				}
				time.Sleep(kvsecrets.DefaultNegativeTTL + kvsecrets.DefaultFetchTimeout + time.Second)
				synctest.Wait()
				v.ResetCounts()
				grown := int64(h12Heap()) - int64(start)
				t.Logf("%s: %d entries at peak, %d after; heap %+d bytes; goroutines %d -> %d", c.name, peak, p.Stats().Entries, grown, g0, h12ProviderGoroutines())

				if e := p.Stats().Entries; e > 1 {
					t.Errorf("entries after the flood = %d, want at most 1", e)
				}
				if grown > 1<<20 {
					t.Errorf("heap %d bytes above the start", grown)
				}
				// The scheduler of the one secret cached ("warm") may run;
				// nothing of the flood may.
				if g := h12ProviderGoroutines(); g > max(g0, 1) {
					t.Errorf("Provider goroutines %d, %d before", g, g0)
				}
				v.ClearFaults()
				v.SetLatency(0)
			})
		})
	}
}

// TestHostile12MissCaseVariantsShareOneEntry: names are case-insensitive,
// so 2,048 spellings of one missing name (and of a pinned version of it)
// are one entry each and one vault request each.
func TestHostile12MissCaseVariantsShareOneEntry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := h12Vault(t)
		p := h12Prov(t, v, nil)
		base := "missingname"
		for i := range 1 << len(base) {
			b := []byte(base)
			for j := range b {
				if i&(1<<j) != 0 {
					b[j] -= 'a' - 'A'
				}
			}
			p.Get(context.Background(), string(b))
			p.GetVersion(context.Background(), string(b), h12Ver)
		}
		if e, r := p.Stats().Entries, v.SecretRequests("missingname"); e > 2 || r > 2 {
			t.Fatalf("2048 spellings: %d entries, %d vault reads; want at most 2 and 2", e, r)
		}
	})
}

// ===== Promise 2: entries never exceed MaxEntries =====

// TestHostile12MaxEntriesUnderConcurrentFlood: every public entry point
// at once, from many goroutines, against MaxEntries 100. Stats().Entries
// is sampled after every call and must never pass the bound; names read
// all along must survive; evictions are counted.
func TestHostile12MaxEntriesUnderConcurrentFlood(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const limit, names = 100, 600
		v := h12Vault(t)
		for i := range names {
			h12Set(t, v, fmt.Sprintf("s-%d", i), "v")
		}
		var versions []string
		for i := range 200 {
			versions = append(versions, h12Set(t, v, "multi", fmt.Sprint("m", i)))
		}
		hot := []string{"hot-a", "hot-b", "hot-c"}
		for _, h := range hot {
			h12Set(t, v, h, "h")
		}
		p := h12Prov(t, v, &kvsecrets.Options{MaxEntries: limit})
		h := p.EventGridHandler(&kvsecrets.EventGridOptions{AllowUnauthenticated: true})
		ctx := context.Background()
		var mu sync.Mutex
		maxSeen := 0
		sample := func() {
			e := p.Stats().Entries
			mu.Lock()
			maxSeen = max(maxSeen, e)
			mu.Unlock()
		}
		type cfg struct {
			A string `keyvault:"s-1"`
			B string `keyvault:"S-2"`
			C string `keyvault:"missing-x,optional"`
		}
		ops := []func(i int){
			func(i int) { p.Get(ctx, fmt.Sprintf("s-%d", i)) },
			func(i int) { p.GetSecret(ctx, fmt.Sprintf("S-%d", i)) },
			func(i int) { p.GetVersion(ctx, "multi", versions[i%len(versions)]) },
			func(i int) { p.Verify(ctx, fmt.Sprintf("s-%d", i), "v") },
			func(i int) { p.Refresh(ctx, fmt.Sprintf("s-%d", i)) },
			func(i int) { p.Resolve(ctx, fmt.Sprintf("https://kvtest.vault.azure.net/secrets/s-%d", i)) },
			func(i int) {
				p.Resolve(ctx, "@Microsoft.KeyVault(VaultName=kvtest;SecretName=multi;SecretVersion="+versions[(i*3)%len(versions)]+")")
			},
			func(i int) { p.Preload(ctx, fmt.Sprintf("s-%d", i), fmt.Sprintf("missing-%d", i)) },
			func(i int) { p.PreloadVerify(ctx, fmt.Sprintf("s-%d", i), fmt.Sprintf("missing-%d", i)) },
			func(i int) { var c cfg; p.Load(ctx, &c) },
			func(i int) {
				h12Deliver(h, []byte("["+h12SmallEvent(kvsecrets.EventSecretNewVersionCreated, fmt.Sprintf("s-%d", i), h12Ver)+"]"))
			},
		}
		var wg, flood sync.WaitGroup
		for g := range 2 * len(ops) {
			flood.Go(func() {
				for i := range names / 2 {
					ops[g%len(ops)]((i*7 + g*131) % names)
					sample()
				}
			})
		}
		var flooding atomic.Bool
		flooding.Store(true)
		wg.Go(func() { flood.Wait(); flooding.Store(false) })
		wg.Go(func() {
			// For 30 s, and as long as the flood lasts (the pacer spreads
			// its requests over the vault's windows).
			for i := 0; i < 300 || flooding.Load(); i++ {
				for _, n := range hot {
					if _, err := p.Get(ctx, n); err != nil {
						t.Error(err)
					}
				}
				sample()
				time.Sleep(100 * time.Millisecond)
			}
		})
		wg.Wait()
		synctest.Wait()
		st := p.Stats()
		t.Logf("max entries seen %d (MaxEntries %d); evictions %d; entries now %d", maxSeen, limit, st.Evictions, st.Entries)
		if maxSeen > limit {
			t.Errorf("Stats().Entries reached %d, past MaxEntries %d", maxSeen, limit)
		}
		if st.Evictions == 0 {
			t.Error("no evictions counted")
		}
		v.ResetCounts()
		for _, n := range hot {
			h12Get(t, p, n, "h")
		}
		if c := v.Counts().Total; c != 0 {
			t.Errorf("a name read all along was evicted: %d requests", c)
		}
	})
}

// ===== Promise 3: idle entries stop costing the vault =====

// TestHostile12IdleSecretsStopBeingRead: a secret read once (through Get,
// Verify or a pinned version) and never again costs the vault nothing after
// IdleTimeout (2 TTLs) plus one refresh; through an outage, nothing after
// MaxStale.
func TestHostile12IdleSecretsStopBeingRead(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name   string
		touch  func(p *kvsecrets.Provider, ver string)
		outage bool
		quiet  time.Duration // when reads must have stopped
	}{
		{"Get", func(p *kvsecrets.Provider, _ string) { p.Get(ctx, "Cold") }, false, 5 * time.Minute},
		{"Verify", func(p *kvsecrets.Provider, _ string) { p.Verify(ctx, "Cold", "c") }, false, 5 * time.Minute},
		{"GetVersion", func(p *kvsecrets.Provider, ver string) { p.GetVersion(ctx, "Cold", ver) }, false, 5 * time.Minute},
		{"Refresh", func(p *kvsecrets.Provider, _ string) { p.Refresh(ctx, "Cold") }, false, 5 * time.Minute},
		{"Get-outage", func(p *kvsecrets.Provider, _ string) { p.Get(ctx, "Cold") }, true, 24*time.Hour + 10*time.Minute},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				v := h12Vault(t)
				ver := h12Set(t, v, "Cold", "c")
				p := h12Prov(t, v, &kvsecrets.Options{TTL: time.Minute})
				c.touch(p, ver)
				if c.outage {
					v.FailFor(1000*time.Hour, kvtest.ServiceUnavailable)
				}
				time.Sleep(c.quiet)
				synctest.Wait()
				before := v.SecretRequests("Cold")
				time.Sleep(10 * time.Hour)
				synctest.Wait()
				if n := v.SecretRequests("Cold") - before; n != 0 {
					t.Errorf("a secret nobody reads was read %d times in 10 hours", n)
				}
				if e := p.Stats().Entries; e != 0 {
					t.Errorf("entries = %d, want 0", e)
				}
			})
		})
	}
}

// TestHostile12EventsKeepUnreadSecretsRefreshed: Event Grid deliveries
// (forged, replayed or real) for a secret nobody reads. README: "a secret
// nobody reads for IdleTimeout (2 TTLs) is dropped at its next refresh
// instead of being refreshed". Here events make the refreshes; the secret,
// never read after the first Get, must still be dropped and stop costing
// the vault.
func TestHostile12EventsKeepUnreadSecretsRefreshed(t *testing.T) {
	for _, typ := range []string{kvsecrets.EventSecretNewVersionCreated, kvsecrets.EventSecretExpired} {
		t.Run(strings.TrimPrefix(typ, "Microsoft.KeyVault."), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				v := h12Vault(t)
				h12Set(t, v, "Cold", "c")
				p := h12Prov(t, v, &kvsecrets.Options{TTL: time.Minute}) // IdleTimeout 2 minutes
				h := p.EventGridHandler(&kvsecrets.EventGridOptions{AllowUnauthenticated: true})
				h12Get(t, p, "Cold", "c")
				var perHour []int64
				for hour := range 10 {
					before := v.SecretRequests("Cold")
					for i := range 120 {
						h12Deliver(h, []byte("["+h12SmallEvent(typ, "Cold", fmt.Sprintf("%032x", hour*120+i))+"]"))
						time.Sleep(30 * time.Second)
					}
					synctest.Wait()
					perHour = append(perHour, v.SecretRequests("Cold")-before)
				}
				st := p.Stats()
				t.Logf("vault reads per hour of a secret read once, 10 hours ago: %v; IdleDrops %d, Entries %d", perHour, st.IdleDrops, st.Entries)
				if perHour[len(perHour)-1] > 0 || st.Entries != 0 {
					t.Errorf("a secret nobody has read for 10 hours (IdleTimeout 2 minutes) is still cached (%d entries) and read %d times an hour", st.Entries, perHour[len(perHour)-1])
				}
			})
		})
	}
}

// TestHostile12SecretReadRegularlyNeverWaits: a secret read a little more
// often than IdleTimeout, through Get, Verify or a pinned version, is
// never dropped and no read after the first waits for the vault.
func TestHostile12SecretReadRegularlyNeverWaits(t *testing.T) {
	ctx := context.Background()
	for _, every := range []time.Duration{50 * time.Second, 119 * time.Second, 119900 * time.Millisecond} {
		for _, how := range []string{"Get", "Verify", "GetVersion"} {
			t.Run(fmt.Sprint(how, "-every-", every), func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					v := h12Vault(t)
					ver := h12Set(t, v, "Hot", "h")
					p := h12Prov(t, v, &kvsecrets.Options{TTL: time.Minute})
					waits := 0
					for i := range int(10 * time.Hour / every) {
						m := p.Stats().Misses
						var err error
						switch how {
						case "Get":
							_, err = p.Get(ctx, "Hot")
						case "Verify":
							_, err = p.Verify(ctx, "Hot", "h")
						case "GetVersion":
							_, err = p.GetVersion(ctx, "Hot", ver)
						}
						if err != nil {
							t.Fatal(err)
						}
						if i > 0 && p.Stats().Misses != m {
							waits++
						}
						time.Sleep(every)
					}
					if st := p.Stats(); waits > 0 || st.IdleDrops > 0 {
						t.Errorf("read every %v: %d reads waited for the vault, %d idle drops", every, waits, st.IdleDrops)
					}
				})
			})
		}
	}
}

// ===== Promise 4: MaxStale is a hard limit =====

// TestHostile12MaxStaleUnderEventsAndRefresh: the vault hangs (latency of
// 1000 h) right after a successful read, so the last successful read of
// every value is at most `hang`. While the vault hangs, Event Grid events
// or Refresh calls (even ones canceled after 10 ms) arrive every 500 ms.
// README: "no value is served more than MaxStale after its last successful
// read, however long the refresh queue". No entry point may serve after
// hang+MaxStale (1s). A single event or canceled Refresh right after the
// hang is enough when the name is read only through Get: the value is
// then served until the read it started times out (FetchTimeout, 30s).
func TestHostile12MaxStaleUnderEventsAndRefresh(t *testing.T) {
	for _, onlyGet := range []bool{true, false} {
		for _, trig := range []string{"none", "event-new-version", "event-expired", "Refresh", "Refresh-canceled"} {
			for _, cfg := range []struct{ ttl, maxStale time.Duration }{{time.Hour, time.Second}, {time.Second, time.Second}} {
				what := "all-entry-points"
				if onlyGet {
					what = "Get-only"
				}
				t.Run(fmt.Sprintf("%s/%s/TTL=%v", what, trig, cfg.ttl), func(t *testing.T) {
					synctest.Test(t, func(t *testing.T) {
						ctx := context.Background()
						v := h12Vault(t)
						ver := h12Set(t, v, "K", "x")
						p := h12Prov(t, v, &kvsecrets.Options{TTL: cfg.ttl, MaxStale: cfg.maxStale}) // FetchTimeout 30s
						h := p.EventGridHandler(&kvsecrets.EventGridOptions{AllowUnauthenticated: true})
						ops := map[string]func() error{
							"Get":        func() error { _, err := p.Get(ctx, "K"); return err },
							"GetSecret":  func() error { _, err := p.GetSecret(ctx, "K"); return err },
							"Resolve":    func() error { _, err := p.Resolve(ctx, "https://kvtest.vault.azure.net/secrets/K"); return err },
							"Verify":     func() error { _, err := p.Verify(ctx, "K", "x"); return err },
							"GetVersion": func() error { _, err := p.GetVersion(ctx, "K", ver); return err },
						}
						for k, op := range ops {
							if onlyGet && k != "Get" {
								delete(ops, k)
								continue
							}
							if err := op(); err != nil {
								t.Fatal(k, err)
							}
						}
						hang := time.Now()
						v.SetLatency(1000 * time.Hour)
						stop := hang.Add(2*cfg.maxStale + 2*kvsecrets.DefaultFetchTimeout)
						var wg sync.WaitGroup
						wg.Go(func() {
							for i := 0; time.Now().Before(stop); i++ {
								switch trig {
								case "event-new-version":
									h12Deliver(h, []byte("["+h12SmallEvent(kvsecrets.EventSecretNewVersionCreated, "K", fmt.Sprintf("%032x", i))+"]"))
								case "event-expired":
									h12Deliver(h, []byte("["+h12SmallEvent(kvsecrets.EventSecretExpired, "K", ver)+"]"))
								case "Refresh":
									wg.Go(func() {
										rctx, cancel := context.WithDeadline(ctx, stop)
										defer cancel()
										p.Refresh(rctx, "K")
									})
								case "Refresh-canceled":
									rctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
									p.Refresh(rctx, "K")
									cancel()
								}
								time.Sleep(500 * time.Millisecond)
							}
						})
						last := map[string]time.Duration{}
						for time.Now().Before(stop) {
							time.Sleep(50 * time.Millisecond)
							for k, op := range ops {
								if err := op(); err == nil {
									last[k] = time.Since(hang)
								} else if !errors.Is(err, kvsecrets.ErrUnavailable) {
									t.Fatalf("%s: %v", k, err)
								}
							}
						}
						wg.Wait()
						v.SetLatency(0)
						for k, age := range last {
							if age > cfg.maxStale {
								t.Errorf("%s served %v after the last successful read (MaxStale %v)", k, age, cfg.maxStale)
							}
						}
					})
				})
			}
		}
	}
}

// ===== Promise 5: background retries stay at MaxRetryBackoff =====

// TestHostile12BackoffStaysAtMaxAcrossMaxStale: in a 3-hour outage (503,
// 500, dropped connections, 429) with TTL 1m and MaxStale 10m, the vault
// reads of one secret per 10-minute window stay at what MaxRetryBackoff
// (2m) allows, before and after the MaxStale drop, also while callers keep
// reading the dropped secret every second.
func TestHostile12BackoffStaysAtMaxAcrossMaxStale(t *testing.T) {
	for _, c := range []struct {
		name      string
		fault     kvtest.Fault
		jitter    bool
		readEvery time.Duration
		perRead   int64 // HTTP requests per read (the SDK retries 5xx 3 times, not 429)
	}{
		{"503", kvtest.ServiceUnavailable, false, 0, 4},
		{"503-jitter", kvtest.ServiceUnavailable, true, 0, 4},
		{"503-jitter-callers", kvtest.ServiceUnavailable, true, time.Second, 4},
		{"500-callers", kvtest.InternalServerError, true, time.Second, 4},
		{"drop", kvtest.DropConnection, true, 0, 4},
		{"429", kvtest.Throttled, true, time.Second, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx := context.Background()
				v := h12Vault(t)
				h12Set(t, v, "K", "x")
				p := h12Prov(t, v, &kvsecrets.Options{TTL: time.Minute, MaxStale: 10 * time.Minute,
					DisableJitter: !c.jitter, IdleTimeout: 24 * time.Hour})
				h12Get(t, p, "K", "x")
				v.FailFor(1000*time.Hour, c.fault)
				var reads []float64
				for range 18 {
					before := v.SecretRequests("K")
					for el := time.Duration(0); el < 10*time.Minute; {
						step := 10 * time.Minute
						if c.readEvery > 0 {
							step = c.readEvery
							p.Get(ctx, "K")
						}
						time.Sleep(step)
						el += step
					}
					synctest.Wait()
					reads = append(reads, float64(v.SecretRequests("K")-before)/float64(c.perRead))
				}
				t.Logf("vault reads per 10 minutes: %v; StaleDrops %d", reads, p.Stats().StaleDrops)
				// At MaxRetryBackoff 2m: 5 reads per 10 minutes; jitter may
				// shorten a delay, allow it to halve it.
				limit := 5.0
				if c.jitter {
					limit = 10
				}
				for i, r := range reads[2:] {
					if r > limit {
						t.Errorf("window %d: %.0f reads, want at most %.0f (all %v)", i+2, r, limit, reads)
					}
				}
				if p.Stats().StaleDrops != 1 {
					t.Errorf("StaleDrops = %d, want 1", p.Stats().StaleDrops)
				}
			})
		})
	}
}

// ===== Promise 6: each pinned version costs the same =====

// ===== Promise 7: other vaults =====

// h12Vaults makes the Provider's vault "kvtest" and n others vault0..,
// one tenant, and a Provider whose transport counts requests per host.
func h12Vaults(t *testing.T, n int) (*kvsecrets.Provider, []*kvtest.Server, *h12CountingTransport) {
	t.Helper()
	tenant := kvtest.NewTenant("", 0)
	var servers []*kvtest.Server
	for i := range n + 1 {
		name := "kvtest"
		if i > 0 {
			name = fmt.Sprintf("vault%d", i-1)
		}
		s, err := kvtest.NewInProcess(&kvtest.Options{VaultName: name, Tenant: tenant})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		servers = append(servers, s)
		s.SetSecret("present", "p", nil)
	}
	co := kvtest.ClientOptionsFor(servers...)
	ct := &h12CountingTransport{next: co.Transport, hosts: map[string]int{}}
	co.Transport = ct
	p, err := kvsecrets.NewProvider(servers[0].URL(), tenant.Credential(), &kvsecrets.Options{ClientOptions: co})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, servers, ct
}

// TestHostile12OtherVaultsCapAndSpellings: spellings of a vault already
// made (case, VaultName=, SecretUri=) reuse it and make no request; ports,
// trailing dots and userinfo are refused; past 64 vaults every spelling
// of a 65th (other suffixes too, ResolveEnv, 200 concurrent Resolves) is
// ErrTooManyVaults before any request.
func TestHostile12OtherVaultsCapAndSpellings(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		p, _, ct := h12Vaults(t, 1)
		if v, err := p.Resolve(ctx, "https://vault0.vault.azure.net/secrets/present"); err != nil || v != "p" {
			t.Fatal(v, err)
		}
		reqs := ct.hosts["vault0.vault.azure.net"]
		for _, ref := range []string{
			"https://VAULT0.vault.azure.net/secrets/present",
			"https://vault0.VAULT.AZURE.NET/secrets/Present",
			"HTTPS://vault0.vault.azure.net/secrets/present/",
			"@Microsoft.KeyVault(VaultName=VAULT0;SecretName=present)",
			"@Microsoft.KeyVault(SecretUri=https://Vault0.vault.azure.net/secrets/present/)",
		} {
			if v, err := p.Resolve(ctx, ref); err != nil || v != "p" {
				t.Errorf("%s: %q %v", ref, v, err)
			}
		}
		for _, ref := range []string{
			"https://vault0.vault.azure.net./secrets/present",
			"https://vault0.vault.azure.net:443/secrets/present",
			"https://user@vault0.vault.azure.net/secrets/present",
			"https://vault0%2evault.azure.net/secrets/present",
			"https://kvtest.vault.azure.net./secrets/present",
		} {
			if _, err := p.Resolve(ctx, ref); err == nil {
				t.Errorf("%s accepted", ref)
			}
		}
		if ct.distinct() > 2 || ct.hosts["vault0.vault.azure.net"] != reqs {
			t.Errorf("spellings reached the network: %v", ct.hosts)
		}
		for i := 1; i < kvsecrets.MaxOtherVaults; i++ {
			p.Resolve(ctx, fmt.Sprintf("https://vault%d.vault.azure.net/secrets/x", i))
		}
		hosts := ct.distinct()
		for _, ref := range []string{
			"https://vault64.vault.azure.net/secrets/present",
			"https://VAULT64.vault.azure.net/secrets/present",
			"@Microsoft.KeyVault(VaultName=vault64;SecretName=present)",
			"https://vault64.vault.azure.net/secrets/present/" + h12Ver,
			"https://vault64.vault.azure.cn/secrets/present",
			"https://vault64.managedhsm.azure.net/secrets/present",
			"https://vault64.vault.usgovcloudapi.net/secrets/present",
		} {
			if _, err := p.Resolve(ctx, ref); !errors.Is(err, kvsecrets.ErrTooManyVaults) {
				t.Errorf("%s: %v, want ErrTooManyVaults", ref, err)
			}
		}
		var env []string
		for i := range 100 {
			env = append(env, fmt.Sprintf("V%d=@Microsoft.KeyVault(VaultName=extra%d;SecretName=x)", i, i))
		}
		if _, err := p.ResolveEnv(ctx, env); !errors.Is(err, kvsecrets.ErrTooManyVaults) {
			t.Errorf("ResolveEnv: %v", err)
		}
		var wg sync.WaitGroup
		for i := range 200 {
			wg.Go(func() { p.Resolve(ctx, fmt.Sprintf("https://more%d.vault.azure.net/secrets/x", i)) })
		}
		wg.Wait()
		if d := ct.distinct(); d != hosts || d > kvsecrets.MaxOtherVaults+1 {
			t.Errorf("hosts contacted: %d, %d before the 65th vault", d, hosts)
		}
	})
}

// TestHostile12OtherVaultProvidersIdleAfterMisses: references to 64 other
// vaults, each to a missing secret, by name and then with a version. Once
// NegativeTTL has passed nothing is cached, so no Provider may keep a
// goroutine. README: "a Provider, made for another vault or not, starts no
// goroutine until it caches something and ends it when nothing is due."
func TestHostile12OtherVaultProvidersIdleAfterMisses(t *testing.T) {
	for _, pinned := range []bool{false, true} {
		t.Run(fmt.Sprint("pinned=", pinned), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx := context.Background()
				p, _, _ := h12Vaults(t, kvsecrets.MaxOtherVaults)
				base := h12ProviderGoroutines()
				for i := range kvsecrets.MaxOtherVaults {
					ref := fmt.Sprintf("https://vault%d.vault.azure.net/secrets/missing", i)
					if _, err := p.Resolve(ctx, ref); !errors.Is(err, kvsecrets.ErrNotFound) {
						t.Fatal(err)
					}
					if pinned {
						if _, err := p.Resolve(ctx, ref+"/"+h12Ver); !errors.Is(err, kvsecrets.ErrNotFound) {
							t.Fatal(err)
						}
					}
				}
				time.Sleep(kvsecrets.DefaultNegativeTTL + kvsecrets.DefaultFetchTimeout + time.Second)
				synctest.Wait()
				if n := h12ProviderGoroutines(); n > base {
					t.Errorf("%d Provider goroutines 61s after the misses, %d before", n, base)
				}
			})
		})
	}
}

// ===== Promise 8: Event Grid deliveries =====

// TestHostile12EventGridJunk: 1 MiB junk of many shapes is answered with
// the right status, less than 10 MB allocated and (without -race) in less
// than 50 ms, and makes no vault request.
func TestHostile12EventGridJunk(t *testing.T) {
	v := h12Vault(t)
	for i := range 200 {
		h12Set(t, v, fmt.Sprintf("c-%d", i), "v")
	}
	p := h12Prov(t, v, nil)
	for i := range 200 {
		h12Get(t, p, fmt.Sprintf("c-%d", i), "v")
	}
	h := p.EventGridHandler(&kvsecrets.EventGridOptions{AllowUnauthenticated: true})
	want := map[string]int{
		"deep-array": 400, "deep-object": 400, "deep-in-event": 400, "deep-array-in-event": 400,
		"numbers": 413, "nulls": 413, "5001-events": 413,
	}
	for name, body := range h12Junk() {
		if name == "5000-cached-secrets" || name == "5000-near-expiry" {
			continue // below
		}
		ctypes := []string{"application/json", "application/cloudevents-batch+json"}
		if h12Race() {
			ctypes = ctypes[:1]
		}
		for _, ctype := range ctypes {
			var best time.Duration = 1 << 62
			var alloc uint64
			code := 0
			for range h12Scale(3, 1) {
				var ms runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&ms)
				a0 := ms.TotalAlloc
				v.ResetCounts()
				r := httptest.NewRequest(http.MethodPost, "/events", bytes.NewReader(body))
				r.Header.Set("Content-Type", ctype)
				w := httptest.NewRecorder()
				t0 := time.Now()
				h.ServeHTTP(w, r)
				best = min(best, time.Since(t0))
				runtime.ReadMemStats(&ms)
				alloc = ms.TotalAlloc - a0
				code = w.Code
			}
			wc := want[name]
			if wc == 0 {
				wc = 200
			}
			t.Logf("%-20s %-32s %7d bytes: %d in %v, %.1f MB", name, ctype, len(body), code, best, float64(alloc)/1e6)
			if code != wc {
				t.Errorf("%s: status %d, want %d", name, code, wc)
			}
			if alloc > 10<<20 {
				t.Errorf("%s: %.1f MB allocated", name, float64(alloc)/1e6)
			}
			if n := v.Counts().Total; n != 0 {
				t.Errorf("%s: %d vault requests", name, n)
			}
		}
	}
}

// TestHostile12EventGridRefreshStorm: 5,000 SecretNewVersionCreated events
// (25 different versions for each of 200 cached secrets), delivered 10
// times in a second, make at most one vault read per secret.
func TestHostile12EventGridRefreshStorm(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := h12Vault(t)
		for i := range 200 {
			h12Set(t, v, fmt.Sprintf("c-%d", i), "v")
		}
		p := h12Prov(t, v, nil)
		for i := range 200 {
			h12Get(t, p, fmt.Sprintf("C-%d", i), "v")
		}
		h := p.EventGridHandler(&kvsecrets.EventGridOptions{AllowUnauthenticated: true})
		body := h12Junk()["5000-cached-secrets"]
		v.ResetCounts()
		for range 10 {
			if w := h12Deliver(h, body); w.Code != 200 {
				t.Fatal(w.Code)
			}
			time.Sleep(90 * time.Millisecond)
		}
		synctest.Wait()
		if n := v.Counts().Total; n > 200 {
			t.Errorf("%d vault requests for 200 secrets", n)
		}
	})
}

// TestHostile12EventGridNearExpiryFlood: 5,000 SecretNearExpiry events
// (valid-looking, for this vault) with an OnNearExpiry that does nothing.
// README: "1 MiB of junk events is answered in about 15-35 ms"; the brief's
// bound is 50 ms. Under -race, where every delivery is slower, the extra
// time over the same delivery without OnNearExpiry must stay under 50 ms.
func TestHostile12EventGridNearExpiryFlood(t *testing.T) {
	v := h12Vault(t)
	for i := range 200 {
		h12Set(t, v, fmt.Sprintf("c-%d", i), "v")
	}
	p := h12Prov(t, v, nil)
	for i := range 200 {
		h12Get(t, p, fmt.Sprintf("c-%d", i), "v")
	}
	body := h12Junk()["5000-near-expiry"]
	measure := func(h http.Handler) (time.Duration, uint64) {
		best := time.Duration(1 << 62)
		var alloc uint64
		for range 5 {
			var ms runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&ms)
			a0 := ms.TotalAlloc
			t0 := time.Now()
			if w := h12Deliver(h, body); w.Code != 200 {
				t.Fatal(w.Code)
			}
			best = min(best, time.Since(t0))
			runtime.ReadMemStats(&ms)
			alloc = ms.TotalAlloc - a0
		}
		return best, alloc
	}
	var calls sync.Map
	plain, _ := measure(p.EventGridHandler(&kvsecrets.EventGridOptions{AllowUnauthenticated: true}))
	withCB, alloc := measure(p.EventGridHandler(&kvsecrets.EventGridOptions{AllowUnauthenticated: true,
		OnNearExpiry: func(e kvsecrets.ExpiryEvent) { calls.Store(e.Name, true) }}))
	t.Logf("%d bytes, 5000 SecretNearExpiry: %v without OnNearExpiry, %v with a no-op one (%.1f MB)", len(body), plain, withCB, float64(alloc)/1e6)
	if alloc > 10<<20 {
		t.Errorf("%.1f MB allocated", float64(alloc)/1e6)
	}
	// Time is measured by BenchmarkEventGrid*; here, what makes it: the
	// callback runs at most once per cached secret per delivery.
	n := 0
	calls.Range(func(_, _ any) bool { n++; return true })
	if n > 200 {
		t.Errorf("OnNearExpiry called for %d secrets, 200 are cached", n)
	}
}

// TestHostile12EventGridNearExpiryOfUncachedSecrets: go doc of
// EventGridHandler: "Everything else — other vaults, keys and
// certificates, secrets not cached — is acknowledged and ignored." A
// SecretNearExpiry for names never read must not reach OnNearExpiry (one
// delivery otherwise hands it 5,000 caller-chosen names).
func TestHostile12EventGridNearExpiryOfUncachedSecrets(t *testing.T) {
	v := h12Vault(t)
	p := h12Prov(t, v, nil)
	var n int
	var mu sync.Mutex
	h := p.EventGridHandler(&kvsecrets.EventGridOptions{AllowUnauthenticated: true,
		OnNearExpiry: func(kvsecrets.ExpiryEvent) { mu.Lock(); n++; mu.Unlock() }})
	var b strings.Builder
	b.WriteString("[")
	for i := range 5000 {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(h12SmallEvent(kvsecrets.EventSecretNearExpiry, fmt.Sprintf("never-read-%d", i), h12Ver))
	}
	b.WriteString("]")
	if w := h12Deliver(h, []byte(b.String())); w.Code != 200 {
		t.Fatal(w.Code)
	}
	if n > 0 {
		t.Errorf("OnNearExpiry called %d times for secrets never read", n)
	}
}

// ===== Promise 9: cached reads allocate nothing; Close leaves nothing =====

func TestHostile12CachedReadsDoNotAllocate(t *testing.T) {
	ctx := context.Background()
	long := strings.Repeat("Ab", 63) + "c"
	for _, mode := range []string{"Get", "Get-other-case", "Get-127chars", "Get-stale-in-outage", "Get-while-evicting", "Verify", "Verify-other-case", "Verify-nbf-exp"} {
		t.Run(mode, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				v := h12Vault(t)
				o := &kvsecrets.Options{Logger: slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug}))}
				if mode == "Get-while-evicting" {
					o.MaxEntries = 10
				}
				var sopt *kvtest.SecretOptions
				if mode == "Verify-nbf-exp" {
					sopt = &kvtest.SecretOptions{Expires: time.Now().Add(time.Hour), NotBefore: time.Now().Add(-time.Hour)}
				}
				if _, err := v.SetSecret("MySecret", "x", sopt); err != nil {
					t.Fatal(err)
				}
				h12Set(t, v, long, "x")
				p := h12Prov(t, v, o)
				h12Get(t, p, "MySecret", "x")
				h12Get(t, p, long, "x")
				if _, err := p.Verify(ctx, "MySecret", "x"); err != nil {
					t.Fatal(err)
				}
				if mode == "Get-stale-in-outage" {
					v.FailFor(1000*time.Hour, kvtest.ServiceUnavailable)
					time.Sleep(90 * time.Minute)
					synctest.Wait()
				}
				f := map[string]func(){
					"Get":                 func() { p.Get(ctx, "MySecret") },
					"Get-other-case":      func() { p.Get(ctx, "MYSECRET") },
					"Get-127chars":        func() { p.Get(ctx, long) },
					"Get-stale-in-outage": func() { p.Get(ctx, "MySecret") },
					"Get-while-evicting": func() {
						p.Get(ctx, "MySecret")
					},
					"Verify":            func() { p.Verify(ctx, "MySecret", "x") },
					"Verify-other-case": func() { p.Verify(ctx, "mysecret", "x") },
					"Verify-nbf-exp":    func() { p.Verify(ctx, "MySecret", "x") },
				}[mode]
				if mode == "Get-while-evicting" {
					for i := range 30 {
						p.Get(ctx, fmt.Sprintf("miss-%d", i))
					}
				}
				if _, err := p.Get(ctx, "MySecret"); err != nil {
					t.Fatal(err)
				}
				if a := testing.AllocsPerRun(1000, f); a != 0 {
					t.Errorf("%s: %.2f allocations per call", mode, a)
				}
			})
		})
	}
}

// TestHostile12CloseLeavesNoGoroutine: Close in the middle of first reads,
// Refresh, Preload, Verify, other-vault reads on a hanging vault, of
// Spread event refreshes and of background refreshes, and from OnRotate:
// no goroutine is left (goleak).
func TestHostile12CloseLeavesNoGoroutine(t *testing.T) {
	ctx := context.Background()
	for _, mode := range []string{"first-reads", "spread-events", "other-vaults", "Refresh", "Preload", "background-refresh", "Close-in-OnRotate", "Verify"} {
		t.Run(mode, func(t *testing.T) {
			ign := goleak.IgnoreCurrent()
			tenant := kvtest.NewTenant("", 0)
			v, _ := kvtest.NewInProcess(&kvtest.Options{Tenant: tenant})
			v2, _ := kvtest.NewInProcess(&kvtest.Options{Tenant: tenant, VaultName: "other"})
			defer v.Close()
			defer v2.Close()
			var names []string
			for i := range 20 {
				names = append(names, fmt.Sprintf("s%d", i))
				v.SetSecret(names[i], "x", nil)
				v2.SetSecret(names[i], "x", nil)
			}
			closed := make(chan struct{})
			var p *kvsecrets.Provider
			o := &kvsecrets.Options{ClientOptions: kvtest.ClientOptionsFor(v, v2), TTL: 200 * time.Millisecond}
			if mode == "Close-in-OnRotate" {
				o.OnRotate = func(kvsecrets.RotationEvent) { p.Close(); close(closed) }
			}
			p, err := kvsecrets.NewProvider(v.URL(), tenant.Credential(), o)
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			switch mode {
			case "first-reads":
				v.SetLatency(5 * time.Second)
				for _, n := range names {
					wg.Go(func() { p.Get(ctx, n) })
				}
			case "spread-events":
				p.Preload(ctx, names...)
				h := p.EventGridHandler(&kvsecrets.EventGridOptions{AllowUnauthenticated: true, Spread: time.Minute})
				for _, n := range names {
					h12Deliver(h, []byte("["+h12SmallEvent(kvsecrets.EventSecretNewVersionCreated, n, h12Ver)+"]"))
				}
			case "other-vaults":
				for _, n := range names {
					p.Resolve(ctx, "https://other.vault.azure.net/secrets/"+n)
				}
				v2.SetLatency(5 * time.Second)
				wg.Go(func() { p.Resolve(ctx, "https://other.vault.azure.net/secrets/new") })
			case "Refresh":
				p.Get(ctx, "s1")
				v.SetLatency(5 * time.Second)
				wg.Go(func() { p.Refresh(ctx, "s1") })
			case "Preload":
				v.SetLatency(5 * time.Second)
				wg.Go(func() { p.Preload(ctx, names...) })
			case "background-refresh":
				p.Preload(ctx, names...)
				v.SetLatency(5 * time.Second)
				time.Sleep(300 * time.Millisecond)
			case "Close-in-OnRotate":
				p.Get(ctx, "s1")
				v.SetSecret("s1", "y", nil)
				p.Refresh(ctx, "s1")
				<-closed
			case "Verify":
				v.SetLatency(5 * time.Second)
				for _, n := range names[:5] {
					wg.Go(func() { p.Verify(ctx, n, "x") })
				}
			}
			time.Sleep(50 * time.Millisecond)
			t0 := time.Now()
			p.Close()
			el := time.Since(t0)
			wg.Wait()
			v.SetLatency(0)
			v2.SetLatency(0)
			if el > time.Second {
				t.Errorf("Close took %v", el)
			}
			if err := goleak.Find(ign); err != nil {
				t.Error(err)
			}
		})
	}
}

// ===== Correctness: a disabled version served after Refresh said so =====

// TestHostile12RefreshDisabledStopsPinnedVersion: the only version of a
// secret is cached (Get) and pinned (GetVersion), then disabled. go doc of
// Refresh: "When Refresh returns, Get, Verify and pinned versions all serve
// what it read: ... a secret the vault reports deleted, disabled or
// forbidden is refused." The pinned read of that very version must fail.
func TestHostile12RefreshDisabledStopsPinnedVersion(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		v := h12Vault(t)
		ver := h12Set(t, v, "K", "old")
		p := h12Prov(t, v, nil) // TTL 1h
		h12Get(t, p, "K", "old")
		if _, err := p.GetVersion(ctx, "K", ver); err != nil {
			t.Fatal(err)
		}
		if err := v.SetEnabled("K", ver, false); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Refresh(ctx, "K"); !errors.Is(err, kvsecrets.ErrDisabled) {
			t.Fatalf("Refresh: %v, want ErrDisabled", err)
		}
		if _, err := p.Get(ctx, "K"); !errors.Is(err, kvsecrets.ErrDisabled) {
			t.Errorf("Get after Refresh: %v", err)
		}
		served := time.Duration(-1)
		start := time.Now()
		for time.Since(start) < 2*time.Hour {
			if _, err := p.GetVersion(ctx, "K", ver); err == nil {
				served = time.Since(start)
			}
			time.Sleep(time.Minute)
		}
		if served >= 0 {
			t.Errorf("GetVersion served the disabled version until %v after Refresh reported it disabled", served)
		}
	})
}
