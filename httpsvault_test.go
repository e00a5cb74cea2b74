package kvsecrets

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
)

// httpsVault is an HTTPS server on loopback for the replays of recorded
// traffic, which answer from recordings rather than from kvtest's vault.
// Its certificate is for the recorded host and the client dials loopback, so
// the SDK keeps challenge resource verification on. A request without the
// token the credential issues gets the recorded challenge.
type httpsVault struct {
	srv   *httptest.Server
	url   string
	token string

	unauthenticated atomic.Int64
	authorised      atomic.Int64
}

// newHTTPSVault serves answer(w, r, challenge) on loopback for host.
func newHTTPSVault(t testing.TB, host string, answer func(w http.ResponseWriter, r *http.Request, challenge bool)) *httpsVault {
	t.Helper()
	v := &httpsVault{url: "https://" + host + "/", token: "token-" + rand.Text()}
	v.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		challenge := r.Header.Get("Authorization") != "Bearer "+v.token
		if challenge {
			v.unauthenticated.Add(1)
		} else {
			v.authorised.Add(1)
		}
		answer(w, r, challenge)
	}))
	v.srv.TLS = &tls.Config{Certificates: []tls.Certificate{testCert(t, host)}}
	v.srv.StartTLS()
	t.Cleanup(v.srv.Close)
	return v
}

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
	return &azsecrets.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: &http.Client{Transport: tr}}}
}

type staticCredential struct{ token string }

func (c staticCredential) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: c.token, ExpiresOn: time.Now().Add(time.Hour)}, nil
}

func (v *httpsVault) newProvider(t testing.TB, o *Options) *Provider {
	t.Helper()
	if o == nil {
		o = &Options{}
	}
	o.ClientOptions = v.clientOptions()
	p, err := NewProvider(v.url, staticCredential{v.token}, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// testCert returns a self-signed certificate for host.
func testCert(t testing.TB, host string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: host},
		DNSNames:              []string{host},
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
