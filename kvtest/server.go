// Package kvtest runs a local Azure Key Vault for secrets: an in-process
// HTTPS server on loopback that speaks Key Vault's protocol — the 401
// challenge and bearer tokens, the REST paths, JSON bodies and error bodies
// with inner codes — so that the real azsecrets client, the kvsecrets
// Provider, or any other Key Vault client can run against it without an
// Azure account.
//
// Use it in tests as you would net/http/httptest:
//
//	srv := kvtest.NewTestServer(t, nil)
//	srv.SetSecret("MyApiKey", "test-key", nil)
//	p, err := kvsecrets.NewProvider(srv.URL(), srv.Credential(),
//		&kvsecrets.Options{ClientOptions: srv.ClientOptions()})
//
// The server's certificate is for the vault's *.vault.azure.net name and
// the client options dial loopback whatever the host, so clients keep
// challenge resource verification on. Test controls add latency, fail
// requests with chosen answers, drop connections, throttle like Key Vault,
// and count and log requests.
package kvtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
)

// Defaults for Options.
const (
	DefaultVaultName = "kvtest"
	DefaultTenantID  = "00000000-0000-0000-0000-00000000c0de"
	// Scope is the token scope Key Vault's challenge asks for.
	Scope = "https://vault.azure.net/.default"
)

// Options configures a Server. A nil *Options means defaults.
type Options struct {
	// VaultName names the vault: its URL is https://VaultName.vault.azure.net/.
	// Default "kvtest". 3–24 characters of letters, digits and '-'.
	VaultName string
	// Addr is the loopback address to listen on. Default "127.0.0.1:0" (any
	// free port). Only loopback addresses are accepted.
	Addr string
	// TenantID appears in the challenge. Default DefaultTenantID.
	TenantID string
	// TokenLifetime is how long issued tokens are accepted. Default 1h.
	TokenLifetime time.Duration
}

// Server is a local Key Vault. Its methods are safe for concurrent use.
type Server struct {
	name     string
	tenant   string
	tokenTTL time.Duration

	ln      net.Listener
	httpSrv *http.Server
	caPEM   []byte
	pool    *x509.CertPool
	wg      sync.WaitGroup

	mu     sync.Mutex
	tokens map[string]time.Time // token → expiry
	vault  vault
	faults faults
	stats  stats
}

// NewServer starts a Server. Close it when done.
func NewServer(opts *Options) (*Server, error) {
	if opts == nil {
		opts = &Options{}
	}
	s := &Server{name: opts.VaultName, tenant: opts.TenantID, tokenTTL: opts.TokenLifetime}
	if s.name == "" {
		s.name = DefaultVaultName
	}
	if !validVaultName(s.name) {
		return nil, errors.New("kvtest: VaultName must be 3-24 characters of letters, digits and '-'")
	}
	if s.tenant == "" {
		s.tenant = DefaultTenantID
	}
	if s.tokenTTL <= 0 {
		s.tokenTTL = time.Hour
	}
	addr := opts.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("kvtest: Addr: %w", err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("kvtest: Addr %q is not a loopback address", addr)
	}
	cert, caPEM, err := newCertificate(s.Host())
	if err != nil {
		return nil, err
	}
	s.caPEM = caPEM
	s.pool = x509.NewCertPool()
	s.pool.AppendCertsFromPEM(caPEM)
	s.tokens = map[string]time.Time{}
	s.vault.init()
	s.stats.perSecret = map[string]int64{}

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("kvtest: %w", err)
	}
	s.ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	s.httpSrv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, ErrorLog: discardLog()}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.httpSrv.Serve(s.ln)
	}()
	return s, nil
}

// NewTestServer starts a Server for a test, fails the test if it cannot,
// and closes it when the test ends.
func NewTestServer(t testing.TB, opts *Options) *Server {
	t.Helper()
	s, err := NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// Close shuts the server down, closing every connection.
func (s *Server) Close() {
	s.httpSrv.Close()
	s.wg.Wait()
}

// Host returns the vault's host name, VaultName.vault.azure.net.
func (s *Server) Host() string { return s.name + ".vault.azure.net" }

// URL returns the vault's URL, https://VaultName.vault.azure.net/. Clients
// reach it through ClientOptions or HTTPClient, which dial the server
// whatever the host; the name keeps challenge resource verification on.
func (s *Server) URL() string { return "https://" + s.Host() + "/" }

// Addr returns the address the server listens on, such as 127.0.0.1:54321.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// LoopbackURL returns https://ADDR/, for clients in other processes that
// cannot redirect their dialer. Such clients must trust CACertPEM and turn
// challenge resource verification off (127.0.0.1 is not under
// vault.azure.net).
func (s *Server) LoopbackURL() string { return "https://" + s.Addr() + "/" }

// CACertPEM returns the PEM certificate clients must trust.
func (s *Server) CACertPEM() []byte { return append([]byte(nil), s.caPEM...) }

// HTTPClient returns a client that trusts the server and dials it for any host.
func (s *Server) HTTPClient() *http.Client {
	addr := s.Addr()
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: s.pool, MinVersion: tls.VersionTLS12},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}}
}

// ClientOptions returns options for azsecrets.NewClient (or
// kvsecrets.Options.ClientOptions) whose transport is HTTPClient. The SDK's
// retry delays are shortened to milliseconds so that tests of failures run
// fast; the retry count and rules stay the SDK's.
func (s *Server) ClientOptions() *azsecrets.ClientOptions {
	return &azsecrets.ClientOptions{ClientOptions: azcore.ClientOptions{
		Transport: s.HTTPClient(),
		Retry:     policy.RetryOptions{RetryDelay: 10 * time.Millisecond, MaxRetryDelay: 200 * time.Millisecond},
	}}
}

// Credential returns a TokenCredential that obtains tokens from the server,
// checking the scope and tenant the challenge asked for, as Entra ID would.
func (s *Server) Credential() azcore.TokenCredential { return credential{s} }

type credential struct{ s *Server }

func (c credential) GetToken(_ context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	if len(o.Scopes) != 1 || o.Scopes[0] != Scope {
		return azcore.AccessToken{}, fmt.Errorf("kvtest: credential asked for scopes %q, want [%q]", o.Scopes, Scope)
	}
	if o.TenantID != "" && o.TenantID != c.s.tenant {
		return azcore.AccessToken{}, fmt.Errorf("kvtest: credential asked for tenant %q, want %q", o.TenantID, c.s.tenant)
	}
	tok, exp := c.s.IssueToken()
	return azcore.AccessToken{Token: tok, ExpiresOn: exp}, nil
}

// IssueToken returns a new bearer token the server accepts until the
// returned time, for clients that bring their own credential.
func (s *Server) IssueToken() (string, time.Time) {
	tok := "kvtest-" + rand.Text()
	exp := time.Now().Add(s.tokenTTL)
	s.mu.Lock()
	s.tokens[tok] = exp
	s.mu.Unlock()
	return tok, exp
}

// AddToken makes the server accept token until exp; cmd/kvlocal uses it for
// a token fixed by flag.
func (s *Server) AddToken(token string, exp time.Time) {
	s.mu.Lock()
	s.tokens[token] = exp
	s.mu.Unlock()
}

func (s *Server) authorised(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return false
	}
	s.mu.Lock()
	exp, ok := s.tokens[tok]
	s.mu.Unlock()
	return ok && time.Now().Before(exp)
}

func validVaultName(n string) bool {
	if len(n) < 3 || len(n) > 24 {
		return false
	}
	for _, c := range n {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '-') {
			return false
		}
	}
	return true
}

// newCertificate makes a self-signed certificate for host, every
// *.vault.azure.net name, localhost and the loopback addresses.
func newCertificate(host string) (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: host, Organization: []string{"kvtest local Key Vault"}},
		DNSNames:              []string{host, "*.vault.azure.net", "localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(30 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pemBytes, nil
}
