package kvsecrets

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
)

// These tests run the whole SDK pipeline over real HTTPS on loopback: the
// challenge handshake, token requests, the SDK's retries, real JSON.

func TestHTTPSChallengeTokenAndRetries(t *testing.T) {
	kv := &kvSecrets{}
	ver := kv.add("MyApiKey", "https-value")
	kv.failWith(2, http.StatusServiceUnavailable, "ServiceUnavailable", "", nil)
	v := newHTTPSVault(t, "test.vault.azure.net", kv)
	p, cred := v.newProvider(t, nil)

	s, err := p.GetSecret(context.Background(), "MyApiKey")
	if err != nil || s.Value() != "https-value" || s.Version != ver || s.Created.IsZero() {
		t.Fatalf("GetSecret = %v, %v", s, err)
	}
	if n := v.unauthenticated.Load(); n != 1 {
		t.Fatalf("unauthenticated requests = %d, want the one challenge", n)
	}
	if n := v.authorised.Load(); n != 3 {
		t.Fatalf("authorised requests = %d, want 3 (two 503s retried by the SDK)", n)
	}
	cred.mu.Lock()
	asked := cred.asked
	cred.mu.Unlock()
	if len(asked) == 0 || asked[0].TenantID != testTenant || len(asked[0].Scopes) != 1 || asked[0].Scopes[0] != "https://vault.azure.net/.default" {
		t.Fatalf("token requests = %+v", asked)
	}
	if got := p.Stats().VaultRequests; got != 1 {
		t.Fatalf("Provider-level vault reads = %d, want 1", got)
	}
	mustGet(t, p, "MyApiKey", "https-value")
	if n := v.authorised.Load(); n != 3 {
		t.Fatal("cached read went to the vault")
	}
}

func TestHTTPSInnerCodesMapToSentinels(t *testing.T) {
	kv := &kvSecrets{}
	kv.add("Disabled", "x")
	kv.update("Disabled", func(v *kvVersion) { v.enabled = false })
	kv.add("Denied", "x")
	kv.update("Denied", func(v *kvVersion) { v.rbacDeny = true })
	v := newHTTPSVault(t, "test.vault.azure.net", kv)
	p, _ := v.newProvider(t, nil)
	for _, tc := range []struct {
		name string
		want error
		text string
	}{
		{"Disabled", ErrDisabled, `kvsecrets: secret "Disabled": secret disabled (403 Forbidden/SecretDisabled)`},
		{"Denied", ErrForbidden, `kvsecrets: secret "Denied": access forbidden (403 Forbidden/ForbiddenByRbac)`},
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
	kv := &kvSecrets{}
	kv.add("K", "value")
	v := newHTTPSVault(t, "test.vault.azure.net", kv)
	p, _ := v.newProvider(t, nil)
	mustGet(t, p, "K", "value")
	kv.update("K", func(v *kvVersion) { v.rbacDeny = true })
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
	kv := &kvSecrets{}
	kv.add("K", "value")
	v := newHTTPSVault(t, "test.vault.azure.net", kv)
	p, _ := v.newProvider(t, nil)
	mustGet(t, p, "K", "value")
	// A Retry-After beyond the SDK's MaxRetryDelay means the SDK does not
	// retry; the Provider must keep serving and wait at least that long.
	kv.failWith(1, http.StatusTooManyRequests, "Throttled", "", http.Header{"Retry-After": {"120"}})
	_, err := p.Refresh(context.Background(), "K")
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "429 Throttled") {
		t.Fatalf("Refresh = %v", err)
	}
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		t.Fatal("no ResponseError")
	}
	if f := classify("K", "", re); f.retryAfter.Seconds() != 120 || f.authoritative {
		t.Fatalf("classify = %+v", f)
	}
	if d := p.backoff(1, 120e9); d.Seconds() != 120 {
		t.Fatalf("backoff with Retry-After 120s = %v", d)
	}
	mustGet(t, p, "K", "value")
}
