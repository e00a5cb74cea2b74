package hostile_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

type rec struct {
	val string
	ver string
	err error
}

type recorder struct {
	mu  sync.Mutex
	got []rec
}

func (r *recorder) add(s kvsecrets.Secret, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.got = append(r.got, rec{err: err})
	} else {
		r.got = append(r.got, rec{val: s.Value(), ver: s.Version})
	}
}
func (r *recorder) all() []rec { r.mu.Lock(); defer r.mu.Unlock(); return append([]rec(nil), r.got...) }
func (r *recorder) last() rec {
	g := r.all()
	if len(g) == 0 {
		return rec{}
	}
	return g[len(g)-1]
}

func watchInto(ctx context.Context, seq func(func(kvsecrets.Secret, error) bool), r *recorder, done chan struct{}) {
	go func() {
		defer close(done)
		for s, err := range seq {
			r.add(s, err)
		}
	}()
}

// 1,000 watchers through a storm of 200 rotations: no goroutine per watcher, every
// watcher ends with the latest version, no version repeated, memory bounded.
func TestWatchThousandWatchersRotationStorm(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		set(t, v, "A", "v0")
		if _, err := p.Get(t.Context(), "A"); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		g0 := runtime.NumGoroutine()
		ctx, cancel := context.WithCancel(t.Context())
		const W = 1000
		recs := make([]*recorder, W)
		dones := make([]chan struct{}, W)
		for i := range W {
			recs[i] = &recorder{}
			dones[i] = make(chan struct{})
			watchInto(ctx, p.Watch(ctx, "A"), recs[i], dones[i])
		}
		synctest.Wait()
		if extra := runtime.NumGoroutine() - g0 - W; extra > 5 {
			t.Errorf("%d watchers: %d goroutines beyond the watchers' own", W, extra)
		}
		var ms0, ms1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms0)
		var last string
		for i := range 200 {
			last = fmt.Sprint("v", i+1)
			if _, err := p.Rotate(t.Context(), "A", last, nil); err != nil {
				t.Fatal(err)
			}
			if i%7 == 0 {
				synctest.Wait()
			}
		}
		synctest.Wait()
		runtime.GC()
		runtime.ReadMemStats(&ms1)
		if extra := runtime.NumGoroutine() - g0 - W; extra > 5 {
			t.Errorf("after the storm: %d goroutines beyond the watchers' own", extra)
		}
		if grow := int64(ms1.HeapAlloc) - int64(ms0.HeapAlloc); grow > 8<<20 {
			t.Errorf("heap grew by %d bytes over the storm", grow)
		}
		for i, r := range recs {
			g := r.all()
			if len(g) == 0 || g[len(g)-1].val != last {
				t.Fatalf("watcher %d ended at %+v, want %s (got %d yields)", i, r.last(), last, len(g))
			}
			seen := map[string]bool{}
			for _, x := range g {
				if x.err != nil {
					t.Fatalf("watcher %d got error %v", i, x.err)
				}
				if seen[x.ver] {
					t.Fatalf("watcher %d got version %s twice", i, x.ver)
				}
				seen[x.ver] = true
			}
		}
		cancel()
		for _, d := range dones {
			<-d
		}
	})
}

// A slow receiver skips to the latest and never misses it.
func TestWatchSlowReceiverGetsLatest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		set(t, v, "A", "v0")
		block := make(chan struct{})
		r := &recorder{}
		done := make(chan struct{})
		ctx, cancel := context.WithCancel(t.Context())
		go func() {
			defer close(done)
			first := true
			for s, err := range p.Watch(ctx, "A") {
				r.add(s, err)
				if first {
					first = false
					<-block // slow body
				}
			}
		}()
		synctest.Wait()
		for i := range 5 {
			if _, err := p.Rotate(t.Context(), "A", fmt.Sprint("v", i+1), nil); err != nil {
				t.Fatal(err)
			}
		}
		close(block)
		synctest.Wait()
		g := r.all()
		if len(g) != 2 || g[0].val != "v0" || g[1].val != "v5" {
			t.Errorf("slow receiver got %+v; want v0 then v5", g)
		}
		// one more rotation after it caught up
		p.Rotate(t.Context(), "A", "v6", nil)
		synctest.Wait()
		if r.last().val != "v6" {
			t.Errorf("after catching up, last = %+v", r.last())
		}
		cancel()
		<-done
	})
}

// The watch sees rotations from a background refresh, Refresh, Event Grid, Notify, Rotate.
func TestWatchSeesEveryKindOfNewVersion(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{TTL: time.Hour})
		defer v.Close()
		set(t, v, "A", "v0")
		p.Get(t.Context(), "A")
		r := &recorder{}
		done := make(chan struct{})
		ctx, cancel := context.WithCancel(t.Context())
		watchInto(ctx, p.Watch(ctx, "A"), r, done)
		synctest.Wait()
		step := func(name, want string) {
			t.Helper()
			synctest.Wait()
			if r.last().val != want {
				t.Errorf("after %s: watch last = %+v, want %s", name, r.last(), want)
			}
		}
		set(t, v, "A", "bg")
		time.Sleep(time.Hour)
		step("background refresh", "bg")
		set(t, v, "A", "refresh")
		p.Refresh(t.Context(), "A")
		step("Refresh", "refresh")
		ver := set(t, v, "A", "notify")
		if ok, err := p.Notify(kvsecrets.Notice{Name: "A", Version: ver}); !ok || err != nil {
			t.Errorf("Notify = %v %v", ok, err)
		}
		time.Sleep(2 * time.Second)
		step("Notify", "notify")
		wh := p.EventGridHandler(&kvsecrets.EventGridOptions{SharedSecret: "k"})
		sub, err := v.SubscribeHandler("/events?key=k", wh, nil)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		set(t, v, "A", "event")
		sub.Wait(t.Context())
		time.Sleep(2 * time.Second)
		step("Event Grid", "event")
		sub.Close()
		p.Rotate(t.Context(), "A", "rotate", nil)
		step("Rotate", "rotate")
		cancel()
		<-done
		vals := []string{}
		for _, x := range r.all() {
			vals = append(vals, x.val)
		}
		if fmt.Sprint(vals) != "[v0 bg refresh notify event rotate]" {
			t.Errorf("watch yields %v", vals)
		}
	})
}

// ctx cancelled while the body runs / while waiting; Close while waiting; break early.
func TestWatchEndings(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		set(t, v, "A", "v0")
		// break early
		for range p.Watch(t.Context(), "A") {
			break
		}
		// ctx cancelled in the body: no further yield
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		n := 0
		for range p.Watch(ctx, "A") {
			n++
			cancel()
			p.Rotate(t.Context(), "A", "v1", nil)
		}
		if n != 1 {
			t.Errorf("ctx cancelled in body: %d yields", n)
		}
		// ctx cancelled while waiting
		ctx2, cancel2 := context.WithCancel(t.Context())
		done := make(chan struct{})
		watchInto(ctx2, p.Watch(ctx2, "A"), &recorder{}, done)
		synctest.Wait()
		cancel2()
		synctest.Wait()
		select {
		case <-done:
		default:
			t.Errorf("watch did not end after ctx cancel")
		}
		// Close while waiting
		done3 := make(chan struct{})
		r3 := &recorder{}
		watchInto(t.Context(), p.Watch(t.Context(), "A"), r3, done3)
		synctest.Wait()
		p.Close()
		synctest.Wait()
		select {
		case <-done3:
		default:
			t.Fatalf("watch did not end after Close")
		}
	})
}

// A name that never exists, then is created; revoked then restored.
func TestWatchMissingThenCreatedAndRevokedThenRestored(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, nil)
		r := &recorder{}
		done := make(chan struct{})
		ctx, cancel := context.WithCancel(t.Context())
		watchInto(ctx, p.Watch(ctx, "Ghost"), r, done)
		synctest.Wait()
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		g := r.all()
		if len(g) != 1 || !errors.Is(g[0].err, kvsecrets.ErrNotFound) {
			t.Fatalf("watching a missing name for 10 minutes yields %d: %+v", len(g), g)
		}
		reqs := v.SecretRequests("Ghost")
		if reqs > 10*60/30+2 {
			t.Errorf("watching a missing name: %d requests in 10m (NegativeTTL 30s)", reqs)
		}
		set(t, v, "Ghost", "boo")
		time.Sleep(31 * time.Second)
		synctest.Wait()
		if r.last().val != "boo" {
			t.Fatalf("created: watch last %+v", r.last())
		}
		v.SetEnabled("Ghost", "", false)
		p.Refresh(t.Context(), "Ghost")
		synctest.Wait()
		if !errors.Is(r.last().err, kvsecrets.ErrDisabled) {
			t.Errorf("disabled: watch last %+v", r.last())
		}
		v.SetEnabled("Ghost", "", true)
		time.Sleep(31 * time.Second)
		synctest.Wait()
		if r.last().val != "boo" {
			t.Errorf("re-enabled: watch last %+v", r.last())
		}
		cancel()
		<-done
		t.Logf("yields: %+v", r.all())
	})
}

// Outage past MaxStale: one error yielded, then the value again on recovery.
func TestWatchOutagePastMaxStale(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{TTL: time.Hour, MaxStale: 2 * time.Hour})
		set(t, v, "A", "v0")
		r := &recorder{}
		done := make(chan struct{})
		ctx, cancel := context.WithCancel(t.Context())
		watchInto(ctx, p.Watch(ctx, "A"), r, done)
		synctest.Wait()
		v.FailFor(5*time.Hour, kvtest.ServiceUnavailable)
		time.Sleep(90 * time.Minute)
		synctest.Wait()
		if g := r.all(); len(g) != 1 {
			t.Errorf("within MaxStale: %+v", g)
		}
		time.Sleep(time.Hour)
		synctest.Wait()
		if !errors.Is(r.last().err, kvsecrets.ErrUnavailable) {
			t.Errorf("past MaxStale: last %+v", r.last())
		}
		time.Sleep(4 * time.Hour)
		synctest.Wait()
		if r.last().val != "v0" {
			t.Errorf("after recovery: %+v", r.all())
		}
		if n := len(r.all()); n != 3 {
			t.Errorf("want v0, err, v0: %+v", r.all())
		}
		cancel()
		<-done
	})
}

// Handle.Watch agrees with Provider.Watch, including after the entry is evicted.
func TestHandleWatchAfterEviction(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p, _ := env(t, &kvsecrets.Options{MaxEntries: 2})
		set(t, v, "A", "v0")
		for i := range 5 {
			set(t, v, fmt.Sprint("X", i), "x")
		}
		h, _ := p.Handle("A")
		r := &recorder{}
		done := make(chan struct{})
		ctx, cancel := context.WithCancel(t.Context())
		watchInto(ctx, h.Watch(ctx), r, done)
		synctest.Wait()
		for i := range 5 {
			time.Sleep(2 * time.Second)
			p.Get(t.Context(), fmt.Sprint("X", i))
		}
		synctest.Wait()
		t.Logf("evictions %d, status %+v", p.Stats().Evictions, p.Status("A"))
		p.Rotate(t.Context(), "A", "v1", nil)
		synctest.Wait()
		if r.last().val != "v1" {
			t.Errorf("watched handle, after evictions and Rotate: %+v", r.all())
		}
		cancel()
		<-done
	})
}
