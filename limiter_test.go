package kvsecrets

import (
	"context"
	"errors"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// gateLimiter is a Limiter for tests: it records the vaults asked for,
// fails with fail if set, and otherwise lets a request go when open is
// closed (at once if open is nil) or ctx ends.
type gateLimiter struct {
	mu     sync.Mutex
	vaults []string
	fail   error
	open   chan struct{}
}

func (l *gateLimiter) Wait(ctx context.Context, vault string) error {
	l.mu.Lock()
	l.vaults = append(l.vaults, vault)
	fail, open := l.fail, l.open
	l.mu.Unlock()
	if fail != nil {
		return fail
	}
	if open == nil {
		return nil
	}
	select {
	case <-open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *gateLimiter) asked() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.vaults...)
}

// TestLimiterGivesEveryRequestItsTurn: with a Limiter, every request to
// the vault (reads, with pacing and without) waits in it first, named by the
// vault's host; cached reads never do.
func TestLimiterGivesEveryRequestItsTurn(t *testing.T) {
	for _, noPacing := range []bool{false, true} {
		synctest.Test(t, func(t *testing.T) {
			l := &gateLimiter{}
			vault, p, names := pacedProvider(t, Options{Limiter: l, DisablePacing: noPacing}, 10, 0)
			if err := p.Preload(t.Context(), names...); err != nil {
				t.Fatal(err)
			}
			for _, n := range names {
				if _, err := p.Get(t.Context(), n); err != nil { // cached
					t.Fatal(err)
				}
			}
			u, _ := url.Parse(vault.URL())
			asked := l.asked()
			// One more: the first read meets the challenge, two
			// requests for one read.
			if len(asked) != len(names)+1 {
				t.Fatalf("pacing off %v: the Limiter was asked %d times for %d reads, want one more for the challenge", noPacing, len(asked), len(names))
			}
			for _, v := range asked {
				if v != strings.ToLower(u.Host) {
					t.Fatalf("the Limiter was asked for vault %q, want %q", v, u.Host)
				}
			}
			if st := p.Stats(); st.LimitedReads != uint64(len(names)+1) || st.LimiterFailures != 0 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

// TestLimiterFailureFallsBackToPacing: a Limiter that cannot answer never
// fails a read: the request goes, paced by the Provider alone, the failure
// is counted, and logged once (without the Limiter's error in any read's).
func TestLimiterFailureFallsBackToPacing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &logRecorder{}
		l := &gateLimiter{fail: errors.New("limiter store unreachable")}
		_, p, names := pacedProvider(t, Options{Limiter: l, Logger: slog.New(rec)}, 10, 0)
		if err := p.Preload(t.Context(), names...); err != nil {
			t.Fatalf("Preload with a failing Limiter: %v", err)
		}
		st := p.Stats()
		if st.LimiterFailures != uint64(len(names)+1) || st.LimitedReads != 0 || st.VaultRequests != uint64(len(names)) {
			t.Fatalf("stats %+v", st)
		}
		if n := rec.count(slog.LevelWarn, "Limiter failed"); n != 1 {
			t.Fatalf("the Limiter's failure was logged %d times, want once", n)
		}
		// The pacer still applied: only the first burst went at once.
		if st.PacedReads == 0 {
			t.Fatalf("no read waited for the pacer: %+v", st)
		}
	})
}

// TestLimiterWaitCountsAgainstCaller: a read waiting for the Limiter's turn
// ends with its caller's context and is never sent; nothing cached is
// lost, and a later caller is served once the Limiter lets it go.
func TestLimiterWaitCountsAgainstCaller(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := &gateLimiter{}
		vault, p, names := pacedProvider(t, Options{Limiter: l}, 2, 0)
		if _, err := p.Get(t.Context(), names[0]); err != nil {
			t.Fatal(err)
		}
		l.mu.Lock()
		l.open = make(chan struct{}) // closed: nobody gets a turn
		l.mu.Unlock()
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		if _, err := p.Get(ctx, names[1]); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Get waiting for the Limiter past its deadline: %v", err)
		}
		synctest.Wait()
		if n := vault.SecretRequests(names[1]); n != 0 {
			t.Fatalf("the read abandoned in the Limiter was sent %d times", n)
		}
		if v, err := p.Get(t.Context(), names[0]); err != nil || v != "v" {
			t.Fatalf("the cached secret after the abandoned read: %q, %v", v, err)
		}
		got := make(chan error, 1)
		go func() { _, err := p.Get(t.Context(), names[1]); got <- err }()
		synctest.Wait()
		close(l.open)
		if err := <-got; err != nil {
			t.Fatalf("a later Get once the Limiter lets it go: %v", err)
		}
	})
}

// TestLimiterCloseEndsWaits: Close ends reads waiting for the Limiter with
// ErrClosed (goleak checks the goroutines in TestMain).
func TestLimiterCloseEndsWaits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := &gateLimiter{open: make(chan struct{})}
		_, p, names := pacedProvider(t, Options{Limiter: l}, 3, 0)
		errs := make(chan error, len(names))
		for _, n := range names {
			go func() { _, err := p.Get(context.Background(), n); errs <- err }()
		}
		synctest.Wait()
		p.Close()
		for range names {
			if err := <-errs; !errors.Is(err, ErrClosed) {
				t.Fatalf("a read waiting for the Limiter ended with %v, want ErrClosed", err)
			}
		}
	})
}
