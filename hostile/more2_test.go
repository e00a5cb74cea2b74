package hostile_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

// Hits survive eviction and idle drops: the counter is for the Provider's life.
func TestHitsSurviveEvictionAndIdleDrop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{MaxEntries: 2, TTL: time.Hour})
		for i := range 6 {
			set(t, v, fmt.Sprint("S", i), "x")
		}
		h, _ := p.Handle("S0")
		h.Get(t.Context())
		p.Get(t.Context(), "S1")
		before := p.Stats().Hits
		for range 1000 {
			h.Get(t.Context())
			p.Get(t.Context(), "S1")
		}
		if got := p.Stats().Hits - before; got != 2000 {
			t.Fatalf("Hits %d want 2000", got)
		}
		for i := 2; i < 6; i++ {
			time.Sleep(2 * time.Second)
			p.Get(t.Context(), fmt.Sprint("S", i))
		}
		st := p.Stats()
		if st.Evictions == 0 {
			t.Fatalf("no eviction")
		}
		if st.Hits < before+2000 {
			t.Errorf("Hits went from %d to %d across %d evictions", before+2000, st.Hits, st.Evictions)
		}
		h0 := st.Hits
		time.Sleep(5 * time.Hour)
		synctest.Wait()
		if s := p.Stats(); s.Hits < h0 || s.IdleDrops == 0 {
			t.Errorf("after idle drops (%d): Hits %d -> %d", s.IdleDrops, h0, s.Hits)
		}
	})
}

// Stale serves are hits, counted exactly under concurrency, through handles and Get.
func TestHitsExactWhileStale(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{TTL: time.Hour})
		set(t, v, "A", "a")
		h, _ := p.Handle("A")
		h.Get(t.Context())
		v.FailFor(5*time.Hour, kvtest.ServiceUnavailable)
		time.Sleep(2 * time.Hour)
		synctest.Wait()
		s0 := p.Stats()
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 1000 {
					if g%2 == 0 {
						h.Get(context.Background())
					} else {
						p.Get(context.Background(), "A")
					}
				}
			}()
		}
		wg.Wait()
		s1 := p.Stats()
		if s1.Hits-s0.Hits != 8000 || s1.StaleServes-s0.StaleServes != 8000 {
			t.Errorf("8000 stale reads: Hits +%d, StaleServes +%d", s1.Hits-s0.Hits, s1.StaleServes-s0.StaleServes)
		}
	})
}

// Readiness and Status after Provider.Close.
func TestHealthAfterClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		set(t, v, "A", "a")
		p.Get(t.Context(), "A")
		h := p.HealthHandler("A")
		p.Close()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/ready", nil))
		if rec.Code != 503 {
			t.Errorf("closed Provider: probe %d %s", rec.Code, rec.Body)
		}
		if st := p.Status("A"); st.Served() {
			t.Errorf("closed Provider: Status %+v", st)
		}
	})
}

// Watched secrets are refreshed even past MaxEntries evictions: a rotation made in the
// vault (not through this Provider) reaches the watcher and the Live by the schedule.
func TestFollowedSecretsRefreshedDespiteEviction(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{MaxEntries: 3, TTL: time.Hour})
		set(t, v, "A", "a0")
		set(t, v, "B", "b0")
		type C struct {
			B string `keyvault:"B"`
		}
		for i := range 10 {
			set(t, v, fmt.Sprint("X", i), "x")
		}
		live, err := kvsecrets.LoadLive[C](t.Context(), p, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		r := &recorder{}
		done := make(chan struct{})
		ctx, cancel := context.WithCancel(t.Context())
		defer func() { cancel(); <-done }()
		watchInto(ctx, p.Watch(ctx, "A"), r, done)
		synctest.Wait()
		for i := range 10 {
			time.Sleep(time.Second)
			p.Get(t.Context(), fmt.Sprint("X", i))
		}
		t.Logf("evictions %d; vault reads of A %d, B %d for 10 Gets of other names; A %+v; B %+v", p.Stats().Evictions, v.SecretRequests("A"), v.SecretRequests("B"), p.Status("A"), p.Status("B"))
		set(t, v, "A", "a1")
		set(t, v, "B", "b1")
		time.Sleep(2 * time.Hour)
		synctest.Wait()
		if r.last().val != "a1" {
			t.Errorf("watched A after evictions, rotated in the vault 2 TTLs ago: watcher has %+v; status %+v", r.all(), p.Status("A"))
		}
		if live.Current().B != "b1" {
			t.Errorf("Live's B after evictions, rotated 2 TTLs ago: %+v; status %+v", *live.Current(), p.Status("B"))
		}
	})
}

// Tags of a yielded Secret are the watcher's own.
func TestWatchTagsAreCopies(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		v.SetSecret("A", "a", &kvtest.SecretOptions{Tags: map[string]string{"k": "v"}})
		for s := range p.Watch(t.Context(), "A") {
			s.Tags["k"] = "mutated"
			break
		}
		for s := range p.Watch(t.Context(), "A") {
			if s.Tags["k"] != "v" {
				t.Errorf("second watcher sees %v", s.Tags)
			}
			break
		}
		if s, _ := p.GetSecret(t.Context(), "A"); s.Tags["k"] != "v" {
			t.Errorf("GetSecret sees %v", s.Tags)
		}
	})
}

// Names at the limits: Handle agrees with Get.
func TestHandleNameLimits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, p, _ := env(t, nil)
		for _, n := range []string{"", "a", string(make([]byte, 127)), "-", "a_b", "a.b", "é", "A--", fmt.Sprintf("%0127d", 0), fmt.Sprintf("%0128d", 0), "a b", "a\x00"} {
			_, herr := p.Handle(n)
			_, gerr := p.Get(t.Context(), n)
			hb := errors.Is(herr, kvsecrets.ErrInvalidName)
			gb := errors.Is(gerr, kvsecrets.ErrInvalidName)
			if hb != gb {
				t.Errorf("name %q: Handle %v, Get %v", n, herr, gerr)
			}
		}
	})
}

// LoadLive on a closed Provider, Health with no names lists handle/Live secrets.
func TestLoadLiveAfterCloseAndHealthAll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		set(t, v, "A", "a")
		set(t, v, "B", "b")
		h, _ := p.Handle("b")
		h.Get(t.Context())
		p.Get(t.Context(), "A")
		all := p.Health()
		if len(all) != 2 || all[0].State != kvsecrets.StateFresh || all[1].State != kvsecrets.StateFresh {
			t.Errorf("Health() = %+v", all)
		}
		p.Close()
		type C struct {
			A string `keyvault:"A"`
		}
		if _, err := kvsecrets.LoadLive[C](t.Context(), p, nil); !errors.Is(err, kvsecrets.ErrClosed) {
			t.Errorf("LoadLive after Close: %v", err)
		}
	})
}
