package hostile_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

// After the entry is evicted (MaxEntries) and re-made by Get, the handle must
// follow the new entry: a rotation and then a revocation seen by Get are seen by h.Get.
func TestHandleFollowsAfterEviction(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{MaxEntries: 2})
		set(t, v, "A", "a1")
		for i := range 5 {
			set(t, v, fmt.Sprint("X", i), "x")
		}
		h, _ := p.Handle("A")
		if got, _ := h.Get(t.Context()); got != "a1" {
			t.Fatalf("h.Get = %q", got)
		}
		for i := range 5 {
			time.Sleep(2 * time.Second)
			p.Get(t.Context(), fmt.Sprint("X", i))
		}
		if p.Stats().Evictions == 0 {
			t.Fatalf("nothing evicted: %+v", p.Stats())
		}
		set(t, v, "A", "a2")
		if got, err := p.Get(t.Context(), "A"); got != "a2" {
			t.Fatalf("p.Get after eviction = %q, %v", got, err)
		}
		if got, err := h.Get(t.Context()); got != "a2" || err != nil {
			t.Errorf("after eviction and re-read by Get, h.Get = %q, %v; Get serves a2", got, err)
		}
		v.SetEnabled("A", "", false)
		if _, err := p.Refresh(t.Context(), "A"); !errors.Is(err, kvsecrets.ErrDisabled) {
			t.Fatalf("Refresh = %v", err)
		}
		if got, err := h.Get(t.Context()); !errors.Is(err, kvsecrets.ErrDisabled) {
			t.Errorf("revoked after eviction: h.Get = %q, %v; want ErrDisabled", got, err)
		}
	})
}

// Same, the other way round: entry evicted, re-made by the HANDLE; Get must agree.
func TestHandleRemakesEntryAfterEviction(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{MaxEntries: 2})
		set(t, v, "A", "a1")
		for i := range 5 {
			set(t, v, fmt.Sprint("X", i), "x")
		}
		h, _ := p.Handle("A")
		h.Get(t.Context())
		for i := range 5 {
			time.Sleep(2 * time.Second)
			p.Get(t.Context(), fmt.Sprint("X", i))
		}
		set(t, v, "A", "a2")
		if got, err := h.Get(t.Context()); got != "a2" || err != nil {
			t.Errorf("after eviction h.Get = %q, %v; want a2 (re-read)", got, err)
		}
		if st := p.Status("A"); st.State != kvsecrets.StateFresh {
			t.Errorf("Status after h.Get re-made the entry: %+v", st)
		}
		set(t, v, "A", "a3")
		if _, err := p.Refresh(t.Context(), "A"); err != nil {
			t.Fatal(err)
		}
		g, _ := p.Get(t.Context(), "A")
		hg, _ := h.Get(t.Context())
		if g != "a3" || hg != "a3" {
			t.Errorf("after Refresh: Get %q, h.Get %q; want a3", g, hg)
		}
	})
}

// Reads only through the handle count as reads: no idle drop while h.Get is used.
func TestHandleReadsPreventIdleDrop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{TTL: time.Hour})
		set(t, v, "A", "a1")
		h, _ := p.Handle("A")
		for range 12 { // 6 hours, a read every 30 minutes
			if _, err := h.Get(t.Context()); err != nil {
				t.Fatal(err)
			}
			time.Sleep(30 * time.Minute)
		}
		st := p.Stats()
		if st.IdleDrops != 0 || st.Misses != 1 {
			t.Errorf("read every 30m through a handle only: IdleDrops %d, Misses %d (want 0, 1)", st.IdleDrops, st.Misses)
		}
	})
}

// Idle drop, then the handle keeps working and sees a rotation.
func TestHandleAfterIdleDrop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{TTL: time.Hour})
		set(t, v, "A", "a1")
		h, _ := p.Handle("A")
		h.Get(t.Context())
		time.Sleep(5 * time.Hour)
		synctest.Wait()
		if p.Stats().IdleDrops == 0 {
			t.Fatalf("not dropped: %+v", p.Stats())
		}
		set(t, v, "A", "a2")
		if got, err := h.Get(t.Context()); got != "a2" {
			t.Errorf("after idle drop h.Get = %q, %v", got, err)
		}
		set(t, v, "A", "a3")
		p.Refresh(t.Context(), "A")
		if got, _ := h.Get(t.Context()); got != "a3" {
			t.Errorf("after drop and Refresh h.Get = %q", got)
		}
	})
}

// Handle vs Get during an outage past MaxStale, and after it.
func TestHandleGetAgreeThroughOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{TTL: time.Hour, MaxStale: 3 * time.Hour})
		set(t, v, "A", "a1")
		h, _ := p.Handle("A")
		if _, err := h.Get(t.Context()); err != nil {
			t.Fatal(err)
		}
		v.FailFor(10*time.Hour, kvtest.ServiceUnavailable)
		for i := range 16 * 12 {
			time.Sleep(5 * time.Minute)
			gv, gerr := p.Get(t.Context(), "A")
			hv, herr := h.Get(t.Context())
			hs, hserr := h.Secret(t.Context())
			if gv != hv || (gerr == nil) != (herr == nil) || !errors.Is(herr, unwrapKind(gerr)) || hs.Value() != hv || (hserr == nil) != (herr == nil) {
				t.Fatalf("t=+%v: Get %q,%v; h.Get %q,%v; h.Secret %q,%v", time.Duration(i+1)*5*time.Minute, gv, gerr, hv, herr, hs.Value(), hserr)
			}
			el := time.Duration(i+1) * 5 * time.Minute
			if el > 3*time.Hour+time.Minute && el < 10*time.Hour && !errors.Is(herr, kvsecrets.ErrUnavailable) {
				t.Fatalf("t=+%v past MaxStale: h.Get = %q, %v", el, hv, herr)
			}
			if el < 3*time.Hour-time.Minute && herr != nil {
				t.Fatalf("t=+%v within MaxStale: h.Get err %v", el, herr)
			}
		}
		// outage over at +10h: both recover
		time.Sleep(10 * time.Minute)
		if hv, err := h.Get(t.Context()); hv != "a1" {
			t.Errorf("after the outage: h.Get %q, %v", hv, err)
		}
	})
}

func unwrapKind(err error) error {
	var se *kvsecrets.SecretError
	if errors.As(err, &se) {
		return se.Kind
	}
	return err
}

// One in-flight read shared among concurrent Handle and Get callers; a caller that
// gives up gets ctx.Err() and does not fail the others.
func TestHandleSharesFirstRead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		set(t, v, "A", "a1")
		v.SetLatency(2 * time.Second)
		h1, _ := p.Handle("A")
		h2, _ := p.Handle("a") // case-insensitive: same entry
		var wg sync.WaitGroup
		errs := make(chan error, 1000)
		for i := range 1000 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx := context.Background()
				var cancel context.CancelFunc = func() {}
				if i%10 == 0 {
					ctx, cancel = context.WithTimeout(ctx, time.Second)
				}
				defer cancel()
				var got string
				var err error
				switch i % 3 {
				case 0:
					got, err = h1.Get(ctx)
				case 1:
					got, err = h2.Get(ctx)
				default:
					got, err = p.Get(ctx, "A")
				}
				if i%10 == 0 {
					if !errors.Is(err, context.DeadlineExceeded) {
						errs <- fmt.Errorf("caller %d with 1s deadline: %q, %v", i, got, err)
					}
				} else if got != "a1" || err != nil {
					errs <- fmt.Errorf("caller %d: %q, %v", i, got, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Error(e)
			break
		}
		if n := v.SecretRequests("A"); n != 1 {
			t.Errorf("1000 concurrent first reads through handles and Get: %d requests", n)
		}
	})
}

// Handle makes no request and no entry; revocation via FailSecret stops h.Get at once.
func TestHandleNoRequestAndRevocation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		set(t, v, "A", "a1")
		for range 100 {
			if _, err := p.Handle("A"); err != nil {
				t.Fatal(err)
			}
		}
		if c := v.Counts(); p.Stats().VaultRequests != 0 || p.Stats().Entries != 0 {
			t.Errorf("Handle made requests/entries: %+v %+v", p.Stats(), c)
		}
		h, _ := p.Handle("A")
		h.Get(t.Context())
		v.FailSecret("A", kvtest.ForbiddenByRbac)
		p.Refresh(t.Context(), "A")
		if _, err := h.Get(t.Context()); !errors.Is(err, kvsecrets.ErrForbidden) {
			t.Errorf("revoked: h.Get err = %v", err)
		}
		if _, err := h.Secret(t.Context()); !errors.Is(err, kvsecrets.ErrForbidden) {
			t.Errorf("revoked: h.Secret err = %v", err)
		}
		v.ClearFaults()
		time.Sleep(31 * time.Second)
		if got, err := h.Get(t.Context()); got != "a1" {
			t.Errorf("restored past NegativeTTL: h.Get %q, %v", got, err)
		}
	})
}

// Handle after Provider.Close: ErrClosed, for Get, Secret and a cold handle.
func TestHandleAfterClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		set(t, v, "A", "a1")
		set(t, v, "B", "b1")
		h, _ := p.Handle("A")
		hb, _ := p.Handle("B")
		h.Get(t.Context())
		p.Close()
		if got, err := h.Get(t.Context()); !errors.Is(err, kvsecrets.ErrClosed) {
			t.Errorf("warm handle after Close: %q, %v", got, err)
		}
		if s, err := h.Secret(t.Context()); !errors.Is(err, kvsecrets.ErrClosed) {
			t.Errorf("warm handle Secret after Close: %v, %v", s, err)
		}
		if got, err := hb.Get(t.Context()); !errors.Is(err, kvsecrets.ErrClosed) {
			t.Errorf("cold handle after Close: %q, %v", got, err)
		}
		if _, err := p.Handle("C"); err != nil && !errors.Is(err, kvsecrets.ErrClosed) {
			t.Errorf("Handle after Close: %v", err)
		}
		n := 0
		for _, err := range h.Watch(t.Context()) {
			n++
			if !errors.Is(err, kvsecrets.ErrClosed) {
				t.Errorf("Watch after Close yielded %v", err)
			}
			if n > 2 {
				t.Errorf("Watch after Close keeps yielding")
				break
			}
		}
	})
}

// h.Secret's Tags are a copy.
func TestHandleSecretTagsCopy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		v.SetSecret("A", "a1", &kvtest.SecretOptions{Tags: map[string]string{"k": "v"}})
		h, _ := p.Handle("A")
		s, _ := h.Secret(t.Context())
		s.Tags["k"] = "mutated"
		s.Tags["new"] = "x"
		s2, _ := h.Secret(t.Context())
		g, _ := p.GetSecret(t.Context(), "A")
		if s2.Tags["k"] != "v" || len(s2.Tags) != 1 || g.Tags["k"] != "v" {
			t.Errorf("Tags not a copy: %v %v", s2.Tags, g.Tags)
		}
	})
}

// EnforceValidity: h.Get refuses an expired secret as Get does.
func TestHandleEnforceValidity(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{EnforceValidity: true})
		v.SetSecret("A", "a1", &kvtest.SecretOptions{Expires: time.Now().Add(time.Hour)})
		h, _ := p.Handle("A")
		if _, err := h.Get(t.Context()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Hour + time.Second)
		_, gerr := p.Get(t.Context(), "A")
		_, herr := h.Get(t.Context())
		if !errors.Is(herr, kvsecrets.ErrExpired) || !errors.Is(gerr, kvsecrets.ErrExpired) {
			t.Errorf("expired: Get %v, h.Get %v", gerr, herr)
		}
	})
}

// Stats.Hits are exact under concurrency, for Get and Handle.Get.
func TestHitsExactUnderConcurrency(t *testing.T) {
	v, p, _ := env(t, nil)
	set(t, v, "A", "a1")
	set(t, v, "B", "b1")
	h, _ := p.Handle("A")
	if _, err := h.Get(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Get(context.Background(), "B"); err != nil {
		t.Fatal(err)
	}
	before := p.Stats().Hits
	const G, N = 16, 20000
	var wg sync.WaitGroup
	for g := range G {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for i := range N {
				switch (g + i) % 3 {
				case 0:
					h.Get(ctx)
				case 1:
					p.Get(ctx, "B")
				default:
					h.Secret(ctx)
				}
			}
		}()
	}
	wg.Wait()
	if got := p.Stats().Hits - before; got != G*N {
		t.Errorf("Hits grew by %d, want %d", got, G*N)
	}
}
