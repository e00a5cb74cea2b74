package kvsecrets

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kvsecrets/kvsecrets/kvtest"
)

// Failures answer fast and say what to fix (issue 13). Times are on the
// fake clock, where every wait is the library's or the SDK's own.

// TestColdReadDuringAnOutageFailsInSeconds: with nothing cached, an outage
// fails the read after the SDK's own retries (4 requests), not after
// FetchTimeout (30 s); a throttled vault is still waited for within it.
func TestColdReadDuringAnOutageFailsInSeconds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		vault, p := inProcessProvider(t, nil)
		vault.SetSecret("Cold", "c", nil)
		vault.FailFor(time.Hour, kvtest.ServiceUnavailable)
		vault.ResetCounts()
		start := time.Now()
		_, err := p.Get(context.Background(), "Cold")
		took := time.Since(start)
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("cold read during an outage: %v", err)
		}
		if took > 10*time.Second {
			t.Fatalf("cold read during an outage took %v, want seconds", took)
		}
		if n := vault.SecretRequests("Cold"); n != 4 {
			t.Fatalf("%d requests, want the SDK's 4 tries", n)
		}
		t.Logf("a cold read during an outage fails in %v after %d requests", took, vault.SecretRequests("Cold"))

		// 429: waited for within FetchTimeout, so the read succeeds once
		// the throttle lifts.
		vault.ClearFaults()
		vault.FailFor(8*time.Second, kvtest.Throttled)
		start = time.Now()
		if _, err := p.Get(context.Background(), "Cold"); err != nil {
			t.Fatalf("cold read through 8 s of throttling: %v", err)
		}
		if d := time.Since(start); d < 8*time.Second || d > DefaultFetchTimeout {
			t.Fatalf("throttled cold read took %v", d)
		}
	})
}

// TestRejectedTokenIsUnauthenticated: a vault that refuses the token it is
// given (401 after a fresh token: here, a token of another tenant) is a
// credential problem, said so at once and not retried.
func TestRejectedTokenIsUnauthenticated(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		vault, err := kvtest.NewInProcess(nil)
		if err != nil {
			t.Fatal(err)
		}
		defer vault.Close()
		vault.SetSecret("K", "v", nil)
		other := kvtest.NewTenant(kvtest.DefaultTenantID, time.Hour) // same id, its own tokens
		p, err := NewProvider(vault.URL(), other.Credential(), &Options{ClientOptions: vault.ClientOptions()})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		start := time.Now()
		_, err = p.Get(context.Background(), "K")
		if !errors.Is(err, ErrUnauthenticated) || errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "401") {
			t.Fatalf("Get with a token the vault refuses: %v", err)
		}
		if d := time.Since(start); d != 0 {
			t.Fatalf("took %v, want at once", d)
		}
	})
}

// TestUnresolvableHostIsMisconfigured: a vault host that does not resolve
// is tried once and reported as a configuration problem naming the URL.
func TestUnresolvableHostIsMisconfigured(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		var tries atomic.Int64
		co := v.clientOptions()
		co.Transport = transporterFunc(func(r *http.Request) (*http.Response, error) {
			tries.Add(1)
			return nil, &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: r.URL.Hostname(), IsNotFound: true}}
		})
		p, err := NewProvider("https://no-such-vault.vault.azure.net/", nil, &Options{ClientOptions: co})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		_, err = p.Get(context.Background(), "K")
		if !errors.Is(err, ErrMisconfigured) || !strings.Contains(err.Error(), "does not resolve") {
			t.Fatalf("Get from a host that does not resolve: %v", err)
		}
		if n := tries.Load(); n != 1 {
			t.Fatalf("tried %d times, want once", n)
		}
	})
}

// TestBadRequestIsMisconfigured: a 400 is the request's fault, not the
// vault's: not retried, and a cached value still rides through it.
func TestBadRequestIsMisconfigured(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("K", "v")
		p := v.newProvider(t, nil)
		mustGet(t, p, "K", "v")
		v.setFail(func(string) (int, string) { return http.StatusBadRequest, "BadParameter" })
		before := v.requests.Load()
		if _, err := p.Get(context.Background(), "Cold"); !errors.Is(err, ErrMisconfigured) {
			t.Fatalf("cold read answered 400: %v", err)
		}
		if n := v.requests.Load() - before; n != 1 {
			t.Fatalf("%d requests for a 400, want 1", n)
		}
		if _, err := p.Refresh(context.Background(), "K"); !errors.Is(err, ErrMisconfigured) {
			t.Fatalf("Refresh answered 400: %v", err)
		}
		mustGet(t, p, "K", "v") // still served, stale
	})
}
