package kvsecrets

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
)

// Sentinel errors. Errors returned by a [Provider] wrap one of them and, when
// the vault answered, the *azcore.ResponseError, so both errors.Is and
// errors.As work. Messages name the secret, never its value.
var (
	// ErrNotFound: the secret or version does not exist or was deleted
	// (404 SecretNotFound).
	ErrNotFound = errors.New("kvsecrets: secret not found")
	// ErrInvalidName: a name is not 1–127 characters of 0-9, a-z, A-Z and
	// '-'. Such names never reach the network.
	ErrInvalidName = errors.New("kvsecrets: invalid secret name")
	// ErrInvalidVersion: a version is not 1–64 letters and digits. It wraps
	// ErrInvalidName: a bad version makes a bad secret identifier.
	ErrInvalidVersion = fmt.Errorf("kvsecrets: invalid secret version (%w)", ErrInvalidName)
	// ErrDisabled: the secret is disabled (403 with inner code SecretDisabled).
	ErrDisabled = errors.New("kvsecrets: secret disabled")
	// ErrForbidden: the caller's identity may not read the secret (403
	// ForbiddenByRbac, AccessDenied or any other 403).
	ErrForbidden = errors.New("kvsecrets: access forbidden")
	// ErrUnavailable: the vault could not be read (network error, timeout,
	// 408/429/5xx) and no usable cached value exists.
	ErrUnavailable = errors.New("kvsecrets: vault unavailable")
	// ErrUnauthenticated: the credential could not get a token (an
	// azidentity credential unavailable or failing to authenticate), or the
	// vault refused the token it got (401 after a fresh token). Fix the
	// credential or the identity's tenant; retrying will not help.
	ErrUnauthenticated = errors.New("kvsecrets: authentication failed")
	// ErrMisconfigured: the vault cannot be reached as configured: its host
	// does not resolve, its TLS certificate is not trusted, or it answered
	// 400 to the request. Fix the vault URL, the trusted CAs or
	// Options.ClientOptions; retrying will not help.
	ErrMisconfigured = errors.New("kvsecrets: vault misconfigured")
	// ErrExpired: the secret's exp has passed and Options.EnforceValidity is set.
	ErrExpired = errors.New("kvsecrets: secret expired")
	// ErrNotYetValid: the secret's nbf is in the future and
	// Options.EnforceValidity is set.
	ErrNotYetValid = errors.New("kvsecrets: secret not yet valid")
	// ErrClosed: the Provider was closed.
	ErrClosed = errors.New("kvsecrets: provider closed")
)

// SecretError is the error type for failures concerning one secret. It
// unwraps to both the sentinel (ErrNotFound, …) and the cause (often an
// *azcore.ResponseError), and its message holds the secret's name and the
// service's codes, never a value.
type SecretError struct {
	Name    string // the secret's name as the caller wrote it
	Version string // the version asked for; empty for the latest
	Kind    error  // the sentinel: ErrNotFound, ErrDisabled, …
	Err     error  // the cause; may be nil
	detail  string // short human detail, e.g. "404 SecretNotFound"
}

// Error implements error.
func (e *SecretError) Error() string {
	var b strings.Builder
	b.WriteString("kvsecrets: secret ")
	b.WriteString(strconv.Quote(e.Name))
	if e.Version != "" {
		b.WriteString(" version ")
		b.WriteString(strconv.Quote(e.Version))
	}
	b.WriteString(": ")
	b.WriteString(strings.TrimPrefix(e.Kind.Error(), "kvsecrets: "))
	detail := e.detail
	if a, ok := e.Err.(*vaultAnswer); ok && detail == "" {
		detail = a.detail()
		msg := a.readMessage() // the vault's own words, for reads only
		switch e.Kind {
		case ErrUnauthenticated:
			detail += ": the vault refused a fresh token; check the credential's identity, its tenant and its access to the vault"
			if msg != "" {
				detail += " (" + msg + ")"
			}
		case ErrMisconfigured:
			if msg != "" {
				detail += ": " + msg
			}
			detail += "; check the vault URL and Options.ClientOptions (API version)"
		}
	}
	if detail != "" {
		b.WriteString(" (")
		b.WriteString(detail)
		b.WriteString(")")
	}
	return b.String()
}

// Unwrap returns the sentinel and the cause.
func (e *SecretError) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// vaultAnswer is what an error keeps of the vault's answer: its status,
// error codes and message, and not the response with its request, headers
// and body, so that a remembered miss costs a few hundred bytes. The
// message is kept as a template shared by every name (Key Vault's 404
// message differs only by the name). errors.As turns a vaultAnswer into an
// *azcore.ResponseError carrying a response made of those parts.
type vaultAnswer struct {
	name    string
	version string
	code    string  // error.code
	inner   string  // error.innererror.code
	message string  // error.message, with the secret's name as msgName
	vault   *string // https://host/ of the Provider that asked, shared
	waitMS  int32   // the answer's Retry-After, if any
	status  int16
	method  uint8 // index in methods
}

// methods are the request methods a vaultAnswer names.
var methods = [...]string{http.MethodGet, http.MethodPut, http.MethodPatch, http.MethodPost, http.MethodDelete}

// msgName stands for the secret's name in a message template.
const msgName = "\x00"

// maxMessage bounds the message kept from an error body.
const maxMessage = 512

// answerOf keeps the essentials of re, an answer to a request for name.
func answerOf(re *azcore.ResponseError, vault, name, version string) *vaultAnswer {
	a := &vaultAnswer{status: int16(min(max(re.StatusCode, 0), 999)), code: intern(re.ErrorCode), vault: internPtr(vault),
		name: name, version: version, waitMS: int32(min(retryAfter(re.RawResponse), maxRetryAfter) / time.Millisecond)}
	if re.RawResponse != nil {
		if r := re.RawResponse.Request; r != nil {
			for i, m := range methods {
				if r.Method == m {
					a.method = uint8(i)
				}
			}
		}
		code, inner, msg := errorBody(re)
		if a.code == "" {
			a.code = intern(code)
		}
		a.inner = intern(inner)
		if len(msg) > maxMessage {
			msg = msg[:maxMessage]
		}
		if name != "" {
			msg = strings.ReplaceAll(msg, name, msgName)
		}
		a.message = intern(msg)
	}
	return a
}

// interned holds strings that many errors repeat (codes, message
// templates), up to maxInterned of them.
var (
	interned    sync.Map
	internedLen atomic.Int32
)

const maxInterned = 1024

// internPtr returns a pointer to a shared copy of s, or to a private
// one once the table is full.
func internPtr(s string) *string {
	if v, ok := internedPtrs.Load(s); ok {
		return v.(*string)
	}
	c := strings.Clone(s)
	if internedLen.Load() >= maxInterned {
		return &c
	}
	v, loaded := internedPtrs.LoadOrStore(c, &c)
	if !loaded {
		internedLen.Add(1)
	}
	return v.(*string)
}

var internedPtrs sync.Map

// intern returns a shared copy of s, or a private one once the table is
// full.
func intern(s string) string {
	if s == "" {
		return ""
	}
	if v, ok := interned.Load(s); ok {
		return v.(string)
	}
	s = strings.Clone(s)
	if internedLen.Load() >= maxInterned {
		return s
	}
	if v, loaded := interned.LoadOrStore(s, s); loaded {
		return v.(string)
	}
	internedLen.Add(1)
	return s
}

// detail is the short form in a SecretError's message: "404
// SecretNotFound", "403 Forbidden/SecretDisabled".
func (a *vaultAnswer) detail() string {
	d := strconv.Itoa(int(a.status))
	if a.code != "" {
		d += " " + a.code
	}
	if a.inner != "" {
		d += "/" + a.inner
	}
	return d
}

// Error describes the answer: status, codes and the service's message.
func (a *vaultAnswer) Error() string {
	d := a.detail()
	if m := a.readMessage(); m != "" {
		d += ": " + m
	}
	return d
}

// readMessage is the vault's message for an answer to a read, "" for a
// write: a read sends no value the vault could echo back, a write
// (Rotate) does.
func (a *vaultAnswer) readMessage() string {
	if a.message == "" || methods[a.method] != http.MethodGet {
		return ""
	}
	return strings.ReplaceAll(a.message, msgName, a.name)
}

// As makes errors.As find an *azcore.ResponseError: a new one each time,
// with a response made of the kept parts (status, codes and message in
// Key Vault's error body, its Retry-After, and the request's method and
// URL).
func (a *vaultAnswer) As(target any) bool {
	t, ok := target.(**azcore.ResponseError)
	if !ok {
		return false
	}
	var doc struct {
		Error struct {
			Code       string `json:"code,omitempty"`
			Message    string `json:"message,omitempty"`
			InnerError *struct {
				Code string `json:"code"`
			} `json:"innererror,omitempty"`
		} `json:"error"`
	}
	doc.Error.Code = a.code
	doc.Error.Message = strings.ReplaceAll(a.message, msgName, a.name)
	if a.inner != "" {
		doc.Error.InnerError = &struct {
			Code string `json:"code"`
		}{a.inner}
	}
	body, _ := json.Marshal(doc)
	path := "secrets/" + a.name
	if a.version != "" {
		path += "/" + a.version
	}
	u, err := url.Parse(*a.vault + path)
	if err != nil {
		u = &url.URL{}
	}
	status := int(a.status)
	resp := &http.Response{
		StatusCode: status, Status: strconv.Itoa(status) + " " + http.StatusText(status),
		Header: http.Header{"Content-Type": {"application/json; charset=utf-8"}},
		Body:   io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body)),
		Request: &http.Request{Method: methods[a.method], URL: u, Header: http.Header{}},
	}
	if wait := time.Duration(a.waitMS) * time.Millisecond; wait > 0 {
		resp.Header.Set("Retry-After", strconv.FormatInt(int64((wait+time.Second-1)/time.Second), 10))
	}
	re := &azcore.ResponseError{ErrorCode: a.code, StatusCode: status, RawResponse: resp}
	_ = re.Error() // makes and caches the message while re is ours alone
	*t = re
	return true
}

// failure is the classification of a fetch error.
type failure struct {
	err           *SecretError
	authoritative bool          // the vault said no: stop serving at once
	retryAfter    time.Duration // from a 429/503's headers, zero if none
}

// classify maps an error from the SDK to a sentinel. Only answers from the
// service about the secret itself (404, 403) are authoritative; everything
// else leaves a cached value in place. Configuration failures (a
// credential, a 401, TLS trust, a host that does not resolve, a 400) are
// told apart from outages, so that the error says what to fix.
func classify(vault, name, version string, err error) failure {
	se := &SecretError{Name: name, Version: version, Err: err}
	if errors.Is(err, errProviderClosed) {
		se.Kind = ErrClosed
		return failure{err: se}
	}
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		se.Kind = ErrUnavailable
		se.detail = transportDetail(err)
		var te *tokenError
		switch {
		case errors.As(err, &te):
			se.Kind = ErrUnauthenticated
			se.detail = "the credential could not get a token: " + transportDetail(te.err)
		case configTransport(err) != "":
			se.Kind = ErrMisconfigured
			se.detail = configTransport(err) + ": " + se.detail
		}
		return failure{err: se}
	}
	a := answerOf(re, vault, name, version)
	inner := a.inner
	se.Err = a // not re: it holds the whole response and its request
	switch re.StatusCode {
	case http.StatusNotFound:
		se.Kind = ErrNotFound
		return failure{err: se, authoritative: true}
	case http.StatusForbidden:
		se.Kind = ErrForbidden
		if inner == "SecretDisabled" {
			se.Kind = ErrDisabled
		}
		return failure{err: se, authoritative: true}
	case http.StatusUnauthorized:
		// azsecrets answers the challenge and asks for a fresh token once;
		// a 401 that reaches here came after it.
		se.Kind = ErrUnauthenticated
		return failure{err: se}
	case http.StatusBadRequest:
		se.Kind = ErrMisconfigured
		return failure{err: se}
	}
	se.Kind = ErrUnavailable
	return failure{err: se, retryAfter: retryAfter(re.RawResponse)}
}

// configTransport names a transport failure that retrying cannot fix: the
// vault's TLS certificate is not trusted, or its host does not resolve.
// It returns "" for the others.
func configTransport(err error) string {
	var (
		verify   *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		dns      *net.DNSError
	)
	switch {
	case errors.As(err, &verify), errors.As(err, &unknown), errors.As(err, &hostname), errors.As(err, &invalid):
		return "TLS verification failed: check the vault URL and the CAs the client trusts"
	case errors.As(err, &dns) && dns.IsNotFound:
		return "the vault's host does not resolve: check the vault URL"
	}
	return ""
}

// tokenError marks a failure of the Provider's credential to get a token.
type tokenError struct{ err error }

func (e *tokenError) Error() string { return e.err.Error() }
func (e *tokenError) Unwrap() error { return e.err }

// NonRetriable tells azcore's retry policy not to retry: a credential
// that failed once will fail again.
func (e *tokenError) NonRetriable() {}

// markedCredential marks its credential's failures as tokenErrors, so that
// classify can tell them from the network's.
type markedCredential struct{ azcore.TokenCredential }

func (c markedCredential) GetToken(ctx context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	tok, err := c.TokenCredential.GetToken(ctx, o)
	if err != nil && ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		// A credential that timed out (an identity endpoint that did not
		// answer) is an outage, not a configuration to fix.
		err = &tokenError{err}
	}
	return tok, err
}

// nonRetriable marks a transport failure that retrying cannot fix, for
// azcore's retry policy.
type nonRetriable struct{ error }

func (e nonRetriable) Unwrap() error { return e.error }
func (nonRetriable) NonRetriable()   {}

// configFailFast is a per-try policy: a TLS verification failure or a host
// that does not resolve is not retried by the SDK (it would retry it for
// about 9 s as if it were an outage).
type configFailFast struct{}

func (configFailFast) Do(req *policy.Request) (*http.Response, error) {
	resp, err := req.Next()
	if err != nil && configTransport(err) != "" {
		return resp, nonRetriable{err}
	}
	return resp, err
}

// transportDetail describes a non-HTTP failure briefly: a timeout, a
// cancellation, or the error's own text. Errors from the network stack and
// the credential never carry secret values.
func transportDetail(err error) string {
	switch {
	case errors.Is(err, errFetchTimeout):
		return "timed out"
	}
	msg := err.Error()
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	const max = 200
	if len(msg) > max {
		msg = msg[:max] + "…"
	}
	return msg
}

var (
	errFetchTimeout   = errors.New("kvsecrets: fetch timed out")
	errProviderClosed = errors.New("kvsecrets: provider closing")
)

// errorBody returns error.code, error.innererror.code and error.message
// from a Key Vault error body, or "" for each it lacks.
func errorBody(re *azcore.ResponseError) (code, inner, message string) {
	if re.RawResponse == nil || re.RawResponse.Body == nil {
		return "", "", ""
	}
	body, err := runtime.Payload(re.RawResponse)
	if err != nil || len(body) == 0 {
		return "", "", ""
	}
	var doc struct {
		Error struct {
			Code       string `json:"code"`
			Message    string `json:"message"`
			InnerError *struct {
				Code string `json:"code"`
			} `json:"innererror"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &doc) != nil {
		return "", "", ""
	}
	if doc.Error.InnerError != nil {
		inner = doc.Error.InnerError.Code
	}
	return doc.Error.Code, inner, doc.Error.Message
}

// retryAfter reads the delay a throttling or unavailable answer asks for, in
// the headers azcore honours: retry-after-ms, x-ms-retry-after-ms and
// Retry-After (seconds or an HTTP date).
func retryAfter(resp *http.Response) time.Duration {
	if resp == nil {
		return 0
	}
	for _, h := range []string{"Retry-After-Ms", "X-Ms-Retry-After-Ms"} {
		if v := resp.Header.Get(h); v != "" {
			if ms, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil && ms > 0 {
				return time.Duration(ms) * time.Millisecond
			}
		}
	}
	v := strings.TrimSpace(resp.Header.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		if s > 0 {
			return time.Duration(s) * time.Second
		}
		return 0
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return d
		}
	}
	return 0
}
