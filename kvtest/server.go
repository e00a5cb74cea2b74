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
//
// The vault publishes Key Vault's Event Grid events for secrets and
// delivers them as Event Grid does, to a handler in process
// ([Server.SubscribeHandler]) or a webhook URL ([Server.Subscribe]): the
// validation handshake first, then SecretNewVersionCreated for each new
// version and SecretNearExpiry and SecretExpired on the vault's clock,
// retried on Event Grid's schedule.
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
	"net/http/httptest"
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
	// Ignored with Tenant.
	TokenLifetime time.Duration
	// Tenant, when set, issues the tokens the server accepts and names the
	// challenge's tenant, so that several servers (vaults) accept one
	// credential, as vaults of one Entra ID tenant do. TenantID is then
	// ignored. Default: a tenant of the server's own.
	Tenant *Tenant
}

// Tenant issues bearer tokens, as an Entra ID tenant does; every Server
// made with it accepts them.
type Tenant struct {
	id  string
	ttl time.Duration

	mu     sync.Mutex
	tokens map[string]time.Time // token → expiry
}

// NewTenant returns a tenant with the given id ("" for DefaultTenantID)
// whose tokens last ttl (0 for an hour).
func NewTenant(id string, ttl time.Duration) *Tenant {
	if id == "" {
		id = DefaultTenantID
	}
	if ttl <= 0 {
		ttl = time.Hour
	}
	return &Tenant{id: id, ttl: ttl, tokens: map[string]time.Time{}}
}

// ID returns the tenant id the challenge names.
func (t *Tenant) ID() string { return t.id }

// Credential returns a TokenCredential that obtains tokens from the
// tenant, checking the scope and tenant the challenge asked for, as Entra
// ID would.
func (t *Tenant) Credential() azcore.TokenCredential { return credential{t} }

// IssueToken returns a new bearer token accepted until the returned time.
func (t *Tenant) IssueToken() (string, time.Time) {
	tok := "kvtest-" + rand.Text()
	exp := time.Now().Add(t.ttl)
	t.AddToken(tok, exp)
	return tok, exp
}

// AddToken makes the tenant's servers accept token until exp.
func (t *Tenant) AddToken(token string, exp time.Time) {
	t.mu.Lock()
	t.tokens[token] = exp
	t.mu.Unlock()
}

func (t *Tenant) valid(token string) bool {
	t.mu.Lock()
	exp, ok := t.tokens[token]
	t.mu.Unlock()
	return ok && time.Now().Before(exp)
}

// Server is a local Key Vault. Its methods are safe for concurrent use.
//
// Its backup blobs (POST /secrets/{name}/backup) are opaque, as Key
// Vault's are: sealed with AES-256-GCM under a key the Server makes when
// it is created, they show neither the secret's name nor its values, and
// a blob restores only into the Server that made it. Another Server, a
// restarted cmd/kvlocal, or a blob with any byte changed is refused with
// 400 BadParameter "Cannot decrypt backup blob.".
type Server struct {
	name   string
	tenant *Tenant

	ln      net.Listener
	httpSrv *http.Server
	caPEM   []byte
	wg      sync.WaitGroup

	inProcess bool // no socket: see NewInProcess

	// assignmentID is the x-ms-keyvault-rbac-assignment-id of the
	// server's answers to authenticated requests.
	assignmentID string

	mu     sync.Mutex
	vault  vault
	faults faults
	stats  stats
	events *bus // Event Grid: nil until the first subscription
	closed bool
}

// NewServer starts a Server. Close it when done.
func NewServer(opts *Options) (*Server, error) {
	if opts == nil {
		opts = &Options{}
	}
	s, err := newVault(opts)
	if err != nil {
		return nil, err
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

func newVault(opts *Options) (*Server, error) {
	s := &Server{name: opts.VaultName, tenant: opts.Tenant, assignmentID: newAssignmentID()}
	if s.name == "" {
		s.name = DefaultVaultName
	}
	if !validVaultName(s.name) {
		return nil, errors.New("kvtest: VaultName must be 3-24 characters of letters, digits and '-'")
	}
	if s.tenant == nil {
		s.tenant = NewTenant(opts.TenantID, opts.TokenLifetime)
	}
	s.vault.init()
	s.stats.perSecret = map[string]int64{}
	return s, nil
}

// NewInProcess returns a Server with no socket: its ClientOptions and
// HTTPClient hand each request straight to its handler, in the caller's
// goroutine. Everything else — the challenge, tokens, JSON, faults,
// latency, the throttle — is the same. Because it starts no goroutine
// (until an event subscription is made: then one per subscription and one
// for the expiry clock, ended by Close) and waits only on timers, a
// Provider can use it inside a testing/synctest bubble, where latency,
// retries, the throttle's windows and Event Grid's deliveries run on the
// fake clock: fleet simulations of hours run in seconds. Addr and
// LoopbackURL are empty; Options.Addr is ignored.
func NewInProcess(opts *Options) (*Server, error) {
	if opts == nil {
		opts = &Options{}
	}
	s, err := newVault(opts)
	if err != nil {
		return nil, err
	}
	s.inProcess = true
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

// Close shuts the server down, closing every connection and every event
// subscription.
func (s *Server) Close() {
	s.closeEvents()
	if s.httpSrv != nil {
		s.httpSrv.Close()
	}
	s.wg.Wait()
}

// Host returns the vault's host name, VaultName.vault.azure.net.
func (s *Server) Host() string { return s.name + ".vault.azure.net" }

// URL returns the vault's URL, https://VaultName.vault.azure.net/. Clients
// reach it through ClientOptions or HTTPClient, which dial the server
// whatever the host; the name keeps challenge resource verification on.
func (s *Server) URL() string { return "https://" + s.Host() + "/" }

// Addr returns the address the server listens on, such as 127.0.0.1:54321;
// "" for an in-process server.
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// LoopbackURL returns https://ADDR/, for clients in other processes that
// cannot redirect their dialer. Such clients must trust CACertPEM and turn
// challenge resource verification off (127.0.0.1 is not under
// vault.azure.net).
func (s *Server) LoopbackURL() string {
	if s.ln == nil {
		return ""
	}
	return "https://" + s.Addr() + "/"
}

// CACertPEM returns the PEM certificate clients must trust.
func (s *Server) CACertPEM() []byte { return append([]byte(nil), s.caPEM...) }

// HTTPClient returns a client that trusts the server and reaches it by its
// host name.
func (s *Server) HTTPClient() *http.Client { return httpClientFor(s) }

// ClientOptions returns options for azsecrets.NewClient (or
// kvsecrets.Options.ClientOptions) whose transport is HTTPClient. The SDK's
// retry delays are shortened to milliseconds so that tests of failures run
// fast; the retry count and rules stay the SDK's.
func (s *Server) ClientOptions() *azsecrets.ClientOptions { return ClientOptionsFor(s) }

// Credential returns a TokenCredential that obtains tokens from the
// server's tenant, checking the scope and tenant the challenge asked for,
// as Entra ID would.
func (s *Server) Credential() azcore.TokenCredential { return s.tenant.Credential() }

// Tenant returns the tenant whose tokens the server accepts.
func (s *Server) Tenant() *Tenant { return s.tenant }

type credential struct{ t *Tenant }

func (c credential) GetToken(_ context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	if len(o.Scopes) != 1 || o.Scopes[0] != Scope {
		return azcore.AccessToken{}, fmt.Errorf("kvtest: credential asked for scopes %q, want [%q]", o.Scopes, Scope)
	}
	if o.TenantID != "" && o.TenantID != c.t.id {
		return azcore.AccessToken{}, fmt.Errorf("kvtest: credential asked for tenant %q, want %q", o.TenantID, c.t.id)
	}
	tok, exp := c.t.IssueToken()
	return azcore.AccessToken{Token: tok, ExpiresOn: exp}, nil
}

// IssueToken returns a new bearer token the server accepts until the
// returned time, for clients that bring their own credential.
func (s *Server) IssueToken() (string, time.Time) { return s.tenant.IssueToken() }

// AddToken makes the server accept token until exp; cmd/kvlocal uses it for
// a token fixed by flag.
func (s *Server) AddToken(token string, exp time.Time) { s.tenant.AddToken(token, exp) }

func (s *Server) authorised(r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && s.tenant.valid(tok)
}

// ClientOptionsFor returns azsecrets client options that reach each of the
// servers by its host name (VaultName.vault.azure.net) and trust them all:
// for code that reads several vaults, such as references across vaults.
func ClientOptionsFor(servers ...*Server) *azsecrets.ClientOptions {
	return &azsecrets.ClientOptions{ClientOptions: azcore.ClientOptions{
		Transport: transporterFor(servers...),
		Retry:     policy.RetryOptions{RetryDelay: 10 * time.Millisecond, MaxRetryDelay: 200 * time.Millisecond},
	}}
}

// transporterFor returns the transport for ClientOptionsFor: in-process
// when every server is.
func transporterFor(servers ...*Server) policy.Transporter {
	for _, s := range servers {
		if !s.inProcess {
			return httpClientFor(servers...)
		}
	}
	return &http.Client{Transport: inProcessTransport(servers)}
}

// httpClientFor returns a client that trusts the servers and dials each by
// its host name.
func httpClientFor(servers ...*Server) *http.Client {
	for _, s := range servers {
		if s.inProcess {
			return &http.Client{Transport: inProcessTransport(servers)}
		}
	}
	pool := x509.NewCertPool()
	addrs := map[string]string{}
	for _, s := range servers {
		pool.AppendCertsFromPEM(s.caPEM)
		addrs[s.Host()] = s.Addr()
	}
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		DialContext: func(ctx context.Context, network, hostport string) (net.Conn, error) {
			host, _, _ := net.SplitHostPort(hostport)
			addr, ok := addrs[strings.ToLower(host)]
			if !ok {
				return nil, fmt.Errorf("kvtest: no local vault for host %q", host)
			}
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}}
}

func validVaultName(n string) bool { return validDashed(n, 3, 24) }

// validDashed reports whether n is lo-hi letters, digits and '-', the
// rule of vault names and of event subscription names.
func validDashed(n string, lo, hi int) bool {
	if len(n) < lo || len(n) > hi {
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

// inProcessTransport serves requests by calling the servers' handlers.
type inProcessTransport []*Server

// errDropped is what a client sees of a dropped connection in process.
var errDropped = errors.New("kvtest: connection reset by the local vault (DropConnection)")

func (t inProcessTransport) RoundTrip(req *http.Request) (resp *http.Response, err error) {
	if err := req.Context().Err(); err != nil {
		return nil, err
	}
	var s *Server
	for _, x := range t {
		if strings.EqualFold(x.Host(), req.URL.Hostname()) {
			s = x
		}
	}
	if s == nil {
		return nil, fmt.Errorf("kvtest: no local vault for host %q", req.URL.Hostname())
	}
	r := req.Clone(req.Context())
	r.Host = req.URL.Host
	r.RemoteAddr = "in-process"
	r.RequestURI = req.URL.RequestURI()
	if r.Body == nil {
		r.Body = http.NoBody
	}
	rec := httptest.NewRecorder()
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				panic(p)
			}
			resp, err = nil, errDropped
		}
	}()
	s.ServeHTTP(rec, r)
	if err := req.Context().Err(); err != nil {
		// The client gave up while the vault answered (its latency, a
		// hang): as over the network, it gets its context's error, not
		// whatever the handler had written by then.
		return nil, err
	}
	resp = rec.Result()
	resp.Request = req
	return resp, nil
}
