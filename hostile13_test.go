package kvsecrets_test

// Hostile review 13: failure classification, cold-read timing, Event Grid
// handler construction, RefreshAt/RefreshJitter validation, and the errors of
// ResolveEnv/Load/kvenv. Public API and kvtest only; each test fails when the
// promise it names is broken.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

const h13Value = "h13-SUPER-secret-value-9f8e7d"

// h13Transport counts tries and can replace the answer.
type h13Transport struct {
	inner policy.Transporter
	n     atomic.Int64
	fn    func(r *http.Request, n int64) (*http.Response, error)
}

func (x *h13Transport) Do(r *http.Request) (*http.Response, error) {
	n := x.n.Add(1)
	if x.fn != nil {
		if resp, err := x.fn(r, n); resp != nil || err != nil {
			return resp, err
		}
	}
	return x.inner.Do(r)
}

// h13Realistic returns srv's client options with the SDK's default retry
// delays restored (kvtest shortens them), so that the fake clock measures what
// production would see.
func h13Realistic(srv *kvtest.Server) *azsecrets.ClientOptions {
	co := *srv.ClientOptions()
	co.Retry = policy.RetryOptions{}
	return &co
}

func h13InProc(t *testing.T, o *kvtest.Options) *kvtest.Server {
	t.Helper()
	srv, err := kvtest.NewInProcess(o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.SetSecret("S", h13Value, nil); err != nil {
		t.Fatal(err)
	}
	return srv
}

func h13New(t *testing.T, srv *kvtest.Server, cred azcore.TokenCredential, o *kvsecrets.Options) *kvsecrets.Provider {
	t.Helper()
	if o == nil {
		o = &kvsecrets.Options{}
	}
	if o.ClientOptions == nil {
		o.ClientOptions = h13Realistic(srv)
	}
	if cred == nil {
		cred = srv.Credential()
	}
	p, err := kvsecrets.NewProvider(srv.URL(), cred, o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func h13NoValue(t *testing.T, err error) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), h13Value) {
		t.Errorf("error contains the secret value: %v", err)
	}
}

// h13SaysFix: the message points at something to change (the sentinel's
// own text, "vault misconfigured"/"authentication failed", does not).
func h13SaysFix(err error) bool {
	m := strings.ToLower(err.Error())
	for _, w := range []string{"fix", "check", "credential", "api-version", "api version", "option"} {
		if strings.Contains(m, w) {
			return true
		}
	}
	return false
}

type h13TimeoutErr struct{ msg string }

func (e h13TimeoutErr) Error() string   { return e.msg }
func (e h13TimeoutErr) Timeout() bool   { return true }
func (e h13TimeoutErr) Temporary() bool { return true }

func h13URLErr(r *http.Request, err error) error {
	return &url.Error{Op: r.Method, URL: r.URL.String(), Err: err}
}

// Promise 1: transport-level failures are classified as documented.
func TestHostile13ClassifyTransportErrors(t *testing.T) {
	host := "kvtest.vault.azure.net"
	cases := []struct {
		name      string
		err       error
		want      error
		oneTry    bool
		causeType func(error) bool
	}{
		{"dns-temporary", &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "server misbehaving", Name: host, IsTemporary: true}}, kvsecrets.ErrUnavailable, false, nil},
		{"dns-timeout", &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "i/o timeout", Name: host, IsTimeout: true, IsTemporary: true}}, kvsecrets.ErrUnavailable, false, nil},
		{"dns-plain-no-flags", &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "read udp: connection refused", Name: host}}, kvsecrets.ErrUnavailable, false, nil},
		{"dns-notfound", &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}}, kvsecrets.ErrMisconfigured, true,
			func(e error) bool { var d *net.DNSError; return errors.As(e, &d) }},
		{"conn-reset", &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, kvsecrets.ErrUnavailable, false, nil},
		{"conn-refused", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, kvsecrets.ErrUnavailable, false, nil},
		{"unexpected-eof", io.ErrUnexpectedEOF, kvsecrets.ErrUnavailable, false, nil},
		{"eof", io.EOF, kvsecrets.ErrUnavailable, false, nil},
		{"tls-handshake-timeout", h13TimeoutErr{"net/http: TLS handshake timeout"}, kvsecrets.ErrUnavailable, false, nil},
		{"tls-alert-during-handshake-reset", &net.OpError{Op: "remote error", Err: errors.New("tls: handshake failure")}, kvsecrets.ErrUnavailable, false, nil},
		{"x509-unknown-authority", &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}, kvsecrets.ErrMisconfigured, true,
			func(e error) bool { var c *tls.CertificateVerificationError; return errors.As(e, &c) }},
		{"x509-hostname", &tls.CertificateVerificationError{Err: x509.HostnameError{Certificate: &x509.Certificate{}, Host: host}}, kvsecrets.ErrMisconfigured, true, nil},
		{"x509-unknown-authority-bare", x509.UnknownAuthorityError{}, kvsecrets.ErrMisconfigured, true, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				srv := h13InProc(t, nil)
				tr := &h13Transport{inner: srv.ClientOptions().Transport, fn: func(r *http.Request, _ int64) (*http.Response, error) {
					return nil, h13URLErr(r, c.err)
				}}
				co := h13Realistic(srv)
				co.Transport = tr
				p := h13New(t, srv, nil, &kvsecrets.Options{ClientOptions: co})
				defer p.Close()
				t0 := time.Now()
				_, err := p.Get(context.Background(), "S")
				el := time.Since(t0)
				t.Logf("%s: after %v, %d tries: %v", c.name, el, tr.n.Load(), err)
				if !errors.Is(err, c.want) {
					t.Errorf("want %v, got %v", c.want, err)
				}
				if c.want == kvsecrets.ErrUnavailable && (errors.Is(err, kvsecrets.ErrMisconfigured) || errors.Is(err, kvsecrets.ErrUnauthenticated)) {
					t.Errorf("transient error classified as configuration failure: %v", err)
				}
				if c.oneTry {
					if n := tr.n.Load(); n != 1 {
						t.Errorf("configuration failure tried %d times, want 1", n)
					}
					if el > 100*time.Millisecond {
						t.Errorf("configuration failure answered after %v on the fake clock, want at once", el)
					}
					if err != nil && !h13SaysFix(err) {
						t.Errorf("configuration failure does not say what to fix: %q", err)
					}
				} else if el > 15*time.Second {
					t.Errorf("transient cold failure took %v", el)
				}
				if c.causeType != nil && !c.causeType(err) {
					t.Errorf("cause not wrapped: %v", err)
				}
				h13NoValue(t, err)
			})
		})
	}
}

// Promise 1: status codes.
func TestHostile13ClassifyStatuses(t *testing.T) {
	cases := []struct {
		f    kvtest.Fault
		want error
	}{
		{kvtest.Fault{Status: 408, Code: "RequestTimeout", Message: "timeout"}, kvsecrets.ErrUnavailable},
		{kvtest.Fault{Status: 502, Code: "BadGateway", Message: "bad gateway"}, kvsecrets.ErrUnavailable},
		{kvtest.Fault{Status: 504, Code: "GatewayTimeout", Message: "gw timeout"}, kvsecrets.ErrUnavailable},
		{kvtest.Fault{Status: 501, Code: "NotImplemented", Message: "x"}, kvsecrets.ErrUnavailable},
		{kvtest.InternalServerError, kvsecrets.ErrUnavailable},
		{kvtest.ServiceUnavailable, kvsecrets.ErrUnavailable},
		{kvtest.Fault{Status: 400, Code: "BadParameter", Message: "The request URI contains an invalid API version."}, kvsecrets.ErrMisconfigured},
	}
	for _, c := range cases {
		t.Run(fmt.Sprint(c.f.Status), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				srv := h13InProc(t, nil)
				p := h13New(t, srv, nil, nil)
				defer p.Close()
				srv.FailFor(time.Hour, c.f)
				t0 := time.Now()
				_, err := p.Get(context.Background(), "S")
				el := time.Since(t0)
				n := srv.SecretRequests("S")
				t.Logf("%d: %v, %d GETs: %v", c.f.Status, el, n, err)
				if !errors.Is(err, c.want) {
					t.Fatalf("want %v, got %v", c.want, err)
				}
				var re *azcore.ResponseError
				if !errors.As(err, &re) {
					t.Fatalf("errors.As ResponseError failed: %v", err)
				}
				if re.StatusCode != c.f.Status || re.ErrorCode != c.f.Code || re.RawResponse == nil {
					t.Errorf("ResponseError: status %d code %q raw %v", re.StatusCode, re.ErrorCode, re.RawResponse != nil)
				}
				if c.want == kvsecrets.ErrMisconfigured {
					if n != 1 || el > 100*time.Millisecond {
						t.Errorf("400: %d GETs after %v, want one at once", n, el)
					}
					if !h13SaysFix(err) {
						t.Errorf("400 does not say what to fix: %q", err)
					}
				} else if el > 15*time.Second {
					t.Errorf("cold %d took %v", c.f.Status, el)
				}
				h13NoValue(t, err)
			})
		})
	}
}

// Promise 1: TLS verification failure against a real HTTPS server.
func TestHostile13TLSUntrustedRealServer(t *testing.T) {
	srv := kvtest.NewTestServer(t, nil)
	srv.SetSecret("S", h13Value, nil)
	base, ok := srv.HTTPClient().Transport.(*http.Transport)
	if !ok {
		t.Skipf("kvtest transport is %T", srv.HTTPClient().Transport)
	}
	ht := base.Clone()
	ht.TLSClientConfig = ht.TLSClientConfig.Clone()
	ht.TLSClientConfig.RootCAs = x509.NewCertPool() // trusts nothing
	tr := &h13Transport{inner: &http.Client{Transport: ht}}
	co := *srv.ClientOptions()
	co.Transport = tr
	co.Retry = policy.RetryOptions{RetryDelay: 200 * time.Millisecond, MaxRetryDelay: time.Second}
	p, err := kvsecrets.NewProvider(srv.URL(), srv.Credential(), &kvsecrets.Options{ClientOptions: &co})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	t0 := time.Now()
	_, err = p.Get(context.Background(), "S")
	t.Logf("untrusted TLS: %v, %d tries: %v", time.Since(t0), tr.n.Load(), err)
	if !errors.Is(err, kvsecrets.ErrMisconfigured) {
		t.Fatalf("want ErrMisconfigured, got %v", err)
	}
	if tr.n.Load() != 1 {
		t.Errorf("tried %d times", tr.n.Load())
	}
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	if !errors.As(err, &cv) && !errors.As(err, &ua) {
		t.Errorf("cause not wrapped: %v", err)
	}
}

// Promise 1: a real TLS handshake timeout and a real RST are transient.
func TestHostile13RealHandshakeTimeoutAndReset(t *testing.T) {
	for _, mode := range []string{"handshake-timeout", "reset"} {
		t.Run(mode, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			var conns []net.Conn
			done := make(chan struct{})
			go func() {
				defer close(done)
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					if mode == "reset" {
						c.(*net.TCPConn).SetLinger(0)
						c.Close()
					} else {
						conns = append(conns, c)
					}
				}
			}()
			ht := &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "tcp", ln.Addr().String())
				},
				TLSHandshakeTimeout: 150 * time.Millisecond,
			}
			tr := &h13Transport{inner: &http.Client{Transport: ht}}
			co := &azsecrets.ClientOptions{}
			co.Transport = tr
			co.Retry = policy.RetryOptions{RetryDelay: 10 * time.Millisecond, MaxRetryDelay: 50 * time.Millisecond}
			cred := kvtest.NewTenant("", 0).Credential()
			p, err := kvsecrets.NewProvider("https://h13vault.vault.azure.net/", cred, &kvsecrets.Options{ClientOptions: co})
			if err != nil {
				t.Fatal(err)
			}
			_, err = p.Get(context.Background(), "S")
			t.Logf("%s: %d tries: %v", mode, tr.n.Load(), err)
			p.Close()
			ln.Close()
			<-done
			for _, c := range conns {
				c.Close()
			}
			if !errors.Is(err, kvsecrets.ErrUnavailable) || errors.Is(err, kvsecrets.ErrMisconfigured) {
				t.Errorf("want transient ErrUnavailable, got %v", err)
			}
		})
	}
}

// h13LyingCred reports tokens as valid for a day whatever the server says,
// and can be switched to fail.
type h13LyingCred struct {
	srv  *kvtest.Server
	mode atomic.Int32 // 0 good, 1 bogus token, 2 error, 3 ctx error, 4 hang
	n    atomic.Int64
}

func (c *h13LyingCred) GetToken(ctx context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	c.n.Add(1)
	switch c.mode.Load() {
	case 1:
		return azcore.AccessToken{Token: "bogus-token", ExpiresOn: time.Now().Add(24 * time.Hour)}, nil
	case 2:
		return azcore.AccessToken{}, errors.New("ManagedIdentityCredential: no managed identity endpoint is available")
	case 3:
		return azcore.AccessToken{}, fmt.Errorf("ManagedIdentityCredential: IMDS request: %w", context.DeadlineExceeded)
	case 4:
		<-ctx.Done()
		return azcore.AccessToken{}, ctx.Err()
	}
	tok, _ := c.srv.IssueToken()
	return azcore.AccessToken{Token: tok, ExpiresOn: time.Now().Add(24 * time.Hour)}, nil
}

// Promise 1: an expired token is not a configuration failure when a fresh one works.
func TestHostile13ExpiredTokenIsNotUnauthenticated(t *testing.T) {
	t.Run("short-TokenLifetime", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			srv := h13InProc(t, &kvtest.Options{TokenLifetime: 2 * time.Second})
			srv.SetSecret("B", "b", nil)
			p := h13New(t, srv, nil, &kvsecrets.Options{TTL: 10 * time.Second})
			defer p.Close()
			if _, err := p.Get(context.Background(), "S"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Minute)
			if _, err := p.Get(context.Background(), "B"); err != nil {
				t.Errorf("cold read after token expiry: %v", err)
			}
			time.Sleep(time.Minute)
			if _, err := p.Refresh(context.Background(), "S"); err != nil {
				t.Errorf("Refresh after token expiry: %v", err)
			}
			st := p.Stats()
			if st.RefreshFailures != 0 {
				t.Errorf("background refreshes failed %d times across token expiries", st.RefreshFailures)
			}
		})
	})
	t.Run("credential-overstates-expiry", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			srv := h13InProc(t, &kvtest.Options{TokenLifetime: 2 * time.Second})
			srv.SetSecret("B", "b", nil)
			cred := &h13LyingCred{srv: srv}
			p := h13New(t, srv, cred, nil)
			defer p.Close()
			if _, err := p.Get(context.Background(), "S"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Minute)
			if _, err := p.Get(context.Background(), "B"); err != nil {
				t.Errorf("cold read with a server-expired cached token: %v", err)
			}
			if _, err := p.Refresh(context.Background(), "S"); err != nil {
				t.Errorf("Refresh with a server-expired cached token: %v", err)
			}
		})
	})
}

// Promise 1: 401 after a fresh token, and a credential that cannot get one,
// are ErrUnauthenticated, at once; a cached value rides through as stale
// until MaxStale.
func TestHostile13UnauthenticatedClassAndStale(t *testing.T) {
	for _, mode := range []int32{1, 2} {
		t.Run(fmt.Sprint("mode", mode), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				srv := h13InProc(t, &kvtest.Options{TokenLifetime: 2 * time.Second})
				srv.SetSecret("B", "b", nil)
				cred := &h13LyingCred{srv: srv}
				p := h13New(t, srv, cred, &kvsecrets.Options{TTL: time.Minute, MaxStale: 10 * time.Minute})
				defer p.Close()
				if _, err := p.Get(context.Background(), "S"); err != nil {
					t.Fatal(err)
				}
				cred.mode.Store(mode)
				time.Sleep(5 * time.Second) // cached token now rejected by the vault
				t0 := time.Now()
				_, err := p.Get(context.Background(), "B")
				el := time.Since(t0)
				t.Logf("cold: %v: %v", el, err)
				if !errors.Is(err, kvsecrets.ErrUnauthenticated) {
					t.Errorf("want ErrUnauthenticated, got %v", err)
				}
				if el > 100*time.Millisecond {
					t.Errorf("answered after %v, want at once", el)
				}
				if err != nil && !h13SaysFix(err) {
					t.Errorf("does not say what to fix: %q", err)
				}
				if mode == 1 {
					var re *azcore.ResponseError
					if !errors.As(err, &re) || re.StatusCode != 401 || re.RawResponse == nil {
						t.Errorf("401 ResponseError not reachable: %v", err)
					}
				}
				if mode == 2 && (err == nil || !strings.Contains(err.Error(), "no managed identity endpoint")) {
					t.Errorf("credential's cause not wrapped: %v", err)
				}
				// The cached value rides through.
				v, err := p.Get(context.Background(), "S")
				if err != nil || v != h13Value {
					t.Errorf("cached value not served through auth failure: %v", err)
				}
				_, rerr := p.Refresh(context.Background(), "S")
				if !errors.Is(rerr, kvsecrets.ErrUnauthenticated) {
					t.Errorf("Refresh: want ErrUnauthenticated, got %v", rerr)
				}
				h13NoValue(t, rerr)
				time.Sleep(5 * time.Minute)
				if v, err := p.Get(context.Background(), "S"); err != nil || v != h13Value {
					t.Errorf("stale value not served at 5m of 10m MaxStale: %v", err)
				}
				time.Sleep(6 * time.Minute)
				if _, err := p.Get(context.Background(), "S"); err == nil {
					t.Errorf("value served past MaxStale")
				}
			})
		})
	}
}

// Promise 1: a cached value rides through ErrMisconfigured (400) as stale.
func TestHostile13MisconfiguredStaleRideThrough(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := h13InProc(t, nil)
		p := h13New(t, srv, nil, &kvsecrets.Options{TTL: time.Minute, MaxStale: 10 * time.Minute})
		defer p.Close()
		if _, err := p.Get(context.Background(), "S"); err != nil {
			t.Fatal(err)
		}
		srv.FailFor(time.Hour, kvtest.Fault{Status: 400, Code: "BadParameter", Message: "bad api-version"})
		_, err := p.Refresh(context.Background(), "S")
		if !errors.Is(err, kvsecrets.ErrMisconfigured) {
			t.Errorf("Refresh: want ErrMisconfigured, got %v", err)
		}
		time.Sleep(5 * time.Minute)
		if v, err := p.Get(context.Background(), "S"); err != nil || v != h13Value {
			t.Errorf("stale not served at 5m: %v", err)
		}
		time.Sleep(6 * time.Minute)
		if _, err := p.Get(context.Background(), "S"); err == nil {
			t.Errorf("served past MaxStale")
		}
	})
}

// Promise 1: a credential failing with a timeout (a ctx error) is transient,
// not "fix the credential".
func TestHostile13CredentialCtxErrors(t *testing.T) {
	t.Run("returns-DeadlineExceeded", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			srv := h13InProc(t, nil)
			cred := &h13LyingCred{srv: srv}
			cred.mode.Store(3)
			p := h13New(t, srv, cred, nil)
			defer p.Close()
			_, err := p.Get(context.Background(), "S")
			t.Logf("%v", err)
			if errors.Is(err, kvsecrets.ErrUnauthenticated) || !errors.Is(err, kvsecrets.ErrUnavailable) {
				t.Errorf("credential timeout: want transient ErrUnavailable, got %v", err)
			}
		})
	})
	t.Run("hangs-until-FetchTimeout", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			srv := h13InProc(t, nil)
			cred := &h13LyingCred{srv: srv}
			cred.mode.Store(4)
			p := h13New(t, srv, cred, nil)
			defer p.Close()
			t0 := time.Now()
			_, err := p.Get(context.Background(), "S")
			el := time.Since(t0)
			t.Logf("%v: %v", el, err)
			if errors.Is(err, kvsecrets.ErrUnauthenticated) || !errors.Is(err, kvsecrets.ErrUnavailable) {
				t.Errorf("hanging credential: want ErrUnavailable, got %v", err)
			}
			if el > 31*time.Second {
				t.Errorf("took %v, beyond FetchTimeout", el)
			}
		})
	})
	t.Run("hangs-caller-deadline", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			srv := h13InProc(t, nil)
			cred := &h13LyingCred{srv: srv}
			cred.mode.Store(4)
			p := h13New(t, srv, cred, nil)
			defer p.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			t0 := time.Now()
			_, err := p.Get(ctx, "S")
			el := time.Since(t0)
			if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, kvsecrets.ErrUnauthenticated) || el > 3*time.Second+time.Millisecond {
				t.Errorf("caller deadline: %v after %v", err, el)
			}
		})
	})
}

// Promise 1: errors.As on remembered and fresh 404 keeps RawResponse.
func TestHostile13ResponseErrorOnRememberedMiss(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := h13InProc(t, nil)
		p := h13New(t, srv, nil, nil)
		defer p.Close()
		for i := 0; i < 2; i++ {
			_, err := p.Get(context.Background(), "Missing")
			var re *azcore.ResponseError
			if !errors.Is(err, kvsecrets.ErrNotFound) || !errors.As(err, &re) || re.StatusCode != 404 || re.ErrorCode == "" || re.RawResponse == nil {
				t.Errorf("read %d: %v (re=%+v)", i, err, re)
			}
		}
	})
}

// Promise 2: cold reads during an outage fail in seconds on every path.
func TestHostile13ColdOutageFailsInSeconds(t *testing.T) {
	type cfg struct {
		S string `keyvault:"S"`
	}
	ops := map[string]func(p *kvsecrets.Provider, ver string) error{
		"Get": func(p *kvsecrets.Provider, _ string) error { _, err := p.Get(context.Background(), "S"); return err },
		"GetSecret": func(p *kvsecrets.Provider, _ string) error {
			_, err := p.GetSecret(context.Background(), "S")
			return err
		},
		"GetVersion": func(p *kvsecrets.Provider, v string) error {
			_, err := p.GetVersion(context.Background(), "S", v)
			return err
		},
		"Preload":       func(p *kvsecrets.Provider, _ string) error { return p.Preload(context.Background(), "S") },
		"PreloadVerify": func(p *kvsecrets.Provider, _ string) error { return p.PreloadVerify(context.Background(), "S") },
		"Verify": func(p *kvsecrets.Provider, _ string) error {
			_, err := p.Verify(context.Background(), "S", h13Value)
			return err
		},
		"Refresh": func(p *kvsecrets.Provider, _ string) error {
			_, err := p.Refresh(context.Background(), "S")
			return err
		},
		"Resolve": func(p *kvsecrets.Provider, _ string) error {
			_, err := p.Resolve(context.Background(), "S")
			return err
		},
		"ResolveURIVersion": func(p *kvsecrets.Provider, v string) error {
			_, err := p.Resolve(context.Background(), "https://kvtest.vault.azure.net/secrets/S/"+v)
			return err
		},
		"ResolveEnv": func(p *kvsecrets.Provider, _ string) error {
			_, err := p.ResolveEnv(context.Background(), []string{"X=@Microsoft.KeyVault(SecretUri=https://kvtest.vault.azure.net/secrets/S/)"})
			return err
		},
		"Load": func(p *kvsecrets.Provider, _ string) error { var c cfg; return p.Load(context.Background(), &c) },
	}
	faults := map[string]kvtest.Fault{"503": kvtest.ServiceUnavailable, "500": kvtest.InternalServerError, "drop": kvtest.DropConnection, "reset-mid-body": kvtest.ResetMidBody}
	for fn, f := range faults {
		for on, op := range ops {
			t.Run(fn+"/"+on, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					srv := h13InProc(t, nil)
					vers, _ := srv.Versions("S")
					p := h13New(t, srv, nil, nil)
					defer p.Close()
					srv.FailFor(time.Hour, f)
					t0 := time.Now()
					err := op(p, vers[0])
					el := time.Since(t0)
					t.Logf("%v: %v", el, err)
					if !errors.Is(err, kvsecrets.ErrUnavailable) {
						t.Errorf("want ErrUnavailable, got %v", err)
					}
					if el > 15*time.Second {
						t.Errorf("cold %s %s took %v on the fake clock (FetchTimeout is 30s), want seconds", fn, on, el)
					}
					h13NoValue(t, err)
				})
			})
		}
	}
}

// Promise 2: 429 is waited for within FetchTimeout, on every cold path.
func TestHostile13ColdThrottleWaitedWithinFetchTimeout(t *testing.T) {
	for _, d := range []time.Duration{8 * time.Second, time.Hour} {
		for _, on := range []string{"Get", "Preload", "Verify", "GetVersion"} {
			t.Run(fmt.Sprint(d, "/", on), func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					srv := h13InProc(t, nil)
					vers, _ := srv.Versions("S")
					p := h13New(t, srv, nil, nil)
					defer p.Close()
					srv.FailFor(d, kvtest.Throttled)
					t0 := time.Now()
					var err error
					switch on {
					case "Get":
						_, err = p.Get(context.Background(), "S")
					case "Preload":
						err = p.Preload(context.Background(), "S")
					case "Verify":
						_, err = p.Verify(context.Background(), "S", h13Value)
					case "GetVersion":
						_, err = p.GetVersion(context.Background(), "S", vers[0])
					}
					el := time.Since(t0)
					t.Logf("%v: %v", el, err)
					if d < time.Minute {
						if err != nil || el < d {
							t.Errorf("throttle of %v: want the value after it lifts, got %v after %v", d, err, el)
						}
					} else {
						if !errors.Is(err, kvsecrets.ErrUnavailable) || el < 25*time.Second || el > 31*time.Second {
							t.Errorf("endless throttle: want ErrUnavailable at ~FetchTimeout, got %v after %v", err, el)
						}
					}
				})
			})
		}
	}
}

// Promise 3: an EventGridHandler that could never accept a delivery panics
// at construction, naming the fix.
func TestHostile13EventGridUnauthenticatedPanics(t *testing.T) {
	srv := h13InProc(t, nil)
	p := h13New(t, srv, nil, nil)
	defer p.Close()
	panics := map[string]*kvsecrets.EventGridOptions{
		"nil":                  nil,
		"zero":                 {},
		"empty-secret":         {SharedSecret: ""},
		"empty-secret-param":   {SharedSecret: "", SecretParam: "code"},
		"empty-with-spread":    {SharedSecret: "", Spread: time.Second, CoalesceWindow: time.Second},
		"empty-with-callbacks": {OnNearExpiry: func(kvsecrets.ExpiryEvent) {}},
	}
	for n, o := range panics {
		t.Run(n, func(t *testing.T) {
			var msg string
			func() {
				defer func() {
					if r := recover(); r != nil {
						msg = fmt.Sprint(r)
					}
				}()
				p.EventGridHandler(o)
			}()
			t.Logf("panic: %q", msg)
			if msg == "" {
				t.Fatalf("EventGridHandler(%s) did not panic", n)
			}
			if !strings.Contains(msg, "SharedSecret") && !strings.Contains(msg, "AllowUnauthenticated") && !strings.Contains(msg, "Authorize") {
				t.Errorf("panic message does not name the fix: %q", msg)
			}
		})
	}
	ok := map[string]*kvsecrets.EventGridOptions{
		"secret":    {SharedSecret: "k"},
		"authorize": {Authorize: func(*http.Request) error { return nil }},
		"allow":     {AllowUnauthenticated: true},
		"both":      {SharedSecret: "k", Authorize: func(*http.Request) error { return nil }},
	}
	for n, o := range ok {
		t.Run("ok-"+n, func(t *testing.T) {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("EventGridHandler(%s) panicked: %v", n, r)
				}
			}()
			if p.EventGridHandler(o) == nil {
				t.Errorf("nil handler")
			}
		})
	}
}

// Promise 4: RefreshAt + RefreshJitter above 1 is refused, jitter set or defaulted.
func TestHostile13RefreshFractionValidation(t *testing.T) {
	srv := h13InProc(t, nil)
	refused := map[string]kvsecrets.Options{
		"at0.95-default-jitter": {RefreshAt: 0.95},
		"at0.86-default-jitter": {RefreshAt: 0.86},
		"at1-default-jitter":    {RefreshAt: 1},
		"at0.9-jitter0.2":       {RefreshAt: 0.9, RefreshJitter: 0.2},
		"default-at-jitter0.3":  {RefreshJitter: 0.3},
		"jitter1.5":             {RefreshAt: 0.1, RefreshJitter: 1.5},
		"at-NaN":                {RefreshAt: math.NaN()},
		"jitter-NaN":            {RefreshJitter: math.NaN()},
		"jitter-Inf":            {RefreshJitter: math.Inf(1)},
		"at-Inf":                {RefreshAt: math.Inf(1)},
		"jitter-negative":       {RefreshJitter: -0.1},
		"at-1.2":                {RefreshAt: 1.2, DisableJitter: true},
	}
	for n, o := range refused {
		t.Run(n, func(t *testing.T) {
			o.ClientOptions = srv.ClientOptions()
			p, err := kvsecrets.NewProvider(srv.URL(), srv.Credential(), &o)
			if err == nil {
				p.Close()
				t.Fatalf("NewProvider accepted %+v", o)
			}
			t.Logf("%v", err)
			if !strings.HasPrefix(err.Error(), "kvsecrets:") {
				t.Errorf("error does not start with kvsecrets: %q", err)
			}
			if !strings.Contains(err.Error(), "Refresh") {
				t.Errorf("error does not name the option to fix: %q", err)
			}
		})
	}
	accepted := map[string]kvsecrets.Options{
		"defaults":             {},
		"at0.85-default":       {RefreshAt: 0.85},
		"at0.5-jitter0.5":      {RefreshAt: 0.5, RefreshJitter: 0.5},
		"at0.9-jitter0.1":      {RefreshAt: 0.9, RefreshJitter: 0.1},
		"at0.7-jitter0.3":      {RefreshAt: 0.7, RefreshJitter: 0.3},
		"at0.95-jitter0.05":    {RefreshAt: 0.95, RefreshJitter: 0.05},
		"at0.95-disable":       {RefreshAt: 0.95, DisableJitter: true},
		"at1-disable":          {RefreshAt: 1, DisableJitter: true},
		"default-at-jitter.25": {RefreshJitter: 0.25},
	}
	for n, o := range accepted {
		t.Run("ok-"+n, func(t *testing.T) {
			o.ClientOptions = srv.ClientOptions()
			p, err := kvsecrets.NewProvider(srv.URL(), srv.Credential(), &o)
			if err != nil {
				t.Fatalf("NewProvider refused a valid combination: %v", err)
			}
			p.Close()
		})
	}
}

// Promise 5: ResolveEnv and Load name the secret, the vault and the deadline.
func TestHostile13ResolveEnvLoadDeadlineErrors(t *testing.T) {
	type cfg struct {
		DB string `keyvault:"DbPassword"`
	}
	for _, which := range []string{"ResolveEnv", "Load", "ResolveEnv-missing", "Load-missing"} {
		t.Run(which, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				srv := h13InProc(t, nil)
				srv.SetSecret("DbPassword", h13Value, nil)
				p := h13New(t, srv, nil, nil)
				defer p.Close()
				missing := strings.HasSuffix(which, "-missing")
				if !missing {
					srv.SetLatency(time.Hour)
				} else {
					srv.DeleteSecret("DbPassword")
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				var err error
				if strings.HasPrefix(which, "ResolveEnv") {
					_, err = p.ResolveEnv(ctx, []string{"DB_PASSWORD=@Microsoft.KeyVault(SecretUri=https://kvtest.vault.azure.net/secrets/DbPassword/)"})
				} else {
					var c cfg
					err = p.Load(ctx, &c)
				}
				t.Logf("%q", err)
				if err == nil {
					t.Fatal("no error")
				}
				msg := err.Error()
				for _, want := range []string{"DbPassword", "kvtest.vault.azure.net"} {
					if !strings.Contains(msg, want) {
						t.Errorf("error does not name %q: %q", want, msg)
					}
				}
				if strings.HasPrefix(which, "ResolveEnv") && !strings.Contains(msg, "DB_PASSWORD") {
					t.Errorf("error does not name the variable: %q", msg)
				}
				if !missing {
					if !strings.Contains(strings.ToLower(msg), "deadline") && !strings.Contains(strings.ToLower(msg), "timed out") {
						t.Errorf("error does not say the deadline passed: %q", msg)
					}
					if strings.Count(msg, "deadline passed") > 1 || strings.Count(msg, "kvsecrets: secret") > 1 {
						t.Errorf("error repeats itself: %q", msg)
					}
					if !errors.Is(err, context.DeadlineExceeded) {
						t.Errorf("error does not wrap context.DeadlineExceeded: %v", err)
					}
				}
				h13NoValue(t, err)
			})
		})
	}
}

// Promise 5: kvenv's errors name the variable, secret, vault and deadline.
func TestHostile13KvenvErrors(t *testing.T) {
	if testing.Short() {
		t.Skip("builds kvenv")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "kvenv")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/kvenv").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	srv := kvtest.NewTestServer(t, nil)
	srv.SetSecret("DbPassword", h13Value, nil)
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, srv.CACertPEM(), 0o600)
	tok, _ := srv.IssueToken()
	addr := srv.Addr()
	run := func(name string) string {
		cmd := exec.Command(bin, "-vault", srv.LoopbackURL(), "-ca-file", ca, "-token-env", "H13_TOKEN",
			"-no-challenge-verification", "-timeout", "1s", "--", "true")
		cmd.Env = append(os.Environ(), "H13_TOKEN="+tok,
			"DB_PASSWORD=@Microsoft.KeyVault(SecretUri="+srv.LoopbackURL()+"secrets/"+name+"/)")
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Errorf("kvenv succeeded for %s: %s", name, out)
		}
		return string(out)
	}
	// Sanity: a working resolution.
	{
		cmd := exec.Command(bin, "-vault", srv.LoopbackURL(), "-ca-file", ca, "-token-env", "H13_TOKEN",
			"-no-challenge-verification", "-timeout", "5s", "--", "sh", "-c", "test \"$DB_PASSWORD\" = "+h13Value)
		cmd.Env = append(os.Environ(), "H13_TOKEN="+tok,
			"DB_PASSWORD=@Microsoft.KeyVault(SecretUri="+srv.LoopbackURL()+"secrets/DbPassword/)")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("kvenv sanity run: %v %s", err, out)
		}
	}
	out := run("Missing")
	t.Logf("missing: %s", out)
	for _, want := range []string{"DB_PASSWORD", "Missing", addr} {
		if !strings.Contains(out, want) {
			t.Errorf("missing-secret error does not name %q: %s", want, out)
		}
	}
	srv.SetLatency(10 * time.Second)
	t0 := time.Now()
	out = run("DbPassword")
	el := time.Since(t0)
	t.Logf("slow (%v): %s", el, out)
	for _, want := range []string{"DB_PASSWORD", "DbPassword", addr} {
		if !strings.Contains(out, want) {
			t.Errorf("deadline error does not name %q: %s", want, out)
		}
	}
	lo := strings.ToLower(out)
	if !strings.Contains(lo, "deadline") && !strings.Contains(lo, "timed out") && !strings.Contains(lo, "timeout") {
		t.Errorf("deadline error does not say the deadline passed: %s", out)
	}
	if strings.Count(out, "deadline passed") > 1 {
		t.Errorf("kvenv error repeats itself: %s", out)
	}
	if el > 5*time.Second {
		t.Errorf("kvenv -timeout 1s took %v", el)
	}
	if strings.Contains(out, h13Value) || strings.Contains(out, tok) {
		t.Errorf("kvenv output leaks a value or the token")
	}
}
