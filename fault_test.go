package kvsecrets

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/kvsecrets/kvsecrets/kvtest"
)

// The fault suite: the real SDK pipeline against the local vault, in
// process on the fake clock, with the vault's request counter and the
// callers' results as the oracle. Nothing cached is lost to a transient
// fault; nothing revoked is served.

func inProcessProvider(t *testing.T, o *Options) (*kvtest.Server, *Provider) {
	t.Helper()
	vault, err := kvtest.NewInProcess(nil)
	if err != nil {
		t.Fatal(err)
	}
	vault.Seed(map[string]string{"K": "value"})
	if o == nil {
		o = &Options{}
	}
	o.ClientOptions = vault.ClientOptions()
	p, err := NewProvider(vault.URL(), vault.Credential(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	mustGet(t, p, "K", "value")
	return vault, p
}

// callEvery reads K every interval for d and returns the errors seen.
func callEvery(p *Provider, interval, d time.Duration) (errs int) {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(interval) {
		start := time.Now()
		if _, err := p.Get(context.Background(), "K"); err != nil || time.Since(start) != 0 {
			errs++ // an error, or a caller that had to wait
		}
	}
	return errs
}

func TestFaultLongOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		vault, p := inProcessProvider(t, &Options{TTL: 10 * time.Minute, MaxStale: 2 * time.Hour})
		vault.FailFor(3*time.Hour, kvtest.ServiceUnavailable)
		if n := callEvery(p, 10*time.Second, 2*time.Hour-time.Minute); n != 0 {
			t.Fatalf("%d failed or waiting reads within MaxStale", n)
		}
		time.Sleep(2 * time.Minute)
		if _, err := p.Get(context.Background(), "K"); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("past MaxStale: %v", err)
		}
		// Callers keep asking (and hear the failure at once, from memory)
		// until the vault is back; the value then comes back by itself.
		if n := callEvery(p, time.Minute, time.Hour); n == 0 {
			t.Fatal("reads past MaxStale succeeded during the outage")
		}
		time.Sleep(DefaultMaxRetryBackoff + DefaultFetchTimeout)
		synctest.Wait()
		before := vault.SecretRequests("K")
		mustGet(t, p, "K", "value")
		if vault.SecretRequests("K") != before {
			t.Fatal("the value came back only when a caller asked: no background retry")
		}
	})
}

func TestFaultThrottleStorm(t *testing.T) {
	for _, retryAfter := range []string{"", "30"} {
		t.Run("Retry-After="+retryAfter, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				vault, p := inProcessProvider(t, &Options{TTL: time.Minute})
				f := kvtest.Throttled
				f.RetryAfter = retryAfter
				vault.ResetCounts()
				vault.FailFor(10*time.Minute, f)
				if n := callEvery(p, time.Second, 10*time.Minute); n != 0 {
					t.Fatalf("%d failed or waiting reads during the storm", n)
				}
				// The SDK tries each read 4 times (fewer when Retry-After
				// exceeds its MaxRetryDelay); between reads the Provider
				// backs off to 2 minutes, or at least Retry-After.
				n := vault.Counts().Total
				t.Logf("requests during a 10-minute 429 storm: %d", n)
				if n > 60 {
					t.Fatalf("%d requests during a 10-minute storm: no backoff", n)
				}
				time.Sleep(3 * time.Minute)
				synctest.Wait()
				mustGet(t, p, "K", "value")
			})
		})
	}
}

func TestFaultSlowVault(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		vault, p := inProcessProvider(t, &Options{TTL: time.Minute})
		vault.SetLatency(10 * time.Second)
		if n := callEvery(p, time.Second, 5*time.Minute); n != 0 {
			t.Fatalf("%d callers waited on a slow refresh", n)
		}
		vault.Seed(map[string]string{"Cold": "c"})
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		start := time.Now()
		if _, err := p.Get(ctx, "Cold"); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) != time.Second {
			t.Fatalf("cold read with a 1s deadline: %v after %v", err, time.Since(start))
		}
		got, err := p.Get(context.Background(), "Cold") // joins the read already under way
		if err != nil || got != "c" || time.Since(start) != 10*time.Second {
			t.Fatalf("cold read: %q, %v after %v (want the one shared read, 10s)", got, err, time.Since(start))
		}
	})
}

// flakyCredential fails while broken is set.
type flakyCredential struct {
	inner  azcore.TokenCredential
	broken atomic.Bool
}

func (c *flakyCredential) GetToken(ctx context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	if c.broken.Load() {
		return azcore.AccessToken{}, errors.New("ManagedIdentityCredential: IMDS unreachable")
	}
	return c.inner.GetToken(ctx, o)
}

func TestFaultCredentialFailing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		vault, err := kvtest.NewInProcess(&kvtest.Options{TokenLifetime: 10 * time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		vault.Seed(map[string]string{"K": "value", "Cold": "c"})
		cred := &flakyCredential{inner: vault.Credential()}
		p, err := NewProvider(vault.URL(), cred, &Options{ClientOptions: vault.ClientOptions(), TTL: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		mustGet(t, p, "K", "value")
		cred.broken.Store(true)
		if n := callEvery(p, 10*time.Second, 30*time.Minute); n != 0 {
			t.Fatalf("%d failed reads while the credential failed", n)
		}
		// A cold read hears at once, with an error that names the
		// credential, not an outage.
		start := time.Now()
		if _, err := p.Get(context.Background(), "Cold"); !errors.Is(err, ErrUnauthenticated) || errors.Is(err, ErrUnavailable) ||
			!strings.Contains(err.Error(), "credential") {
			t.Fatalf("cold read without a credential: %v", err)
		}
		if d := time.Since(start); d != 0 {
			t.Fatalf("the cold read took %v on the fake clock, want 0: a credential failure is not retried", d)
		}
		if p.Stats().RefreshFailures == 0 {
			t.Fatal("the credential's failures were not seen")
		}
		cred.broken.Store(false)
		time.Sleep(3 * time.Minute)
		mustGet(t, p, "Cold", "c")
	})
}

func TestFaultResetMidBodyAndDroppedConnections(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		vault, p := inProcessProvider(t, &Options{TTL: time.Minute})
		vault.FailFor(10*time.Minute, kvtest.ResetMidBody)
		if n := callEvery(p, time.Second, 5*time.Minute); n != 0 {
			t.Fatalf("%d failed reads", n)
		}
		vault.FailFor(5*time.Minute, kvtest.DropConnection)
		if n := callEvery(p, time.Second, 5*time.Minute); n != 0 {
			t.Fatalf("%d failed reads", n)
		}
		if p.Stats().RefreshFailures == 0 {
			t.Fatal("no failures seen")
		}
	})
}

func TestFaultRevocationDuringOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		vault, p := inProcessProvider(t, &Options{TTL: time.Minute, RetryBackoff: 10 * time.Second, MaxRetryBackoff: 10 * time.Second})
		vault.FailFor(time.Hour, kvtest.ServiceUnavailable)
		if n := callEvery(p, time.Second, 5*time.Minute); n != 0 {
			t.Fatalf("%d failed reads", n)
		}
		vault.FailSecret("K", kvtest.ForbiddenByRbac) // answered even though the outage goes on
		time.Sleep(time.Minute)
		synctest.Wait()
		if _, err := p.Get(context.Background(), "K"); !errors.Is(err, ErrForbidden) {
			t.Fatalf("after revocation mid-outage: %v", err)
		}
	})
}

// TestFaultTLSHandshake runs over real loopback TLS: a client that stops
// trusting the vault's certificate fails its handshakes; the cached value
// stays, and returns to fresh reads once the handshake works again.
func TestFaultTLSHandshake(t *testing.T) {
	vault := kvtest.NewTestServer(t, nil)
	vault.Seed(map[string]string{"K": "value"})
	good := vault.HTTPClient()
	// The same loopback address, but a client that does not trust the
	// vault's certificate: every handshake fails.
	addr := vault.Addr()
	bad := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS12},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}}
	var broken atomic.Bool
	var tries atomic.Int64
	co := vault.ClientOptions()
	co.Transport = transporterFunc(func(r *http.Request) (*http.Response, error) {
		if broken.Load() {
			tries.Add(1)
			return bad.Do(r)
		}
		return good.Do(r)
	})
	p, err := NewProvider(vault.URL(), vault.Credential(), &Options{ClientOptions: co})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	mustGet(t, p, "K", "value")
	broken.Store(true)
	_, err = p.Refresh(context.Background(), "K")
	if !errors.Is(err, ErrMisconfigured) || !strings.Contains(err.Error(), "certificate") || !strings.Contains(err.Error(), "TLS verification failed") {
		t.Fatalf("Refresh with failing TLS: %v", err)
	}
	if n := tries.Load(); n != 1 {
		t.Fatalf("a TLS verification failure was tried %d times, want once: retrying cannot fix it", n)
	}
	// A cold read fails the same way, at once.
	if _, err := p.Get(context.Background(), "Other"); !errors.Is(err, ErrMisconfigured) || tries.Load() != 2 {
		t.Fatalf("cold read with failing TLS: %v after %d tries", err, tries.Load())
	}
	mustGet(t, p, "K", "value")
	broken.Store(false)
	if _, err := p.Refresh(context.Background(), "K"); err != nil {
		t.Fatal(err)
	}
}

type transporterFunc func(*http.Request) (*http.Response, error)

func (f transporterFunc) Do(r *http.Request) (*http.Response, error) { return f(r) }
