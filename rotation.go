package kvsecrets

import (
	"context"
	cryptorand "crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
)

// RotateOptions are the optional settings of [Provider.Rotate].
type RotateOptions struct {
	// Validity sets the new version's expiry (exp) to now + Validity.
	// Default 180 days, the example Key Vault's guidance gives.
	Validity time.Duration
	// NotBefore sets the new version's nbf; zero for none.
	NotBefore time.Time
	// ContentType is stored with the new version (at most 255 characters).
	ContentType string
	// Tags are stored with the new version.
	Tags map[string]string
}

// maxValueBytes is Key Vault's limit on a secret value.
const maxValueBytes = 25 * 1024

// Rotate writes value as a new version of the named secret, with an expiry
// (RotateOptions.Validity, default 180 days from now), and makes it the
// cached value at once: Get returns it, Verify accepts it (and, during the
// overlap, the version it replaces), and Options.OnRotate fires. The write
// runs on ctx. Writing needs the "Key Vault Secrets Officer" role; a 403
// says so. The value never appears in errors or logs.
func (p *Provider) Rotate(ctx context.Context, name, value string, opts *RotateOptions) (Secret, error) {
	if p.closed.Load() {
		return Secret{}, &SecretError{Name: name, Kind: ErrClosed}
	}
	if opts == nil {
		opts = &RotateOptions{}
	}
	if err := checkName(name); err != nil {
		return Secret{}, err
	}
	switch {
	case value == "":
		return Secret{}, fmt.Errorf("kvsecrets: Rotate %q: the value is empty", name)
	case len(value) > maxValueBytes:
		return Secret{}, fmt.Errorf("kvsecrets: Rotate %q: the value is %d bytes; Key Vault's limit is %d", name, len(value), maxValueBytes)
	case len(opts.ContentType) > 255:
		return Secret{}, fmt.Errorf("kvsecrets: Rotate %q: ContentType is %d characters; the limit is 255", name, len(opts.ContentType))
	case opts.Validity < 0:
		return Secret{}, fmt.Errorf("kvsecrets: Rotate %q: Validity is negative (%v)", name, opts.Validity)
	}
	validity := opts.Validity
	if validity == 0 {
		validity = DefaultRotateValidity
	}
	e, err := p.entryFor(name)
	if err != nil {
		return Secret{}, err
	}
	exp := time.Now().Add(validity).Truncate(time.Second)
	params := azsecrets.SetSecretParameters{Value: &value, SecretAttributes: &azsecrets.SecretAttributes{Expires: &exp}}
	if !opts.NotBefore.IsZero() {
		nbf := opts.NotBefore
		params.SecretAttributes.NotBefore = &nbf
	}
	if opts.ContentType != "" {
		ct := opts.ContentType
		params.ContentType = &ct
	}
	if len(opts.Tags) > 0 {
		params.Tags = make(map[string]*string, len(opts.Tags))
		for k, v := range opts.Tags {
			params.Tags[k] = &v
		}
	}
	var keySetSeq uint32 // reads of the key set started after this are fresh
	if ve := e.verifier(); ve != nil {
		ve.mu.Lock()
		keySetSeq = ve.seq
		ve.mu.Unlock()
	}
	p.writes.Add(1)
	resp, err := p.client.SetSecret(ctx, e.name, params, nil)
	if err != nil {
		f := classify(p.vaultURL, name, "", err)
		if errors.Is(f.err, ErrForbidden) {
			f.err.detail += `; writing a new version needs the "Key Vault Secrets Officer" role`
		}
		if ctx.Err() != nil {
			return Secret{}, ctx.Err()
		}
		return Secret{}, f.err
	}
	sec, err := fromSDK(e.name, "", resp.Secret)
	if err != nil {
		return Secret{}, &SecretError{Name: name, Kind: ErrUnavailable, Err: err, detail: "unexpected answer to the write"}
	}
	ve := e.verifier()
	e.mu.Lock()
	e.seq++
	seq := e.seq
	if e.lastVersion == "" && ve != nil {
		// Only Verify has read this secret: its key set knows the version replaced.
		if vs := ve.state.Load(); vs.hasValue {
			e.lastVersion = vs.version
		}
	}
	e.mu.Unlock()
	_, _, after := p.apply(e, seq, fetched{sec: sec}, nil, true)
	for _, fn := range after {
		fn()
	}
	p.drainRotations(e)
	if ve != nil {
		// Verify must accept the new key when Rotate returns: wait for the
		// key set's re-read (apply started it).
		if f, err := p.freshFlightSince(ctx, ve, keySetSeq); err == nil {
			select {
			case <-f.done:
			case <-ctx.Done():
			}
		}
	}
	return sec.clone(), nil
}

// apiKeyAlphabet is the URL-safe base64 alphabet: 64 symbols, so that a
// random byte's low six bits pick one uniformly.
const apiKeyAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// GenerateAPIKey returns a random API key of length characters from the
// URL-safe alphabet A-Z a-z 0-9 '-' '_' (6 bits each), read from
// crypto/rand; 0 means 43 characters (258 bits). Lengths under 22 (128
// bits) or over 4096 are refused.
func GenerateAPIKey(length int) (string, error) {
	if length == 0 {
		length = 43
	}
	if length < 22 || length > 4096 {
		return "", fmt.Errorf("kvsecrets: GenerateAPIKey: length %d is outside 22-4096", length)
	}
	b := make([]byte, length)
	if _, err := cryptorand.Read(b); err != nil {
		return "", fmt.Errorf("kvsecrets: GenerateAPIKey: %w", err)
	}
	for i := range b {
		b[i] = apiKeyAlphabet[b[i]&63]
	}
	return string(b), nil
}
