package kvsecrets

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
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
	// 408/429/5xx, credential failure) and no usable cached value exists.
	ErrUnavailable = errors.New("kvsecrets: vault unavailable")
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
	if e.detail != "" {
		b.WriteString(" (")
		b.WriteString(e.detail)
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

// failure is the classification of a fetch error.
type failure struct {
	err           *SecretError
	authoritative bool          // the vault said no: stop serving at once
	retryAfter    time.Duration // from a 429/503's headers, zero if none
}

// classify maps an error from the SDK to a sentinel. Only answers from the
// service about the secret itself (404, 403) are authoritative; everything
// else is transient and leaves a cached value in place.
func classify(name, version string, err error) failure {
	se := &SecretError{Name: name, Version: version, Err: err}
	if errors.Is(err, errProviderClosed) {
		se.Kind = ErrClosed
		return failure{err: se}
	}
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		se.Kind = ErrUnavailable
		se.detail = transportDetail(err)
		return failure{err: se}
	}
	inner := innerCode(re)
	se.detail = strconv.Itoa(re.StatusCode)
	if re.ErrorCode != "" {
		se.detail += " " + re.ErrorCode
	}
	if inner != "" {
		se.detail += "/" + inner
	}
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
	}
	se.Kind = ErrUnavailable
	return failure{err: se, retryAfter: retryAfter(re.RawResponse)}
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

// innerCode returns error.innererror.code from a Key Vault error body, or "".
func innerCode(re *azcore.ResponseError) string {
	if re.RawResponse == nil || re.RawResponse.Body == nil {
		return ""
	}
	body, err := runtime.Payload(re.RawResponse)
	if err != nil || len(body) == 0 {
		return ""
	}
	var doc struct {
		Error struct {
			InnerError *struct {
				Code string `json:"code"`
			} `json:"innererror"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &doc) != nil || doc.Error.InnerError == nil {
		return ""
	}
	return doc.Error.InnerError.Code
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
