package kvsecrets

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
)

// httpsVault is a Key Vault stand-in on loopback HTTPS that speaks the
// protocol the real service speaks: the 401 challenge with WWW-Authenticate,
// bearer tokens, the JSON bodies and error bodies with inner codes. Its
// certificate is for a *.vault.azure.net name and the client dials loopback,
// so the SDK keeps challenge resource verification on.
type httpsVault struct {
	srv     *httptest.Server
	url     string // https://test.vault.azure.net/
	token   string
	handler http.Handler // answers authorised requests

	unauthenticated atomic.Int64 // requests without a valid token
	authorised      atomic.Int64
}

const testTenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"

func newHTTPSVault(t testing.TB, host string, handler http.Handler) *httpsVault {
	t.Helper()
	v := &httpsVault{url: "https://" + host + "/", token: "token-" + rand.Text(), handler: handler}
	v.srv = httptest.NewUnstartedServer(http.HandlerFunc(v.serve))
	v.srv.TLS = &tls.Config{Certificates: []tls.Certificate{testCert(t, host)}}
	v.srv.StartTLS()
	t.Cleanup(v.srv.Close)
	return v
}

func (v *httpsVault) serve(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+v.token {
		v.unauthenticated.Add(1)
		w.Header().Set("WWW-Authenticate", `Bearer authorization="https://login.microsoftonline.com/`+testTenant+`", resource="https://vault.azure.net"`)
		writeJSON(w, http.StatusUnauthorized, errorBody("Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.", ""))
		return
	}
	v.authorised.Add(1)
	v.handler.ServeHTTP(w, r)
}

// clientOptions trust the server's certificate and send every connection
// to its loopback address, whatever the host name.
func (v *httpsVault) clientOptions() *azsecrets.ClientOptions {
	pool := x509.NewCertPool()
	pool.AddCert(v.srv.Certificate())
	addr := v.srv.Listener.Addr().String()
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
	return &azsecrets.ClientOptions{ClientOptions: azcore.ClientOptions{
		Transport: &http.Client{Transport: tr},
		Retry:     policy.RetryOptions{RetryDelay: 5 * time.Millisecond, MaxRetryDelay: 50 * time.Millisecond},
	}}
}

// testCredential issues the server's token and records what it was asked for.
type testCredential struct {
	token string
	mu    sync.Mutex
	asked []policy.TokenRequestOptions
}

func (c *testCredential) GetToken(_ context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	c.mu.Lock()
	c.asked = append(c.asked, o)
	c.mu.Unlock()
	return azcore.AccessToken{Token: c.token, ExpiresOn: time.Now().Add(time.Hour)}, nil
}

func (v *httpsVault) newProvider(t testing.TB, o *Options) (*Provider, *testCredential) {
	t.Helper()
	if o == nil {
		o = &Options{}
	}
	o.ClientOptions = v.clientOptions()
	cred := &testCredential{token: v.token}
	p, err := NewProvider(v.url, cred, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, cred
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	b, _ := json.Marshal(body)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	w.Write(b)
}

func errorBody(code, msg, inner string) map[string]any {
	e := map[string]any{"code": code, "message": msg}
	if inner != "" {
		e["innererror"] = map[string]any{"code": inner}
	}
	return map[string]any{"error": e}
}

// testCert returns a self-signed certificate for host and *.vault.azure.net.
func testCert(t testing.TB, host string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: host},
		DNSNames:              []string{host, "*.vault.azure.net"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// kvSecrets answers GET /secrets/NAME[/VERSION] like Key Vault, from a
// table of secrets, with switches for the failures tests need.
type kvSecrets struct {
	mu       sync.Mutex
	secrets  map[string][]kvVersion        // by lower-case name; last is latest
	failNext []func(w http.ResponseWriter) // answers for the next requests
	gets     int
}

type kvVersion struct {
	id, value string
	enabled   bool
	rbacDeny  bool
}

func (k *kvSecrets) add(name, value string) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.secrets == nil {
		k.secrets = map[string][]kvVersion{}
	}
	b := make([]byte, 16)
	rand.Read(b)
	id := hex.EncodeToString(b)
	k.secrets[strings.ToLower(name)] = append(k.secrets[strings.ToLower(name)], kvVersion{id: id, value: value, enabled: true})
	return id
}

func (k *kvSecrets) update(name string, f func(*kvVersion)) {
	k.mu.Lock()
	defer k.mu.Unlock()
	vs := k.secrets[strings.ToLower(name)]
	f(&vs[len(vs)-1])
}

func (k *kvSecrets) failWith(n, status int, code, inner string, header http.Header) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for range n {
		k.failNext = append(k.failNext, func(w http.ResponseWriter) {
			for h, vals := range header {
				w.Header()[h] = vals
			}
			writeJSON(w, status, errorBody(code, "injected failure", inner))
		})
	}
}

func (k *kvSecrets) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.gets++
	if r.URL.Query().Get("api-version") == "" {
		writeJSON(w, http.StatusBadRequest, errorBody("BadParameter", "api-version is required", ""))
		return
	}
	if len(k.failNext) > 0 {
		f := k.failNext[0]
		k.failNext = k.failNext[1:]
		f(w)
		return
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if r.Method != http.MethodGet || len(parts) < 2 || len(parts) > 3 || parts[0] != "secrets" {
		writeJSON(w, http.StatusBadRequest, errorBody("BadParameter", "unsupported request", ""))
		return
	}
	name := parts[1]
	vs := k.secrets[strings.ToLower(name)]
	var ver *kvVersion
	if len(parts) == 2 || parts[2] == "" {
		if len(vs) > 0 {
			ver = &vs[len(vs)-1]
		}
	} else {
		for i := range vs {
			if strings.EqualFold(vs[i].id, parts[2]) {
				ver = &vs[i]
			}
		}
	}
	switch {
	case ver == nil:
		writeJSON(w, http.StatusNotFound, errorBody("SecretNotFound", "A secret with (name/id) "+name+" was not found in this key vault.", ""))
	case ver.rbacDeny:
		writeJSON(w, http.StatusForbidden, errorBody("Forbidden", "Caller is not authorized to perform action on resource.", "ForbiddenByRbac"))
	case !ver.enabled:
		writeJSON(w, http.StatusForbidden, errorBody("Forbidden", "Operation get is not allowed on a disabled secret.", "SecretDisabled"))
	default:
		writeJSON(w, http.StatusOK, map[string]any{
			"value": ver.value,
			"id":    "https://" + r.Host + "/secrets/" + name + "/" + ver.id,
			"attributes": map[string]any{"enabled": true, "created": 1739463505, "updated": 1739463505,
				"recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90},
		})
	}
}
