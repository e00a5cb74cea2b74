package kvsecrets

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"

	"github.com/kvsecrets/kvsecrets/kvtest"
)

// These tests run the whole SDK pipeline over real HTTPS on loopback
// against the local vault: the challenge handshake, token requests, the
// SDK's retries, real JSON and error bodies.

func newLocalProvider(t *testing.T, o *Options) (*kvtest.Server, *Provider) {
	t.Helper()
	srv := kvtest.NewTestServer(t, nil)
	if o == nil {
		o = &Options{}
	}
	o.ClientOptions = srv.ClientOptions()
	p, err := NewProvider(srv.URL(), srv.Credential(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return srv, p
}

func TestHTTPSChallengeTokenAndRetries(t *testing.T) {
	srv, p := newLocalProvider(t, nil)
	ver, err := srv.SetSecret("MyApiKey", "https-value", nil)
	if err != nil {
		t.Fatal(err)
	}
	srv.FailNext(1, kvtest.ServiceUnavailable)
	srv.FailNext(1, kvtest.DropConnection)

	s, err := p.GetSecret(context.Background(), "MyApiKey")
	if err != nil || s.Value() != "https-value" || s.Version != ver || s.Created.IsZero() {
		t.Fatalf("GetSecret = %v, %v", s, err)
	}
	c := srv.Counts()
	if c.Unauthenticated != 1 {
		t.Fatalf("unauthenticated requests = %d, want the one challenge", c.Unauthenticated)
	}
	if n := srv.SecretRequests("MyApiKey"); n != 3 {
		t.Fatalf("authorised GETs = %d, want 3 (a 503 and a dropped connection retried by the SDK)", n)
	}
	if got := p.Stats().VaultRequests; got != 1 {
		t.Fatalf("Provider-level vault reads = %d, want 1", got)
	}
	mustGet(t, p, "MyApiKey", "https-value")
	if srv.SecretRequests("MyApiKey") != 3 {
		t.Fatal("cached read went to the vault")
	}
}

func TestHTTPSInnerCodesMapToSentinels(t *testing.T) {
	srv, p := newLocalProvider(t, nil)
	srv.Seed(map[string]string{"Disabled": "x", "Denied": "x", "NoPolicy": "x"})
	srv.SetEnabled("Disabled", "", false)
	srv.FailSecret("Denied", kvtest.ForbiddenByRbac)
	srv.FailSecret("NoPolicy", kvtest.AccessDenied)
	for _, tc := range []struct {
		name string
		want error
		text string
	}{
		{"Disabled", ErrDisabled, `kvsecrets: secret "Disabled": secret disabled (403 Forbidden/SecretDisabled)`},
		{"Denied", ErrForbidden, `kvsecrets: secret "Denied": access forbidden (403 Forbidden/ForbiddenByRbac)`},
		{"NoPolicy", ErrForbidden, `kvsecrets: secret "NoPolicy": access forbidden (403 Forbidden/AccessDenied)`},
		{"Missing", ErrNotFound, `kvsecrets: secret "Missing": secret not found (404 SecretNotFound)`},
	} {
		_, err := p.Get(context.Background(), tc.name)
		var re *azcore.ResponseError
		if !errors.Is(err, tc.want) || !errors.As(err, &re) || err.Error() != tc.text {
			t.Errorf("Get(%q) = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestHTTPSRevocationDropsTheCachedValue(t *testing.T) {
	srv, p := newLocalProvider(t, nil)
	srv.Seed(map[string]string{"K": "value"})
	mustGet(t, p, "K", "value")
	srv.FailSecret("K", kvtest.ForbiddenByRbac)
	if _, err := p.Refresh(context.Background(), "K"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("Refresh = %v", err)
	}
	if _, err := p.Get(context.Background(), "K"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("Get after revocation = %v, want ErrForbidden", err)
	}
	if p.Stats().Revocations != 1 {
		t.Fatalf("stats = %+v", p.Stats())
	}
}

func TestHTTPSThrottlingKeepsTheValueAndReadsRetryAfter(t *testing.T) {
	srv, p := newLocalProvider(t, nil)
	srv.Seed(map[string]string{"K": "value"})
	mustGet(t, p, "K", "value")
	// A Retry-After beyond the SDK's MaxRetryDelay means the SDK does not
	// retry; the Provider must keep serving and wait at least that long.
	throttled := kvtest.Throttled
	throttled.RetryAfter = "120"
	srv.FailNext(1, throttled)
	_, err := p.Refresh(context.Background(), "K")
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "429 Throttled") {
		t.Fatalf("Refresh = %v", err)
	}
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		t.Fatal("no ResponseError")
	}
	if f := classify("https://v.vault.azure.net/", "K", "", re); f.retryAfter.Seconds() != 120 || f.authoritative {
		t.Fatalf("classify = %+v", f)
	}
	if d := p.backoff(1, 120e9); d.Seconds() != 120 {
		t.Fatalf("backoff with Retry-After 120s = %v", d)
	}
	mustGet(t, p, "K", "value")
}
