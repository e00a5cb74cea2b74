package kvsecrets

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
)

// ErrInvalidReference: a reference does not follow the grammar Resolve
// accepts. ErrHostNotAllowed: it names a vault host the Provider may not
// send its token to. ErrTooManyVaults: it names one more vault than a
// Provider serves (MaxOtherVaults besides its own).
var (
	ErrInvalidReference = errors.New("kvsecrets: invalid secret reference")
	ErrHostNotAllowed   = errors.New("kvsecrets: vault host not allowed")
	ErrTooManyVaults    = errors.New("kvsecrets: too many vaults")
)

// MaxOtherVaults bounds the vaults besides its own that one Provider's
// references may name: each gets a Provider of its own, for the Provider's
// lifetime. A service reads secrets from a handful of vaults; references
// naming more are refused with ErrTooManyVaults before any request, so
// that references chosen by others cannot make the Provider grow without
// bound.
const MaxOtherVaults = 64

// vaultSuffixes are Key Vault's DNS suffixes: public, China, US
// Government and Germany clouds, and Managed HSM.
var vaultSuffixes = []string{".vault.azure.net", ".vault.azure.cn", ".vault.usgovcloudapi.net", ".vault.microsoftazure.de", ".managedhsm.azure.net"}

// ref is a parsed reference: a secret in a vault, optionally pinned.
type ref struct {
	host    string // lower-case host[:port]; "" for the Provider's own vault
	name    string
	version string
}

const refPrefix = "@Microsoft.KeyVault("

// isReference reports whether s is written as an App Service reference.
func isReference(s string) bool {
	return strings.HasPrefix(strings.TrimSpace(s), refPrefix)
}

// parseRef parses the reference grammar:
//
//	NAME
//	https://VAULT-HOST/secrets/NAME[/VERSION][/]
//	@Microsoft.KeyVault(SecretUri=https://VAULT-HOST/secrets/NAME[/VERSION][/])
//	@Microsoft.KeyVault(VaultName=VAULT;SecretName=NAME[;SecretVersion=VERSION])
//
// suffix is the DNS suffix VaultName gets (".vault.azure.net" in the public
// cloud). Errors describe the problem without repeating the reference.
func parseRef(s, suffix string) (ref, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return ref{}, fmt.Errorf("%w: it is empty", ErrInvalidReference)
	case strings.HasPrefix(s, refPrefix):
		if !strings.HasSuffix(s, ")") {
			return ref{}, fmt.Errorf("%w: @Microsoft.KeyVault( is not closed by )", ErrInvalidReference)
		}
		return parseAppServiceRef(s[len(refPrefix):len(s)-1], suffix)
	case strings.HasPrefix(strings.ToLower(s), "https://"):
		return parseSecretURI(s)
	case strings.Contains(s, "://"):
		return ref{}, fmt.Errorf("%w: a secret URI must use https", ErrInvalidReference)
	}
	if err := checkName(s); err != nil {
		return ref{}, fmt.Errorf("%w: not a secret name, secret URI or @Microsoft.KeyVault(...) reference (%w)", ErrInvalidReference, err)
	}
	return ref{name: s}, nil
}

func parseAppServiceRef(body, suffix string) (ref, error) {
	params := map[string]string{}
	for part := range strings.SplitSeq(body, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue // a trailing ';'
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return ref{}, fmt.Errorf("%w: a parameter of @Microsoft.KeyVault(...) has no '='", ErrInvalidReference)
		}
		k = strings.ToLower(strings.TrimSpace(k))
		switch k {
		case "secreturi", "vaultname", "secretname", "secretversion":
		default:
			return ref{}, fmt.Errorf("%w: unknown parameter in @Microsoft.KeyVault(...); want SecretUri, or VaultName, SecretName and SecretVersion", ErrInvalidReference)
		}
		if _, dup := params[k]; dup {
			return ref{}, fmt.Errorf("%w: a parameter of @Microsoft.KeyVault(...) is repeated", ErrInvalidReference)
		}
		params[k] = strings.TrimSpace(v)
	}
	if uri, ok := params["secreturi"]; ok {
		if len(params) != 1 {
			return ref{}, fmt.Errorf("%w: SecretUri cannot be combined with other parameters", ErrInvalidReference)
		}
		return parseSecretURI(uri)
	}
	vault, name := params["vaultname"], params["secretname"]
	if vault == "" || name == "" {
		return ref{}, fmt.Errorf("%w: @Microsoft.KeyVault(...) needs SecretUri, or VaultName and SecretName", ErrInvalidReference)
	}
	if !validVaultName(vault) {
		return ref{}, fmt.Errorf("%w: VaultName must be 3-24 letters, digits and '-'", ErrInvalidReference)
	}
	if err := checkName(name); err != nil {
		return ref{}, fmt.Errorf("%w: SecretName: %w", ErrInvalidReference, err)
	}
	r := ref{host: strings.ToLower(vault) + suffix, name: name}
	if v, ok := params["secretversion"]; ok && v != "" {
		if err := checkVersion(v); err != nil {
			return ref{}, fmt.Errorf("%w: SecretVersion: %w", ErrInvalidReference, err)
		}
		r.version = v
	}
	return r, nil
}

// parseSecretURI parses https://HOST/secrets/NAME[/VERSION][/].
func parseSecretURI(s string) (ref, error) {
	u, err := url.Parse(s)
	if err != nil || !strings.EqualFold(u.Scheme, "https") || u.Host == "" || u.User != nil || u.Fragment != "" || u.Opaque != "" {
		return ref{}, fmt.Errorf("%w: not an https secret URI", ErrInvalidReference)
	}
	if u.RawQuery != "" {
		return ref{}, fmt.Errorf("%w: a secret URI takes no query", ErrInvalidReference)
	}
	if u.RawPath != "" {
		return ref{}, fmt.Errorf("%w: a secret URI has no escaped characters", ErrInvalidReference)
	}
	path := strings.TrimPrefix(u.Path, "/")
	path = strings.TrimSuffix(path, "/")
	parts := strings.Split(path, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] != "secrets" {
		return ref{}, fmt.Errorf("%w: a secret URI's path is /secrets/NAME or /secrets/NAME/VERSION", ErrInvalidReference)
	}
	if err := checkName(parts[1]); err != nil {
		return ref{}, fmt.Errorf("%w: %w", ErrInvalidReference, err)
	}
	if !isASCII(u.Host) {
		return ref{}, fmt.Errorf("%w: the host is not plain ASCII", ErrInvalidReference)
	}
	r := ref{host: asciiLower(u.Host), name: parts[1]}
	if len(parts) == 3 {
		if err := checkVersion(parts[2]); err != nil {
			return ref{}, fmt.Errorf("%w: %w", ErrInvalidReference, err)
		}
		r.version = parts[2]
	}
	return r, nil
}

// validVaultName reports whether n follows Key Vault's naming rules: 3-24
// ASCII letters, digits and '-', starting with a letter, ending with a
// letter or digit, with no "--".
func validVaultName(n string) bool {
	if len(n) < 3 || len(n) > 24 || strings.Contains(n, "--") {
		return false
	}
	letter := func(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(letter(c) || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return letter(n[0]) && n[len(n)-1] != '-'
}

// hostAllowed reports whether a reference may send the Provider's token to
// host: a Key Vault DNS name without a port, or a host listed in
// Options.AllowedVaultHosts exactly.
func hostAllowed(host string, allowed []string) bool {
	for _, a := range allowed {
		if strings.EqualFold(a, host) {
			return true
		}
	}
	if strings.Contains(host, ":") {
		return false // ports only for hosts listed explicitly
	}
	if net.ParseIP(host) != nil {
		return false
	}
	for _, suf := range vaultSuffixes {
		if label, ok := strings.CutSuffix(host, suf); ok {
			return validVaultName(label)
		}
	}
	return false
}

// IsVaultHost reports whether host, a URL's host, is a Key Vault or Managed
// HSM DNS name: a valid vault name under one of Key Vault's DNS suffixes
// (public and sovereign clouds), without a port. These are the hosts a
// reference may name without Options.AllowedVaultHosts; a tool that takes
// a vault from a reference (cmd/kvenv does) checks it with IsVaultHost
// before sending a token there.
func IsVaultHost(host string) bool { return isASCII(host) && hostAllowed(asciiLower(host), nil) }

// isASCII reports whether s is plain ASCII; hosts that are not (Unicode
// look-alikes such as the Kelvin sign, which strings.ToLower folds to 'k')
// are refused.
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// asciiLower lower-cases the ASCII letters of s only.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// vaultSuffixOf returns the Key Vault DNS suffix of host, or the public
// cloud's when host is not under one.
func vaultSuffixOf(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	for _, suf := range vaultSuffixes {
		if strings.HasSuffix(host, suf) {
			return suf
		}
	}
	return vaultSuffixes[0]
}

// Resolve returns the value of the secret a reference names:
//
//	MyApiKey                                                     a secret of this Provider's vault
//	https://myvault.vault.azure.net/secrets/MyApiKey[/VERSION]   a secret URI
//	@Microsoft.KeyVault(SecretUri=https://myvault.vault.azure.net/secrets/MyApiKey/)
//	@Microsoft.KeyVault(VaultName=myvault;SecretName=MyApiKey;SecretVersion=VERSION)
//
// A reference with a version is served as a pinned version (GetVersion);
// one without, as the latest (Get). References to other vaults are served
// by Providers made on first use with the same credential and options, and
// closed with this one; they start no goroutine until they cache
// something, and at most [MaxOtherVaults] are made (ErrTooManyVaults past
// that). A reference may only name a host under Key Vault's
// DNS suffixes (public and sovereign clouds, Managed HSM), this Provider's
// own host, or a host in Options.AllowedVaultHosts: the application's token
// is never sent anywhere else. VaultName takes the DNS suffix of this
// Provider's vault (vault.azure.net if it has none). Every error — a
// malformed reference, a host not allowed — comes before any request and
// never repeats the reference.
func (p *Provider) Resolve(ctx context.Context, reference string) (string, error) {
	s, err := p.ResolveSecret(ctx, reference)
	if err != nil {
		return "", err
	}
	return s.Value(), nil
}

// ResolveSecret is [Provider.Resolve] with the secret's metadata.
func (p *Provider) ResolveSecret(ctx context.Context, reference string) (Secret, error) {
	r, err := p.parseRef(reference)
	if err != nil {
		return Secret{}, err
	}
	return p.resolve(ctx, r)
}

// parseRef parses a reference and checks its host.
func (p *Provider) parseRef(reference string) (ref, error) {
	r, err := parseRef(reference, vaultSuffixOf(p.host))
	if err != nil {
		return ref{}, err
	}
	if r.host == p.host {
		r.host = ""
	}
	if r.host != "" && !hostAllowed(r.host, p.cfg.allowedHosts) {
		return ref{}, fmt.Errorf("%w: the reference names a host outside Key Vault's DNS suffixes and Options.AllowedVaultHosts", ErrHostNotAllowed)
	}
	return r, nil
}

func (p *Provider) resolve(ctx context.Context, r ref) (Secret, error) {
	target := p
	if r.host != "" {
		var err error
		if target, err = p.vaultFor(r.host); err != nil {
			return Secret{}, err
		}
	}
	var s Secret
	var err error
	if r.version != "" {
		s, err = target.GetVersion(ctx, r.name, r.version)
	} else {
		s, err = target.GetSecret(ctx, r.name)
	}
	return s, p.waitErr(r, err)
}

// waitErr names the secret and the vault in a caller's deadline or
// cancellation that ended a wait for r, which says nothing by itself
// ("context deadline exceeded"). Other errors pass unchanged.
func (p *Provider) waitErr(r ref, err error) error {
	var se *SecretError
	var we *waitError
	if err == nil || errors.As(err, &se) || errors.As(err, &we) || !(errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) {
		return err
	}
	what := "the deadline passed"
	if errors.Is(err, context.Canceled) {
		what = "the context was canceled"
	}
	return &waitError{fmt.Sprintf("kvsecrets: secret %q in vault %s: %s while waiting for the vault", r.name, p.hostOf(r), what), err}
}

// waitError is a caller's deadline or cancellation, naming what it ended.
type waitError struct {
	msg string
	err error
}

func (e *waitError) Error() string { return e.msg + ": " + e.err.Error() }
func (e *waitError) Unwrap() error { return e.err }

// hostOf is the vault host a reference names.
func (p *Provider) hostOf(r ref) string {
	if r.host == "" {
		return p.host
	}
	return r.host
}

// refErr is err, from reading r, prefixed with what asked for it:
// plain, or withVault(the vault's host) unless err already names the
// vault.
func (p *Provider) refErr(plain string, withVault func(host string) string, r ref, err error) error {
	err = p.waitErr(r, err)
	var we *waitError
	if errors.As(err, &we) {
		return fmt.Errorf("%s: %w", plain, err)
	}
	return fmt.Errorf("%s: %w", withVault(p.hostOf(r)), err)
}

// vaultFor returns the Provider for another vault host, making it on first
// use with this Provider's credential and options.
func (p *Provider) vaultFor(host string) (*Provider, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return nil, &SecretError{Kind: ErrClosed}
	}
	if c := p.others[host]; c != nil {
		return c, nil
	}
	if len(p.others) >= MaxOtherVaults {
		return nil, fmt.Errorf("%w: references have named %d vaults besides this Provider's; a Provider serves at most MaxOtherVaults (%d) others", ErrTooManyVaults, len(p.others), MaxOtherVaults)
	}
	opts := p.opts
	c, err := NewProvider("https://"+host+"/", p.cred, &opts)
	if err != nil {
		return nil, err
	}
	c.hooks = p.hooks
	if p.others == nil {
		p.others = map[string]*Provider{}
	}
	p.others[host] = c
	return c, nil
}

// Reference is a parsed secret reference (see [Provider.Resolve]).
type Reference struct {
	VaultURL string // https://HOST/ ; empty for a bare name (the Provider's vault)
	Name     string
	Version  string // empty for the latest
}

// ParseReference parses a reference as Resolve does, without contacting
// anything and without checking the host against an allow-list (Resolve
// does that). A VaultName reference gets the public cloud's suffix,
// vault.azure.net. Errors wrap ErrInvalidReference and never repeat the
// reference.
func ParseReference(s string) (Reference, error) {
	r, err := parseRef(s, vaultSuffixes[0])
	if err != nil {
		return Reference{}, err
	}
	out := Reference{Name: r.name, Version: r.version}
	if r.host != "" {
		out.VaultURL = "https://" + r.host + "/"
	}
	return out, nil
}

// IsReference reports whether a value is written as an App Service
// reference, @Microsoft.KeyVault(...): the values ResolveEnv replaces.
func IsReference(value string) bool { return isReference(value) }
