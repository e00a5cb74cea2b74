package kvsecrets_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

// anyScopeToken is a credential that hands its token to any scope a
// challenge asks for, as a careless credential would: what protects it is
// the Provider's host checks alone.
type anyScopeToken string

func (s anyScopeToken) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: string(s), ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// hostileVault is an HTTPS server on loopback that answers like Key Vault
// for any host name (a challenge naming a resource of its choice, then a
// secret) and records every Authorization header it receives.
type hostileVault struct {
	srv  *httptest.Server
	mu   sync.Mutex
	auth []string
	hits int
}

func newHostileVault(t *testing.T, resource string) *hostileVault {
	h := &hostileVault{}
	h.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.hits++
		a := r.Header.Get("Authorization")
		if a != "" {
			h.auth = append(h.auth, r.Host+": "+a)
		}
		h.mu.Unlock()
		if a == "" {
			w.Header().Set("WWW-Authenticate", `Bearer authorization="https://login.microsoftonline.com/tenant", resource="`+resource+`"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"value":"stolen","id":"https://` + r.Host + `/secrets/x/0123456789abcdef0123456789abcdef","attributes":{"enabled":true}}`))
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *hostileVault) received() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.auth...)
}

// clientOptions route the local vault's host to it and every other host to
// the hostile server, which passes TLS for any name (as an attacker with a
// certificate for their own domain would).
func (h *hostileVault) clientOptions(vault *kvtest.Server, noVerify bool) *azsecrets.ClientOptions {
	hostile := h.srv.Listener.Addr().String()
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, _ := net.SplitHostPort(addr)
			to := hostile
			if host == vault.Host() {
				to = vault.Addr()
			}
			var d net.Dialer
			return d.DialContext(ctx, network, to)
		},
	}
	o := vault.ClientOptions()
	co := *o
	co.Transport = &http.Client{Transport: tr}
	co.DisableChallengeResourceVerification = noVerify
	return &co
}

// TestNoTokenReachesAForeignHost tries every reference form Resolve, Load
// and ResolveEnv accept, pointed at hosts outside Key Vault's DNS suffixes
// (and tricks to look like one), with challenge verification on and off:
// the hostile server must receive no Authorization header, and every
// attempt fails before any request. A control shows the harness sees a
// token when one is sent: a Provider made explicitly for the hostile host.
func TestNoTokenReachesAForeignHost(t *testing.T) {
	vault := kvtest.NewTestServer(t, nil)
	hostilePort := ""
	refs := func(h *hostileVault) []string {
		_, hostilePort, _ = net.SplitHostPort(h.srv.Listener.Addr().String())
		hosts := []string{
			"evil.example.com", "EVIL.example.com", "evil.example.com:443", "127.0.0.1:" + hostilePort, "127.0.0.1",
			"[::1]", "vault.azure.net", "kvtest.vault.azure.net.evil.example.com", "evil.vault.azure.net.",
			"evil.example.com%2F.vault.azure.net", "evil.example.com\\.vault.azure.net", "x.vault.azure.net@evil.example.com",
			"evil-example.com", "vault.azure.net.evil.example.com", "evil.example.com/.vault.azure.net",
		}
		var out []string
		for _, host := range hosts {
			uri := "https://" + host + "/secrets/MyApiKey"
			out = append(out, uri, uri+"/0123456789abcdef0123456789abcdef",
				"@Microsoft.KeyVault(SecretUri="+uri+")", "@Microsoft.KeyVault(SecretUri="+uri+"/)",
				"@Microsoft.KeyVault(SecretUri="+uri+"#.vault.azure.net)", "@Microsoft.KeyVault( SecretUri="+uri+" )")
		}
		return append(out,
			"@Microsoft.KeyVault(VaultName=evil.example.com;SecretName=MyApiKey)",
			"@Microsoft.KeyVault(VaultName=evil.example.com/;SecretName=MyApiKey)",
			"@Microsoft.KeyVault(VaultName=evil;SecretName=MyApiKey;SecretUri=https://evil.example.com/secrets/MyApiKey)",
			"https://evil.example.com/secrets/MyApiKey#.vault.azure.net",
		)
	}
	for _, noVerify := range []bool{false, true} {
		for _, resource := range []string{"https://example.com", "https://vault.azure.net", "https://evil.example.com"} {
			h := newHostileVault(t, resource)
			p, err := kvsecrets.NewProvider(vault.URL(), anyScopeToken("the-token"), &kvsecrets.Options{
				ClientOptions: h.clientOptions(vault, noVerify), FetchTimeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			for _, ref := range refs(h) {
				ctx := t.Context()
				if _, err := p.Resolve(ctx, ref); err == nil {
					t.Errorf("Resolve(%q) succeeded", ref)
				} else if !errors.Is(err, kvsecrets.ErrHostNotAllowed) && !errors.Is(err, kvsecrets.ErrInvalidReference) {
					t.Errorf("Resolve(%q): %v, want ErrHostNotAllowed or ErrInvalidReference", ref, err)
				}
				if _, err := p.ResolveEnv(ctx, []string{"X=" + ref}); err == nil && kvsecrets.IsReference(ref) {
					t.Errorf("ResolveEnv(%q) succeeded", ref)
				}
				if !strings.ContainsAny(ref, `",\`) {
					// Load reads references from struct tags: make a type
					// whose field carries this one.
					typ := reflect.StructOf([]reflect.StructField{{Name: "X", Type: reflect.TypeFor[string](),
						Tag: reflect.StructTag(`keyvault:"` + ref + `"`)}})
					if err := p.Load(ctx, reflect.New(typ).Interface()); err == nil {
						t.Errorf("Load(%q) succeeded", ref)
					}
				}
			}
			p.Close()
			if got := h.received(); len(got) > 0 {
				t.Fatalf("noVerify %v, resource %s: the hostile server received a token: %q", noVerify, resource, got)
			}
			if h.hits != 0 {
				t.Errorf("noVerify %v, resource %s: %d requests reached the hostile server", noVerify, resource, h.hits)
			}
		}
	}

	// Control: configured explicitly, a host outside the suffixes does get
	// the token (the user asked for it), so the harness above would see one.
	h := newHostileVault(t, "https://example.com")
	p, err := kvsecrets.NewProvider("https://evil.example.com/", anyScopeToken("the-token"), &kvsecrets.Options{
		ClientOptions: h.clientOptions(vault, true)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.Get(t.Context(), "x"); err != nil {
		t.Fatalf("control: %v", err)
	}
	if got := h.received(); len(got) != 1 || !strings.HasSuffix(got[0], "Bearer the-token") {
		t.Fatalf("control: the hostile server received %q, want the token once", got)
	}
}

func TestIsVaultHost(t *testing.T) {
	for host, want := range map[string]bool{
		"myvault.vault.azure.net": true, "MyVault.Vault.Azure.Net": true, "my-vault-1.vault.azure.cn": true,
		"myhsm.managedhsm.azure.net": true, "kv1.vault.usgovcloudapi.net": true,
		"myvault.vault.azure.net:443": false, "vault.azure.net": false, "my.vault.vault.azure.net": false,
		"-kv.vault.azure.net": false, "kv-.vault.azure.net": false, "a--b.vault.azure.net": false, "1kv.vault.azure.net": false,
		"kv\u212a.vault.azure.net": false, // the Kelvin sign, which strings.ToLower folds to 'k'
		"myvault.vault.azure.net.": false, "evil.example.com": false, "127.0.0.1": false, "": false,
		"ab.vault.azure.net": false, "abcdefghijklmnopqrstuvwxy.vault.azure.net": false,
	} {
		if got := kvsecrets.IsVaultHost(host); got != want {
			t.Errorf("IsVaultHost(%q) = %v, want %v", host, got, want)
		}
	}
	if _, err := kvsecrets.ParseReference("https://kv\u212a.vault.azure.net/secrets/x"); !errors.Is(err, kvsecrets.ErrInvalidReference) {
		t.Errorf("a host with a Unicode look-alike: %v", err)
	}
}
