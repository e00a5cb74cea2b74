package kvsecrets

import (
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

func TestNotifyRefreshesACachedSecret(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("ApiKey", "key-1")
		v.set("Other", "o")
		p := v.newProvider(t, &Options{TTL: 8 * time.Hour})
		mustGet(t, p, "ApiKey", "key-1")
		ver := v.set("ApiKey", "key-2")
		before := v.count("ApiKey")

		for _, tc := range []struct {
			n    Notice
			want bool
		}{
			{Notice{Vault: "other.vault.azure.net", Name: "ApiKey", Version: ver}, false}, // another vault
			{Notice{Name: "Other", Version: ver}, false},                                  // not cached
		} {
			if got, err := p.Notify(tc.n); got != tc.want || err != nil {
				t.Errorf("Notify(%+v) = %v, %v; want %v", tc.n, got, err, tc.want)
			}
		}
		if got, err := p.Notify(Notice{Vault: "https://FAKE.vault.azure.net:443/", Name: "apikey", Version: ver}); !got || err != nil {
			t.Fatalf("Notify of a new version = %v, %v", got, err)
		}
		synctest.Wait()
		mustGet(t, p, "ApiKey", "key-2")
		if n := v.count("ApiKey") - before; n != 1 {
			t.Errorf("%d reads after the notice, want 1", n)
		}
		// Now served: the same notice again is no news.
		if got, _ := p.Notify(Notice{Name: "ApiKey", Version: ver}); got {
			t.Error("a notice of the version already served started a refresh")
		}
		st := p.Stats()
		if st.Notices != 4 || st.EventsActedOn != 1 {
			t.Errorf("stats: %d notices, %d acted on; want 4 and 1", st.Notices, st.EventsActedOn)
		}
	})
}

func TestNotifyRefusesBadInputAndChangesNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("ApiKey", "key-1")
		p := v.newProvider(t, nil)
		mustGet(t, p, "ApiKey", "key-1")
		before := v.count("ApiKey")
		for _, n := range []Notice{{Name: ""}, {Name: "sk_live_abc/def"}, {Name: strings.Repeat("a", 128)}} {
			if ok, err := p.Notify(n); ok || !errors.Is(err, ErrInvalidName) || strings.Contains(err.Error(), "sk_live") {
				t.Errorf("Notify(name %q) = %v, %v", n.Name, ok, err)
			}
		}
		if ok, err := p.Notify(Notice{Name: "ApiKey", Version: "../x"}); ok || !errors.Is(err, ErrInvalidVersion) {
			t.Errorf("bad version: %v, %v", ok, err)
		}
		synctest.Wait()
		if v.count("ApiKey") != before || p.Stats().Notices != 0 {
			t.Errorf("bad notices reached the vault or the counters")
		}
		mustGet(t, p, "ApiKey", "key-1")
		p.Close()
		if ok, err := p.Notify(Notice{Name: "ApiKey"}); ok || err != nil {
			t.Errorf("Notify after Close = %v, %v", ok, err)
		}
	})
}

func TestNotifyIsCoalescedAndSpread(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("ApiKey", "key-1")
		spread := 30 * time.Second
		p := v.newProvider(t, &Options{TTL: 8 * time.Hour, EventCoalesceWindow: 5 * time.Second, EventSpread: spread})
		mustGet(t, p, "ApiKey", "key-1")
		v.set("ApiKey", "key-2")
		before := v.count("ApiKey")
		start := time.Now()
		// A forged or replayed burst: 10,000 notices in one instant.
		for range 10000 {
			p.Notify(Notice{Name: "ApiKey"})
		}
		for v.count("ApiKey") == before {
			time.Sleep(100 * time.Millisecond)
		}
		if took := time.Since(start); took > spread {
			t.Errorf("the refresh came %v after the notice, past EventSpread %v", took, spread)
		}
		time.Sleep(time.Minute)
		if n := v.count("ApiKey") - before; n > 2 {
			t.Errorf("%d reads for a burst of 10,000 notices; want the burst folded into at most 2", n)
		}
		mustGet(t, p, "ApiKey", "key-2")

		// A notice's own Delay and Spread replace EventSpread.
		v.set("ApiKey", "key-3")
		before, start = v.count("ApiKey"), time.Now()
		p.Notify(Notice{Name: "ApiKey", Delay: 2 * time.Second, Spread: time.Second})
		for v.count("ApiKey") == before {
			time.Sleep(10 * time.Millisecond)
		}
		if took := time.Since(start); took < 2*time.Second || took > 3*time.Second {
			t.Errorf("the refresh came %v after a notice with Delay 2s and Spread 1s", took)
		}
		if _, err := p.Notify(Notice{Name: "ApiKey", Delay: -time.Second}); err == nil {
			t.Error("a negative Delay was accepted")
		}
	})
}

func TestNotifyAllRereadsEachSecretOnceWithinTheSpread(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		names := []string{"a", "b", "c", "d", "e"}
		for _, n := range names {
			v.set(n, "1")
		}
		p := v.newProvider(t, &Options{TTL: 8 * time.Hour})
		for _, n := range names {
			mustGet(t, p, n, "1")
		}
		if _, err := p.GetVersion(t.Context(), "a", v.set("a", "2")); err != nil { // a pinned version: not re-read
			t.Fatal(err)
		}
		v.set("c", "2")
		before := map[string]int{}
		for _, n := range names {
			before[n] = v.count(n)
		}
		if got := p.NotifyAll(time.Minute); got != len(names) {
			t.Errorf("NotifyAll planned %d re-reads, want %d", got, len(names))
		}
		time.Sleep(time.Minute)
		for _, n := range names {
			if d := v.count(n) - before[n]; d != 1 {
				t.Errorf("%s read %d times within the spread, want once", n, d)
			}
		}
		mustGet(t, p, "c", "2")
	})
}

func TestAddOnRotate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("ApiKey", "key-1")
		var fromOptions, first, second []string
		p := v.newProvider(t, &Options{TTL: time.Hour, OnRotate: func(ev RotationEvent) { fromOptions = append(fromOptions, ev.NewVersion) }})
		mustGet(t, p, "ApiKey", "key-1")
		p.AddOnRotate(func(RotationEvent) { panic("a hook's panic is recovered") })
		removeFirst := p.AddOnRotate(func(ev RotationEvent) { first = append(first, ev.NewVersion) })
		p.AddOnRotate(func(ev RotationEvent) { second = append(second, ev.NewVersion) })

		v2 := v.set("ApiKey", "key-2")
		if _, err := p.Refresh(t.Context(), "ApiKey"); err != nil {
			t.Fatal(err)
		}
		removeFirst()
		removeFirst() // twice is harmless
		v3 := v.set("ApiKey", "key-3")
		if _, err := p.Refresh(t.Context(), "ApiKey"); err != nil {
			t.Fatal(err)
		}
		if strings.Join(fromOptions, ",") != v2+","+v3 || strings.Join(first, ",") != v2 || strings.Join(second, ",") != v2+","+v3 {
			t.Errorf("OnRotate %v, first hook %v, second hook %v", fromOptions, first, second)
		}
	})
}

func TestNotifyRefusesBadVaultsAndDelays(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("ApiKey", "key-1")
		p := v.newProvider(t, nil)
		mustGet(t, p, "ApiKey", "key-1")
		before := v.count("ApiKey")
		for _, n := range []Notice{
			{Vault: "https://user@fake.vault.azure.net/", Name: "ApiKey"},
			{Vault: "https://fake.vault.azure.net/secrets/x", Name: "ApiKey"},
			{Vault: "https://fake.vault.azure.net/?q=1", Name: "ApiKey"},
			{Vault: "http://fake.vault.azure.net/", Name: "ApiKey"},
			{Vault: "fake.vault.azure.net\n", Name: "ApiKey"},
			{Vault: "javascript:alert(1)", Name: "ApiKey"},
			{Vault: strings.Repeat("a", 1<<20), Name: "ApiKey"},
			{Name: "ApiKey", Delay: 25 * time.Hour},
			{Name: "ApiKey", Spread: 1 << 62},
			{Name: "ApiKey", Delay: -1},
		} {
			if ok, err := p.Notify(n); ok || err == nil || strings.Contains(err.Error(), "alert") {
				t.Errorf("Notify(vault %.40q, delay %v, spread %v) = %v, %v; want an error", n.Vault, n.Delay, n.Spread, ok, err)
			}
		}
		synctest.Wait()
		if v.count("ApiKey") != before || p.Stats().Notices != 0 {
			t.Errorf("refused notices reached the vault (%d reads) or the counters (%d)", v.count("ApiKey")-before, p.Stats().Notices)
		}
	})
}

// A notice with a long Delay neither postpones the secret's own refresh
// nor swallows a later notice that would come sooner.
func TestNotifyLongDelayPostponesNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("ApiKey", "key-1")
		p := v.newProvider(t, &Options{TTL: time.Hour, DisableJitter: true})
		mustGet(t, p, "ApiKey", "key-1")
		if ok, err := p.Notify(Notice{Name: "ApiKey", Delay: 20 * time.Hour}); !ok || err != nil {
			t.Fatalf("Notify = %v, %v", ok, err)
		}
		time.Sleep(10 * time.Second)
		v.set("ApiKey", "key-2")
		start := time.Now()
		p.Notify(Notice{Name: "ApiKey"}) // a genuine notice, after the window
		for v.count("ApiKey") == 1 {
			time.Sleep(100 * time.Millisecond)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("the genuine notice's refresh came %v later, behind the 20-hour one", took)
		}
		mustGet(t, p, "ApiKey", "key-2")

		// And the hourly schedule goes on regardless.
		p.Notify(Notice{Name: "ApiKey", Delay: 20 * time.Hour})
		n := v.count("ApiKey")
		time.Sleep(2 * time.Hour)
		if got := v.count("ApiKey") - n; got < 2 {
			t.Errorf("%d refreshes in two hours with TTL 1h after a 20-hour notice; want the schedule kept", got)
		}
	})
}
