package kvsecrets

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"testing/synctest"
	"time"
)

// watched runs Watch on its own goroutine and hands each answer over
// unbuffered, so that the test decides when the loop body returns.
type watched struct {
	got  chan watchAnswer
	done chan struct{}
}

type watchAnswer struct {
	value, version string
	err            error
}

func startWatch(ctx context.Context, p *Provider, name string) *watched {
	w := &watched{got: make(chan watchAnswer), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for s, err := range p.Watch(ctx, name) {
			w.got <- watchAnswer{s.Value(), s.Version, err}
		}
	}()
	return w
}

// next returns the next answer, failing if none is ready once every
// goroutine of the bubble is blocked.
func (w *watched) next(t *testing.T) watchAnswer {
	t.Helper()
	synctest.Wait()
	select {
	case a := <-w.got:
		return a
	default:
		t.Fatal("Watch yielded nothing")
		return watchAnswer{}
	}
}

func (w *watched) none(t *testing.T) {
	t.Helper()
	synctest.Wait()
	select {
	case a := <-w.got:
		t.Fatalf("Watch yielded %+v; want nothing", a)
	default:
	}
}

func TestWatchYieldsEachNewVersionAsServed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("ApiKey", "key-1")
		p := v.newProvider(t, &Options{TTL: time.Hour, DisableJitter: true})
		ctx := context.Background()
		w := startWatch(ctx, p, "ApiKey")
		if a := w.next(t); a.value != "key-1" || a.err != nil {
			t.Fatalf("first answer: %+v", a)
		}
		w.none(t)
		if n := v.count("ApiKey"); n != 1 {
			t.Fatalf("%d reads; the watch read more than Get would", n)
		}

		// A background refresh that finds a new version.
		v.set("ApiKey", "key-2")
		time.Sleep(46 * time.Minute)
		if a := w.next(t); a.value != "key-2" {
			t.Fatalf("after a refresh: %+v", a)
		}
		// A refresh that finds the same version yields nothing.
		time.Sleep(46 * time.Minute)
		w.none(t)
		// Refresh, Rotate, Notify.
		v.set("ApiKey", "key-3")
		if _, err := p.Refresh(ctx, "ApiKey"); err != nil {
			t.Fatal(err)
		}
		if a := w.next(t); a.value != "key-3" {
			t.Fatalf("after Refresh: %+v", a)
		}
		if _, err := p.Rotate(ctx, "ApiKey", "key-4", nil); err != nil {
			t.Fatal(err)
		}
		if a := w.next(t); a.value != "key-4" {
			t.Fatalf("after Rotate: %+v", a)
		}
		ver := v.set("ApiKey", "key-5")
		if ok, err := p.Notify(Notice{Name: "ApiKey", Version: ver}); !ok || err != nil {
			t.Fatal(ok, err)
		}
		if a := w.next(t); a.value != "key-5" || a.version != ver {
			t.Fatalf("after Notify: %+v", a)
		}
		p.Close()
		synctest.Wait()
		select {
		case <-w.done:
		default:
			t.Fatal("Watch did not end with Close")
		}
	})
}

// TestWatchSlowReceiverGetsTheLatest: versions that come and go while the
// loop body runs are skipped; the next answer is the latest.
func TestWatchSlowReceiverGetsTheLatest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("ApiKey", "key-1")
		p := v.newProvider(t, nil)
		ctx, cancel := context.WithCancel(context.Background())
		w := startWatch(ctx, p, "ApiKey")
		synctest.Wait() // the body is now blocked handing over key-1
		for i := 2; i <= 5; i++ {
			v.set("ApiKey", "key-"+string(rune('0'+i)))
			if _, err := p.Refresh(ctx, "ApiKey"); err != nil {
				t.Fatal(err)
			}
		}
		if a := w.next(t); a.value != "key-1" {
			t.Fatalf("%+v", a)
		}
		if a := w.next(t); a.value != "key-5" {
			t.Fatalf("after four rotations during a slow body: %+v, want key-5", a)
		}
		w.none(t)
		cancel()
		synctest.Wait()
		select {
		case <-w.done:
		default:
			t.Fatal("Watch did not end with its context")
		}
	})
}

// TestWatchThroughOutageAndRevocation: a stale value yields nothing; past
// MaxStale, a revocation, and the value's return each yield once.
func TestWatchThroughOutageAndRevocation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("ApiKey", "key-1")
		p := v.newProvider(t, &Options{TTL: time.Minute, MaxStale: 10 * time.Minute, NegativeTTL: time.Minute})
		ctx := t.Context()
		w := startWatch(ctx, p, "ApiKey")
		w.next(t)
		v.setFail(func(string) (int, string) { return http.StatusServiceUnavailable, "ServiceUnavailable" })
		time.Sleep(5 * time.Minute)
		w.none(t) // stale, still served
		time.Sleep(6 * time.Minute)
		if a := w.next(t); !errors.Is(a.err, ErrUnavailable) {
			t.Fatalf("past MaxStale: %+v", a)
		}
		w.none(t) // retries that fail again are no news
		time.Sleep(10 * time.Minute)
		w.none(t)
		v.setFail(nil)
		time.Sleep(3 * time.Minute)
		if a := w.next(t); a.value != "key-1" || a.err != nil {
			t.Fatalf("after the outage: %+v", a)
		}
		v.delete("ApiKey")
		p.Refresh(ctx, "ApiKey")
		if a := w.next(t); !errors.Is(a.err, ErrNotFound) {
			t.Fatalf("after deletion: %+v", a)
		}
		w.none(t)
		reads := v.count("ApiKey")
		time.Sleep(time.Hour)
		if n := v.count("ApiKey") - reads; n > 61 {
			// As Get: asked again once NegativeTTL (1 min) has passed.
			t.Fatalf("a watch of a deleted secret made %d reads in an hour, want at most one a minute", n)
		}
		v.set("ApiKey", "key-2")
		time.Sleep(2 * time.Minute)
		if a := w.next(t); a.value != "key-2" {
			t.Fatalf("after the secret came back: %+v", a)
		}
	})
}

// TestWatchKeepsTheSecretRefreshed: a watched secret nobody Gets is not
// dropped for idleness, and a watch outlives an eviction of its entry.
func TestWatchKeepsTheSecretRefreshed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("ApiKey", "key-1")
		v.set("Other", "o")
		p := v.newProvider(t, &Options{TTL: time.Minute, MaxEntries: 1})
		w := startWatch(t.Context(), p, "ApiKey")
		w.next(t)
		time.Sleep(time.Hour)
		if d := p.Stats().IdleDrops; d != 0 {
			t.Fatalf("a watched secret was dropped for idleness (%d)", d)
		}
		v.set("ApiKey", "key-2")
		time.Sleep(time.Minute)
		if a := w.next(t); a.value != "key-2" {
			t.Fatalf("%+v", a)
		}
		mustGet(t, p, "Other", "o") // evicts ApiKey
		synctest.Wait()             // the watch reads ApiKey again, evicting Other
		if p.Stats().Evictions != 2 {
			t.Fatalf("%+v", p.Stats())
		}
		w.none(t) // read again: the same version
		v.set("ApiKey", "key-3")
		time.Sleep(time.Minute)
		if a := w.next(t); a.value != "key-3" {
			t.Fatalf("after an eviction: %+v", a)
		}
	})
}

func TestWatchInvalidNameAndBreak(t *testing.T) {
	v := newFakeVault()
	v.set("K", "v")
	p := v.newProvider(t, nil)
	n := 0
	for _, err := range p.Watch(context.Background(), "not/valid") {
		n++
		if !errors.Is(err, ErrInvalidName) {
			t.Fatal(err)
		}
	}
	if n != 1 {
		t.Fatalf("%d answers for an invalid name", n)
	}
	for s := range p.Watch(context.Background(), "K") {
		if s.Value() != "v" {
			t.Fatal(s)
		}
		break // ends the watch: nothing stays registered
	}
	e := p.idx.load("k")
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.watchedLocked() {
		t.Fatal("a watch that ended left its waker registered")
	}
}
