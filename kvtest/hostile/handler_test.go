package hostile_test

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kvsecrets/kvsecrets/kvtest"
)

// The subscriber's handler calls back into the vault.
func TestHostileHandlerReentersVault(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := mustInProcess(t, nil)
		defer v.Close()
		var sub *kvtest.Subscription
		var mu sync.Mutex
		var inner []*kvtest.Subscription
		h := &hook{}
		h.onNotify = func(r *http.Request, body []byte) {
			es := events(t, body)
			if es[0].Subject == "A" {
				v.SetSecret("B", "b", nil) // publish from within a delivery
				s2, err := v.SubscribeHandler("/inner", &hook{}, nil)
				if err != nil {
					t.Errorf("Subscribe from handler: %v", err)
				} else {
					mu.Lock()
					inner = append(inner, s2)
					mu.Unlock()
				}
				_ = sub.Stats()
				_ = sub.Deliveries()
				// read the vault over its own transport
				if _, err := client(t, v).GetSecret(r.Context(), "A", "", nil); err != nil {
					t.Errorf("GetSecret from handler: %v", err)
				}
			}
		}
		var err error
		sub, err = v.SubscribeHandler("/e", h, &kvtest.SubscriptionOptions{OnDelivery: func(d kvtest.Delivery) {
			_ = sub.Stats()
			if d.Secret == "B" {
				v.SetSecret("C", "c", nil)
			}
		}})
		if err != nil {
			t.Fatal(err)
		}
		v.SetSecret("A", "a", nil)
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		if err := sub.Wait(ctx); err != nil {
			t.Fatalf("Wait: %v (deadlock?) deliveries %v", err, delTypes(sub.Deliveries()))
		}
		got := delTypes(sub.Deliveries())
		if len(got) != 3 {
			t.Errorf("deliveries %v, want A, B, C", got)
		}
		for _, s := range inner {
			s.Close()
		}
	})
}

// A handler that waits for its request's context: the attempt ends at
// DeliveryTimeout and is retried.
func TestHostileHandlerHangsOnContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := mustInProcess(t, nil)
		defer v.Close()
		var n atomic.Int32
		sub, err := v.SubscribeHandler("/e", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("aeg-event-type") == "SubscriptionValidation" {
				(&hook{}).ServeHTTP(w, r)
				return
			}
			if n.Add(1) == 1 {
				<-r.Context().Done()
				return
			}
		}), nil)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		v.SetSecret("A", "a", nil)
		sub.Wait(context.Background())
		ds := sub.Deliveries()
		if len(ds) != 2 || ds[0].Err == nil || ds[0].Status != 0 || ds[1].Outcome != kvtest.Delivered {
			t.Fatalf("deliveries %+v", ds)
		}
		if g := ds[1].At.Sub(start); g != kvtest.DeliveryTimeout+kvtest.RetryDelay(1) && g != kvtest.RetryDelay(1) {
			t.Errorf("second attempt at %v", g)
		}
		t.Logf("first attempt err %v; second at %v", ds[0].Err, ds[1].At.Sub(start))
	})
}

// A handler that ignores its context and never returns: Event Grid gives
// up after DeliveryTimeout and goes on; the Subscription must not stall.
func TestHostileHandlerIgnoresContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := mustInProcess(t, nil)
		release := make(chan struct{})
		var n atomic.Int32 // the abandoned call and the retries run on different goroutines
		sub, err := v.SubscribeHandler("/e", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("aeg-event-type") == "SubscriptionValidation" {
				(&hook{}).ServeHTTP(w, r)
				return
			}
			if n.Add(1) == 1 {
				<-release
			}
		}), nil)
		if err != nil {
			t.Fatal(err)
		}
		v.SetSecret("A", "a", nil)
		time.Sleep(time.Hour)
		synctest.Wait()
		ds := sub.Deliveries()
		close(release)
		sub.Wait(context.Background())
		v.Close()
		if len(ds) == 0 || ds[0].Err == nil {
			t.Errorf("after an hour, a handler stuck since the first attempt: deliveries %+v (the attempt was never timed out at %v)", ds, kvtest.DeliveryTimeout)
		}
	})
}

// A large response body in process must not be buffered whole.
func TestHostileHandlerHugeBody(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := mustInProcess(t, nil)
		defer v.Close()
		chunk := make([]byte, 1<<20)
		sub, err := v.SubscribeHandler("/e", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("aeg-event-type") == "SubscriptionValidation" {
				(&hook{}).ServeHTTP(w, r)
				return
			}
			w.WriteHeader(200)
			for i := 0; i < 256; i++ {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}), nil)
		if err != nil {
			t.Fatal(err)
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		v.SetSecret("A", "a", nil)
		sub.Wait(context.Background())
		runtime.ReadMemStats(&after)
		if d := after.TotalAlloc - before.TotalAlloc; d > 64<<20 {
			t.Errorf("a 256 MiB answer allocated %d MiB in the deliverer", d>>20)
		}
		if ds := sub.Deliveries(); len(ds) != 1 || ds[0].Outcome != kvtest.Delivered {
			t.Errorf("deliveries %+v", ds)
		}
	})
}

// A panicking handler, run in a child process so that a crash is seen as a failure.
func TestHostileHandlerPanics(t *testing.T) {
	if os.Getenv("H14_PANIC_CHILD") == "1" {
		synctest.Test(t, func(t *testing.T) {
			v := mustInProcess(t, nil)
			defer v.Close()
			n := 0
			sub, err := v.SubscribeHandler("/e", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("aeg-event-type") == "SubscriptionValidation" {
					(&hook{}).ServeHTTP(w, r)
					return
				}
				n++
				switch n {
				case 1:
					panic("subscriber bug")
				case 2:
					panic(http.ErrAbortHandler)
				}
			}), nil)
			if err != nil {
				t.Fatal(err)
			}
			v.SetSecret("A", "a", nil)
			sub.Wait(context.Background())
			ds := sub.Deliveries()
			if len(ds) != 3 || ds[0].Outcome != kvtest.Retrying || ds[1].Outcome != kvtest.Retrying || ds[2].Outcome != kvtest.Delivered {
				t.Errorf("deliveries %v", delTypes(ds))
			}
		})
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHostileHandlerPanics$", "-test.v")
	cmd.Env = append(os.Environ(), "H14_PANIC_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		s := string(out)
		if i := strings.Index(s, "panic"); i >= 0 {
			s = s[i:min(len(s), i+600)]
		}
		t.Errorf("a panicking subscriber handler crashed or failed the test process: %v\n%s", err, s)
	}
}

// Close from many goroutines, Subscribe/SetSecret racing with Close.
func TestHostileConcurrentSubscribeCloseSetSecret(t *testing.T) {
	v := kvtest.NewTestServer(t, nil)
	var wg sync.WaitGroup
	subs := make(chan *kvtest.Subscription, 1000)
	for i := 0; i < 8; i++ {
		wg.Add(3)
		go func() {
			defer wg.Done()
			for j := 0; j < 20; j++ {
				s, err := v.SubscribeHandler("/e", &hook{status: func(n int) int { return []int{200, 503}[n%2] }}, &kvtest.SubscriptionOptions{Duplicates: 0.5})
				if err == nil {
					subs <- s
				}
			}
		}()
		go func() {
			defer wg.Done()
			for j := 0; j < 50; j++ {
				v.SetSecret("A", "x", &kvtest.SecretOptions{Expires: time.Now().Add(time.Duration(j) * time.Millisecond)})
			}
		}()
		go func() {
			defer wg.Done()
			for j := 0; j < 10; j++ {
				select {
				case s := <-subs:
					go s.Close()
					s.Close()
					_ = s.Stats()
				default:
				}
			}
		}()
	}
	wg.Wait()
	done := make(chan struct{})
	go func() {
		defer close(done)
		var cwg sync.WaitGroup
		for i := 0; i < 3; i++ {
			cwg.Add(1)
			go func() { defer cwg.Done(); v.Close() }()
		}
		cwg.Wait()
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Server.Close did not return")
	}
	if _, err := v.SubscribeHandler("/e", &hook{}, nil); err == nil {
		t.Errorf("Subscribe after Close succeeded")
	}
	v.SetSecret("A", "after close", nil)
	close(subs)
	for s := range subs {
		s.Close()
		s.Wait(context.Background())
	}
}
