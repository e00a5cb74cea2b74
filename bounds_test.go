package kvsecrets

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kvsecrets/kvsecrets/kvtest"
)

// TestMissesAreForgotten: 100,000 distinct names the vault does not hold
// (caller-chosen input) keep at most 512 bytes each while their misses are
// remembered, and once NegativeTTL has passed the entries are gone and the
// heap is back near where it started.
func TestMissesAreForgotten(t *testing.T) {
	n := 100000
	if raceEnabled || testing.Short() {
		n = 20000
	}
	synctest.Test(t, func(t *testing.T) {
		vault, err := kvtest.NewInProcess(nil)
		if err != nil {
			t.Fatal(err)
		}
		defer vault.Close()
		p, err := NewProvider(vault.URL(), vault.Credential(),
			// Without pacing, which would spread the reads over minutes,
			// past NegativeTTL: this test measures memory, not the rate.
			&Options{ClientOptions: vault.ClientOptions(), MaxEntries: 2 * n, PreloadConcurrency: 64, DisablePacing: true})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		names := make([]string, n)
		for i := range names {
			names[i] = fmt.Sprintf("missing-%06d", i)
		}
		vault.SetSecret("warm", "v", nil)
		mustGet(t, p, "warm", "v") // the client's fixed costs
		start := heapNow()
		if err := p.Preload(context.Background(), names...); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Preload of missing names: %v", err)
		}
		if got := p.Stats().Entries; got != n+1 {
			t.Fatalf("entries = %d, want %d", got, n+1)
		}
		vault.ResetCounts() // the vault's own per-name counters
		names = nil
		per := float64(int64(heapNow())-int64(start)) / float64(n)
		t.Logf("%d missing names: %.0f bytes each while remembered", n, per)
		if per > 512 {
			t.Errorf("a remembered miss keeps %.0f bytes, want at most 512", per)
		}

		time.Sleep(DefaultNegativeTTL + DefaultFetchTimeout + time.Second)
		synctest.Wait()
		if got := p.Stats().Entries; got != 1 {
			t.Fatalf("entries after NegativeTTL = %d, want 1 (the secret read)", got)
		}
		runtime.KeepAlive(p)
		if after := heapNow(); after > start+1<<20 {
			t.Fatalf("heap after NegativeTTL = %d bytes, %d more than before the misses", after, int64(after)-int64(start))
		}
		mustGet(t, p, "warm", "v")
	})
}

// TestMaxEntriesEvictsTheLeastRecentlyRead: past MaxEntries, names read
// once are evicted and names read all along stay cached; the count never
// passes the bound and evictions are counted.
func TestMaxEntriesEvictsTheLeastRecentlyRead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		hot := []string{"hot-a", "hot-b", "hot-c", "hot-d", "hot-e"}
		for _, n := range hot {
			v.set(n, "h")
		}
		const limit, cold = 200, 2000
		for i := range cold {
			v.set(fmt.Sprintf("cold-%d", i), "c")
		}
		p := v.newProvider(t, &Options{MaxEntries: limit})
		for i := range cold {
			for _, n := range hot {
				mustGet(t, p, n, "h")
			}
			mustGet(t, p, fmt.Sprintf("cold-%d", i), "c")
			if got := p.Stats().Entries; got > limit {
				t.Fatalf("entries = %d, past MaxEntries %d", got, limit)
			}
			time.Sleep(time.Second)
		}
		st := p.Stats()
		if want := uint64(cold + len(hot) - limit); st.Evictions != want {
			t.Fatalf("evictions = %d, want %d", st.Evictions, want)
		}
		before := v.requests.Load()
		for _, n := range hot {
			mustGet(t, p, n, "h")
		}
		if v.requests.Load() != before {
			t.Fatal("a name read all along was evicted")
		}
		mustGet(t, p, "cold-0", "c") // evicted long ago: read again
		if v.requests.Load() != before+1 {
			t.Fatal("the least recently read name was not evicted")
		}
	})
}

// TestMaxEntriesCountsPinnedVersionsAndKeySets: every pinned version and
// key set counts, and a flood of pinned versions of one name stays within
// the bound.
func TestMaxEntriesCountsPinnedVersionsAndKeySets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		var versions []string
		for i := range 300 {
			versions = append(versions, v.set("K", fmt.Sprint("v", i)))
		}
		p := v.newProvider(t, &Options{MaxEntries: 50})
		for i, ver := range versions {
			s, err := p.GetVersion(t.Context(), "K", ver)
			if err != nil || s.Value() != fmt.Sprint("v", i) {
				t.Fatalf("GetVersion %d: %v", i, err)
			}
			if _, err := p.Verify(t.Context(), "K", "v299"); err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if got := p.Stats().Entries; got > 50 {
				t.Fatalf("entries = %d, past MaxEntries", got)
			}
			time.Sleep(time.Second)
		}
		if p.Stats().Evictions == 0 {
			t.Fatal("no evictions")
		}
	})
}

// TestIdleSecretsStopBeingRefreshed: a secret nobody reads for IdleTimeout
// (default 2 TTLs) is dropped at its next refresh; one read all along is
// refreshed all along.
func TestIdleSecretsStopBeingRefreshed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("Hot", "h")
		v.set("Cold", "c")
		p := v.newProvider(t, &Options{TTL: time.Minute, DisableJitter: true})
		mustGet(t, p, "Cold", "c")
		for range 360 {
			mustGet(t, p, "Hot", "h")
			time.Sleep(10 * time.Second)
		}
		synctest.Wait()
		perName := func(n string) int {
			v.mu.Lock()
			defer v.mu.Unlock()
			return v.perName[strings.ToLower(n)]
		}
		// Hot: one read, then one every 0.75 minute for an hour.
		if got := perName("Hot"); got < 75 || got > 82 {
			t.Errorf("Hot read %d times in an hour, want about 81", got)
		}
		// Cold: one read, refreshes at 0.75, 1.5 minutes (not yet idle for
		// 2), dropped at 2.25.
		if got := perName("Cold"); got != 3 {
			t.Errorf("Cold read %d times, want 3", got)
		}
		st := p.Stats()
		if st.IdleDrops != 1 || st.Entries != 1 {
			t.Fatalf("stats = %+v, want one idle drop and one entry", st)
		}
		mustGet(t, p, "Cold", "c") // read again when asked
	})
}

// TestMaxStaleIsAHardLimit: the case. MaxStale 1s, FetchTimeout
// 2s, RefreshConcurrency 1 and six secrets on a vault that hangs: the
// refreshes queue behind each other, and no value may be served more than
// MaxStale after its last successful read.
func TestMaxStaleIsAHardLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		names := []string{"A", "B", "C", "D", "E", "F"}
		for _, n := range names {
			v.set(n, "x")
		}
		const maxStale = time.Second
		p := v.newProvider(t, &Options{TTL: time.Second, MaxStale: maxStale, FetchTimeout: 2 * time.Second,
			RefreshConcurrency: 1})
		read := map[string]time.Time{}
		for _, n := range names {
			mustGet(t, p, n, "x")
			read[n] = time.Now()
		}
		v.mu.Lock()
		v.gate = make(chan struct{}) // the vault hangs
		v.mu.Unlock()
		served := 0
		for range 300 {
			time.Sleep(50 * time.Millisecond)
			for _, n := range names {
				if _, err := p.Get(t.Context(), n); err == nil {
					served++
					if age := time.Since(read[n]); age > maxStale {
						t.Fatalf("%s served %v after its last successful read (MaxStale %v)", n, age, maxStale)
					}
				} else if !errors.Is(err, ErrUnavailable) {
					t.Fatalf("Get(%s): %v", n, err)
				}
			}
		}
		if served == 0 {
			t.Fatal("nothing was served within MaxStale")
		}
		v.mu.Lock()
		close(v.gate)
		v.gate = nil
		v.mu.Unlock()
	})
}

// TestBackoffKeepsDoublingAcrossAMaxStaleDrop: through a long outage with
// no callers, retries slow down to MaxRetryBackoff and stay there; the
// MaxStale drop does not start them over.
func TestBackoffKeepsDoublingAcrossAMaxStaleDrop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("K", "x")
		p := v.newProvider(t, &Options{TTL: time.Minute, MaxStale: 10 * time.Minute, DisableJitter: true,
			IdleTimeout: 24 * time.Hour})
		mustGet(t, p, "K", "x")
		v.setFail(func(string) (int, string) { return http.StatusServiceUnavailable, "" })
		time.Sleep(45 * time.Second) // the first refresh fails
		synctest.Wait()
		var counts []int64
		for range 12 { // two hours, in 10-minute windows
			before := v.requests.Load()
			time.Sleep(10 * time.Minute)
			synctest.Wait()
			counts = append(counts, v.requests.Load()-before)
		}
		// Each read is 4 requests (the SDK's own 3 retries of a 503). At
		// MaxRetryBackoff (2 minutes) that is 5 reads, 20 requests per
		// window; starting over after the drop would make about 80.
		for i, c := range counts[1:] {
			if c > 20 {
				t.Fatalf("window %d: %d requests, want at most 20 (all: %v)", i+1, c, counts)
			}
		}
		if p.Stats().StaleDrops != 1 {
			t.Fatalf("stats = %+v", p.Stats())
		}
		v.setFail(nil)
		time.Sleep(DefaultMaxRetryBackoff)
		synctest.Wait()
		before := v.requests.Load()
		mustGet(t, p, "K", "x") // back by itself
		if v.requests.Load() != before {
			t.Fatal("the value came back only when asked")
		}
	})
}

// TestOtherVaultsAreBounded: references may name at most MaxOtherVaults
// vaults besides the Provider's own; the next is refused before any
// request, and Providers for other vaults cost no goroutine once idle.
func TestOtherVaultsAreBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		p := v.newProvider(t, nil)
		for i := range MaxOtherVaults {
			_, err := p.Resolve(t.Context(), fmt.Sprintf("https://vault%d.vault.azure.net/secrets/missing", i))
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("vault %d: %v", i, err)
			}
		}
		requests := v.requests.Load()
		_, err := p.Resolve(t.Context(), "https://one-too-many.vault.azure.net/secrets/missing")
		if !errors.Is(err, ErrTooManyVaults) || v.requests.Load() != requests {
			t.Fatalf("vault %d: %v after %d requests, want ErrTooManyVaults before any", MaxOtherVaults+1, err, v.requests.Load()-requests)
		}
		if strings.Contains(err.Error(), "one-too-many") {
			t.Fatalf("the error repeats the reference: %v", err)
		}
		// The misses are remembered for NegativeTTL, then forgotten.
		time.Sleep(DefaultNegativeTTL + DefaultFetchTimeout + time.Second)
		synctest.Wait()
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if n := strings.Count(stacks, "kvsecrets.(*Provider).run"); n != 0 {
			t.Fatalf("%d Provider goroutines once idle:\n%s", n, stacks)
		}
		// Already made: still served.
		if _, err := p.Resolve(t.Context(), "https://vault0.vault.azure.net/secrets/missing"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("a vault already made: %v", err)
		}
	})
}
