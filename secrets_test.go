package kvsecrets

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

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
