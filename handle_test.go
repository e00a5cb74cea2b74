package kvsecrets

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// TestHandleBehavesAsGet walks one secret through a first read, cached
// reads, a failing vault (stale, then past MaxStale), a recovery and a
// revocation, and checks that a Handle answers exactly as Get at each step.
func TestHandleBehavesAsGet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("ApiKey", "key-1")
		p := v.newProvider(t, &Options{TTL: time.Minute, MaxStale: 10 * time.Minute, NegativeTTL: time.Minute})
		ctx := context.Background()
		h, err := p.Handle("apikey") // another spelling shares the entry
		if err != nil {
			t.Fatal(err)
		}
		if h.Name() != "apikey" || v.requests.Load() != 0 {
			t.Fatalf("Handle made a request or changed the name: %d, %q", v.requests.Load(), h.Name())
		}
		same := func(step string) {
			t.Helper()
			hv, herr := h.Get(ctx)
			gv, gerr := p.Get(ctx, "apikey")
			hs, hserr := h.Secret(ctx)
			gs, gserr := p.GetSecret(ctx, "apikey")
			if hv != gv || !errors.Is(herr, kindOf(gerr)) || (herr == nil) != (gerr == nil) ||
				hs.Version != gs.Version || hs.Value() != gs.Value() || (hserr == nil) != (gserr == nil) {
				t.Fatalf("%s: handle %q, %v / %v, %v; Get %q, %v / %v, %v", step, hv, herr, hs, hserr, gv, gerr, gs, gserr)
			}
			if herr != nil && herr.Error() != gerr.Error() {
				t.Fatalf("%s: errors differ: %v / %v", step, herr, gerr)
			}
		}

		// First reads through the handle, from many goroutines: one request.
		var wg sync.WaitGroup
		for range 50 {
			wg.Go(func() {
				if got, err := h.Get(ctx); got != "key-1" || err != nil {
					t.Errorf("first read: %q, %v", got, err)
				}
			})
		}
		wg.Wait()
		if n := v.requests.Load(); n != 1 {
			t.Fatalf("50 first reads through a handle made %d requests, want 1", n)
		}
		same("cached")

		v.setFail(func(string) (int, string) { return http.StatusServiceUnavailable, "ServiceUnavailable" })
		time.Sleep(5 * time.Minute)
		before := p.Stats().StaleServes
		same("stale")
		if p.Stats().StaleServes-before != 4 {
			t.Fatalf("stale serves through the handle are not counted as Get's")
		}
		time.Sleep(6 * time.Minute)
		same("past MaxStale")
		if _, err := h.Get(ctx); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("past MaxStale: %v, want ErrUnavailable", err)
		}

		v.setFail(nil)
		time.Sleep(3 * time.Minute) // the background retry brings it back
		same("recovered")
		mustHandle(t, h, "key-1")

		v.delete("ApiKey")
		if _, err := p.Refresh(ctx, "ApiKey"); !errors.Is(err, ErrNotFound) {
			t.Fatal(err)
		}
		same("revoked")
		if _, err := h.Get(ctx); !errors.Is(err, ErrNotFound) {
			t.Fatalf("after revocation: %v, want ErrNotFound", err)
		}

		p.Close()
		same("closed")
		if _, err := h.Secret(ctx); !errors.Is(err, ErrClosed) {
			t.Fatalf("after Close: %v", err)
		}
	})
}

// kindOf returns the sentinel of a *SecretError, or err.
func kindOf(err error) error {
	var se *SecretError
	if errors.As(err, &se) {
		return se.Kind
	}
	return err
}

func mustHandle(t *testing.T, h *Handle, want string) {
	t.Helper()
	got, err := h.Get(context.Background())
	if err != nil || got != want {
		t.Fatalf("Handle(%q).Get = %q, %v; want %q", h.Name(), got, err, want)
	}
}

func TestHandleRefusesInvalidNamesWithoutARequest(t *testing.T) {
	v := newFakeVault()
	p := v.newProvider(t, nil)
	for _, name := range []string{"", "a/b", knownValue, string(make([]byte, 128))} {
		if h, err := p.Handle(name); h != nil || !errors.Is(err, ErrInvalidName) {
			t.Errorf("Handle(%q) = %v, %v", name, h, err)
		}
	}
	if v.requests.Load() != 0 {
		t.Fatal("an invalid name reached the vault")
	}
}

// TestHandleOutlivesItsEntry evicts and idle-drops the entry under a handle:
// the handle reads the name again, as Get would, and serves what the vault
// holds now.
func TestHandleOutlivesItsEntry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("A", "a-1")
		v.set("B", "b")
		p := v.newProvider(t, &Options{MaxEntries: 1, TTL: time.Minute})
		h, _ := p.Handle("A")
		mustHandle(t, h, "a-1")
		mustGet(t, p, "B", "b") // evicts A
		if p.Stats().Evictions != 1 || !h.e.Load().dead() {
			t.Fatalf("A was not evicted: %+v", p.Stats())
		}
		v.set("A", "a-2")
		mustHandle(t, h, "a-2")
		mustHandle(t, h, "a-2")
		if n := v.count("A"); n != 2 {
			t.Fatalf("%d reads of A, want 2 (the first, and one after the eviction)", n)
		}

		// Idle: nobody reads A for IdleTimeout (2 TTLs); it is dropped.
		drops := p.Stats().IdleDrops
		time.Sleep(10 * time.Minute)
		if p.Stats().IdleDrops == drops || !h.e.Load().dead() {
			t.Fatalf("A was not dropped for idleness: %+v", p.Stats())
		}
		v.set("A", "a-3")
		mustHandle(t, h, "a-3")
	})
}

// TestHandleHitsAreExact: Stats.Hits counts every cached read through
// handles and Get, from many goroutines at once.
func TestHandleHitsAreExact(t *testing.T) {
	v := newFakeVault()
	v.set("K", "v")
	p := v.newProvider(t, nil)
	h, _ := p.Handle("K")
	mustHandle(t, h, "v") // the miss
	const goroutines, reads = 8, 5000
	var wg sync.WaitGroup
	for i := range goroutines {
		wg.Go(func() {
			for range reads {
				if i%2 == 0 {
					h.Get(context.Background())
				} else {
					p.Get(context.Background(), "K")
				}
			}
		})
	}
	wg.Wait()
	if got := p.Stats().Hits; got != goroutines*reads {
		t.Fatalf("Hits = %d, want %d", got, goroutines*reads)
	}
}
