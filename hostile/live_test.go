package hostile_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kvsecrets/kvsecrets"
)

type DBConf struct {
	Host string
	Port int
}
type LiveCfg struct {
	A  string `keyvault:"A"`
	B  string `keyvault:"B"`
	DB DBConf `keyvault:"Db,json"`
}

func liveEnv(t *testing.T, o *kvsecrets.Options) (*kvsecretsVault, *kvsecrets.Provider) {
	v, p, _ := env(t, o)
	set(t, v, "A", "a0")
	set(t, v, "B", "b0")
	set(t, v, "Db", `{"Host":"h0","Port":1}`)
	return &kvsecretsVault{v}, p
}

// A bad JSON rotation keeps the previous snapshot and reports; a good one after it recovers.
func TestLiveBadThenGoodJSON(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		vv, p := liveEnv(t, nil)
		v := vv.Server
		var mu sync.Mutex
		var changes [][2]LiveCfg
		var errs []error
		live, err := kvsecrets.LoadLive(t.Context(), p, &kvsecrets.LiveOptions[LiveCfg]{
			OnChange: func(o, n *LiveCfg) { mu.Lock(); changes = append(changes, [2]LiveCfg{*o, *n}); mu.Unlock() },
			OnError:  func(err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() },
		})
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		first := live.Current()
		set(t, v, "Db", `{"Host":"h1","Port":"not a number"}`)
		p.Refresh(t.Context(), "Db")
		synctest.Wait()
		if live.Current() != first || live.Err() == nil || len(errs) != 1 || len(changes) != 0 {
			t.Errorf("bad JSON: current changed=%v err=%v errs=%d changes=%d", live.Current() != first, live.Err(), len(errs), len(changes))
		}
		// another secret rotates while Db is still bad: rebuild must still fail (Db bad) and keep snapshot
		p.Rotate(t.Context(), "A", "a1", nil)
		synctest.Wait()
		if live.Current().A == "a1" && live.Current().DB.Host == "h1" {
			t.Errorf("mixed snapshot with the bad JSON")
		}
		t.Logf("after A rotates while Db is bad: current %+v, err %v", *live.Current(), live.Err())
		set(t, v, "Db", `{"Host":"h2","Port":2}`)
		p.Refresh(t.Context(), "Db")
		synctest.Wait()
		c := live.Current()
		if live.Err() != nil || c.DB.Host != "h2" || c.A != "a1" || c.B != "b0" {
			t.Errorf("good JSON after bad: current %+v err %v", *c, live.Err())
		}
		mu.Lock()
		defer mu.Unlock()
		if len(changes) == 0 || changes[len(changes)-1][1].DB.Host != "h2" {
			t.Errorf("OnChange calls: %+v", changes)
		}
		for _, ch := range changes {
			if ch[0] == ch[1] {
				t.Errorf("OnChange with identical old and new: %+v", ch)
			}
		}
		if first.DB.Host != "h0" || first.A != "a0" {
			t.Errorf("old snapshot was modified: %+v", *first)
		}
	})
}

// Secrets rotate while a rebuild (OnChange) is running: the Live ends on the latest of all.
func TestLiveRotationDuringRebuild(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		vv, p := liveEnv(t, nil)
		_ = vv
		block := make(chan struct{})
		var calls atomic.Int32
		live, err := kvsecrets.LoadLive(t.Context(), p, &kvsecrets.LiveOptions[LiveCfg]{
			OnChange: func(o, n *LiveCfg) {
				if calls.Add(1) == 1 {
					<-block
				}
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		p.Rotate(t.Context(), "A", "a1", nil)
		synctest.Wait() // the rebuild is in OnChange, blocked
		for i := range 10 {
			p.Rotate(t.Context(), "A", fmt.Sprint("a", i+2), nil)
			p.Rotate(t.Context(), "B", fmt.Sprint("b", i+1), nil)
		}
		close(block)
		synctest.Wait()
		c := live.Current()
		if c.A != "a11" || c.B != "b10" {
			t.Errorf("after rotations during a rebuild: %+v", *c)
		}
	})
}

// OnChange panics: recovered, later rotations still rebuild.
func TestLiveOnChangePanics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, p := liveEnv(t, nil)
		live, err := kvsecrets.LoadLive(t.Context(), p, &kvsecrets.LiveOptions[LiveCfg]{
			OnChange: func(o, n *LiveCfg) { panic("boom " + n.A) },
			OnError:  func(err error) { panic("boom2") },
		})
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		for i := range 3 {
			p.Rotate(t.Context(), "A", fmt.Sprint("a", i+1), nil)
			synctest.Wait()
		}
		if live.Current().A != "a3" {
			t.Errorf("after panicking OnChange: %+v", *live.Current())
		}
		if g, err := p.Get(t.Context(), "A"); g != "a3" {
			t.Errorf("provider after panics: %q %v", g, err)
		}
	})
}

// Close from OnChange: no deadlock, no further calls, goroutine ends.
func TestLiveCloseFromOnChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, p := liveEnv(t, nil)
		var live *kvsecrets.Live[LiveCfg]
		var calls atomic.Int32
		ready := make(chan struct{})
		var err error
		live, err = kvsecrets.LoadLive(t.Context(), p, &kvsecrets.LiveOptions[LiveCfg]{
			OnChange: func(o, n *LiveCfg) {
				<-ready
				calls.Add(1)
				if err := live.Close(); err != nil {
					t.Errorf("Close from OnChange: %v", err)
				}
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		close(ready)
		p.Rotate(t.Context(), "A", "a1", nil)
		synctest.Wait()
		p.Rotate(t.Context(), "A", "a2", nil)
		synctest.Wait()
		if calls.Load() != 1 {
			t.Errorf("OnChange calls after Close from OnChange: %d", calls.Load())
		}
		if live.Current().A != "a1" {
			t.Errorf("current after Close: %+v", *live.Current())
		}
		live.Close()
		live.Close()
	})
}

// Provider.Close ends the Live; Live keeps its secrets from idle drops; LoadLive ctx bounds first load only.
func TestLiveLifecycle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		vv, p := liveEnv(t, &kvsecrets.Options{TTL: time.Hour})
		ctx, cancel := context.WithCancel(t.Context())
		live, err := kvsecrets.LoadLive[LiveCfg](ctx, p, nil)
		if err != nil {
			t.Fatal(err)
		}
		cancel()
		time.Sleep(10 * time.Hour)
		synctest.Wait()
		if p.Stats().IdleDrops != 0 {
			t.Errorf("secrets of a Live dropped for idleness: %+v", p.Stats())
		}
		set(t, vv.Server, "A", "a-bg")
		time.Sleep(time.Hour)
		synctest.Wait()
		if live.Current().A != "a-bg" {
			t.Errorf("Live after its LoadLive ctx ended did not follow a background refresh: %+v", *live.Current())
		}
		p.Close()
		synctest.Wait()
		if live.Current().A != "a-bg" {
			t.Errorf("Current after Provider.Close: %+v", *live.Current())
		}
		if err := live.Close(); err != nil {
			t.Errorf("Live.Close after Provider.Close: %v", err)
		}
	})
}

// A revoked secret changes nothing in the snapshot; Err stays nil? (doc: "changes nothing").
func TestLiveRevokedSecretKeepsSnapshot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		vv, p := liveEnv(t, nil)
		live, err := kvsecrets.LoadLive[LiveCfg](t.Context(), p, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		vv.SetEnabled("A", "", false)
		p.Refresh(t.Context(), "A")
		synctest.Wait()
		if live.Current().A != "a0" {
			t.Errorf("revoked: %+v", *live.Current())
		}
		vv.SetEnabled("A", "", true)
		time.Sleep(31 * time.Second)
		p.Rotate(t.Context(), "B", "b1", nil)
		synctest.Wait()
		if c := live.Current(); c.B != "b1" || c.A != "a0" {
			t.Errorf("rebuild after restore: %+v err %v", *c, live.Err())
		}
		if live.Err() != nil {
			t.Errorf("Err after restore: %v", live.Err())
		}
	})
}

// Rebuild with a secret revoked at the time of rebuild: another secret rotates while A is
// disabled. The rebuild must not fail forever nor serve an empty A.
func TestLiveRebuildWhileOneRevoked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		vv, p := liveEnv(t, nil)
		live, err := kvsecrets.LoadLive[LiveCfg](t.Context(), p, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		vv.SetEnabled("A", "", false)
		p.Refresh(t.Context(), "A")
		p.Rotate(t.Context(), "B", "b1", nil)
		synctest.Wait()
		c := live.Current()
		t.Logf("B rotated while A revoked: current %+v, err %v", *c, live.Err())
		if c.A == "" {
			t.Errorf("snapshot lost A: %+v", *c)
		}
		if errors.Is(live.Err(), kvsecrets.ErrDisabled) {
			t.Logf("note: rebuild fails while A revoked (B's rotation not applied)")
		}
	})
}
