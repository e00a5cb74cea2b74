package kvsecrets

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// TestCloseFromOnRotateReturns calls Close from OnRotate on every path that
// sees a rotation: Refresh, the background refresh, and Rotate. Close
// returns, the path that made the callback returns, the Provider is
// closed, and no goroutine outlives the bubble (synctest reports a
// deadlock or a leftover goroutine otherwise).
func TestCloseFromOnRotateReturns(t *testing.T) {
	paths := map[string]func(p *Provider, v *fakeVault) error{
		"Refresh": func(p *Provider, v *fakeVault) error {
			v.set("K", "two")
			_, err := p.Refresh(context.Background(), "K")
			return err
		},
		"background refresh": func(p *Provider, v *fakeVault) error {
			v.set("K", "two")
			time.Sleep(2 * time.Hour) // past the TTL
			synctest.Wait()
			return nil
		},
		"Rotate": func(p *Provider, v *fakeVault) error {
			_, err := p.Rotate(context.Background(), "K", "two-written-by-rotate", nil)
			return err
		},
	}
	for name, path := range paths {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				v := newFakeVault()
				v.set("K", "one")
				var p *Provider
				var mu sync.Mutex
				closed := 0
				p = v.newProvider(t, &Options{OnRotate: func(RotationEvent) {
					p.Close()
					mu.Lock()
					closed++
					mu.Unlock()
				}})
				mustGet(t, p, "K", "one")
				if err := path(p, v); err != nil && !errors.Is(err, ErrClosed) {
					t.Fatalf("%s: %v", name, err)
				}
				synctest.Wait()
				mu.Lock()
				n := closed
				mu.Unlock()
				if n != 1 {
					t.Fatalf("OnRotate returned from Close %d times, want 1", n)
				}
				if _, err := p.Get(context.Background(), "K"); !errors.Is(err, ErrClosed) {
					t.Fatalf("Get after Close from OnRotate: %v", err)
				}
				p.Close() // from outside: waits for whatever is left
			})
		})
	}
}

// TestCloseFromOnNearExpiryReturns calls Close from the Event Grid
// handler's OnNearExpiry.
func TestCloseFromOnNearExpiryReturns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, p := sampleVault(t, nil)
		called := false
		h := p.EventGridHandler(&EventGridOptions{AllowUnauthenticated: true, OnNearExpiry: func(ExpiryEvent) {
			p.Close()
			called = true
		}})
		body := []byte(`{"eventType":"Microsoft.KeyVault.SecretNearExpiry","data":{"Id":"https://sample-kv.vault.azure.net/secrets/newsecret/` + sampleVersion + `"}}`)
		if w := deliver(h, "POST", "/e", body, nil); w.Code != 200 || !called {
			t.Fatalf("delivery: %d, OnNearExpiry called %v", w.Code, called)
		}
		if _, err := p.Get(context.Background(), "newsecret"); !errors.Is(err, ErrClosed) {
			t.Fatalf("Get after Close from OnNearExpiry: %v", err)
		}
	})
}

// TestCloseOutsideCallbacksStillWaits: a Close from another goroutine while
// OnRotate runs still waits for the callback's goroutine to end.
func TestCloseOutsideCallbacksStillWaits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("K", "one")
		release := make(chan struct{})
		entered := make(chan struct{})
		p := v.newProvider(t, &Options{OnRotate: func(RotationEvent) {
			close(entered)
			<-release
		}})
		mustGet(t, p, "K", "one")
		v.set("K", "two")
		go p.Refresh(context.Background(), "K")
		<-entered
		done := make(chan struct{})
		go func() {
			p.Close()
			close(done)
		}()
		synctest.Wait()
		select {
		case <-done:
			t.Fatal("Close returned while OnRotate was still running on a Provider goroutine")
		default:
		}
		close(release)
		<-done
	})
}
