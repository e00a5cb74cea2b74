// Package kvsecrets serves Azure Key Vault secrets — API keys, connection
// strings, tokens — to Go services from memory, through one call:
//
//	p, err := kvsecrets.NewProvider("https://myvault.vault.azure.net/", nil, nil)
//	if err != nil {
//		return err
//	}
//	defer p.Close()
//	key, err := p.Get(ctx, "MyApiKey")
//
// # What a Provider does
//
// The first [Provider.Get] of a name reads the latest version from the
// vault; concurrent first reads of one name share that one request, which
// runs on a context of its own (bounded by Options.FetchTimeout), so a
// caller whose context ends gets ctx.Err() at once while the others still
// get the value. Later reads are answered from memory with no lock and no
// allocation, about as fast as a sync.Map lookup.
//
// Every cached secret is re-read in the background before its TTL ends, at
// 75–90% of it (Options.RefreshAt, Options.RefreshJitter) so that a fleet
// does not refresh in step, as long as someone reads it: a secret nobody
// reads for Options.IdleTimeout (2 TTLs) is dropped instead, and read again
// when next asked for. The Provider holds at most Options.MaxEntries
// entries, evicting the least recently read past that, and forgets misses
// once Options.NegativeTTL has passed, so that names callers invent cannot
// grow it without bound. A secret whose
// expiry (exp) comes first is re-read by then, so a version rotated in ahead
// of expiry is picked up; after exp it is re-checked every
// Options.ExpiredRecheck. A warning is logged once per version within
// Options.ExpiryWarning of exp. No caller ever waits on a refresh while a
// value is cached. When a new version is seen, Options.OnRotate is called.
//
// # Start-up
//
// [Provider.Load] fills a config struct from `keyvault:"Name"` tags in
// parallel, with one error naming every failing field. [Provider.Resolve]
// accepts secret URIs and App Service references
// (@Microsoft.KeyVault(...)), across vaults but only to Key Vault hosts
// and Options.AllowedVaultHosts; [Provider.ResolveEnv] resolves the
// references in an environment, as cmd/kvenv does for any program.
//
// # Rotation
//
// [Provider.Rotate] writes a new version with an expiry (180 days by
// default) and serves it at once; [GenerateAPIKey] makes strong keys.
// [Provider.Verify] checks a presented key in constant time against the
// latest version and, for Options.VerifyOverlap after a rotation, the
// versions it replaced, each within its nbf and exp at the moment the key
// is presented; any read that finds the secret deleted, disabled or
// forbidden stops it at once. [Provider.EventGridHandler] serves an Event Grid
// webhook so that rotations made elsewhere reach every instance in
// seconds.
//
// # Live secrets
//
// [Provider.Handle] names a secret once, so that each read is an atomic
// load and a check. [Provider.Watch] yields a secret's versions as they are
// served; [LoadLive] keeps a configuration struct current through
// rotations, swapping immutable snapshots. [Provider.Status] and
// [Provider.HealthHandler] report whether each secret is fresh, stale or
// failing, for readiness probes.
//
// # Failures
//
// Failures that are not the vault's answer about the secret — network
// errors, timeouts, 408, 429, 5xx, and configuration failures — keep the
// last good value served for up to Options.MaxStale after it was read,
// while refreshes are retried with exponential backoff and jitter
// (honouring Retry-After) and logged at Warn. At MaxStale the value is
// dropped and reads fail with [ErrUnavailable]; background retries go on
// and restore it when the vault answers. With nothing cached, a read fails
// after the SDK's own retries, in seconds; only a throttled vault (429) is
// waited for, within FetchTimeout. Configuration failures say what to fix
// and are not retried: [ErrUnauthenticated] (the credential cannot get a
// token, or the vault refuses it) and [ErrMisconfigured] (TLS verification,
// a host that does not resolve, a 400).
//
// Authoritative answers stop serving at once: a deleted secret (404) gives
// [ErrNotFound], a disabled one (403 SecretDisabled) [ErrDisabled], a
// revoked role or access policy (403 ForbiddenByRbac, AccessDenied)
// [ErrForbidden]. These answers are remembered for Options.NegativeTTL, so a
// storm of reads of a missing secret costs the vault one request.
//
// Invalid names (not 1–127 characters of 0-9, a-z, A-Z, '-') fail with
// [ErrInvalidName] before any request. Names are case-insensitive, as in Key
// Vault: all spellings share one cache entry.
//
// Every error wraps a sentinel and, when the vault answered, the
// *azcore.ResponseError, so both errors.Is and errors.As work; messages name
// the secret and the service's codes, never a value.
//
// # Defaults
//
//	TTL                 1h    re-read ahead of it, at 75–90%
//	MaxStale            24h   stale values served this long while refreshes fail
//	NegativeTTL         30s   not-found, disabled and forbidden remembered
//	ExpiryWarning       30d   warn once per version this close to exp
//	ExpiredRecheck      5m    re-read period of an expired, unrotated secret
//	RetryBackoff        1s    doubling up to MaxRetryBackoff (2m), with jitter
//	FetchTimeout        30s   one read of the vault, SDK retries included, from its first request
//	MaxReadRate         400   requests a second; below it the Provider paces itself adaptively
//	PreloadConcurrency  16    parallel reads in Preload
//	RefreshConcurrency  4     parallel background refreshes
//
// A short TTL never slows callers but costs the vault: each cached secret is
// read about once per 0.8×TTL per Provider, and Key Vault allows 4,000 GETs
// per 10 seconds per vault. Microsoft advises caching for hours.
//
// # Secrets in output
//
// A [Secret]'s value is read with [Secret.Value]; String, GoString, Format,
// LogValue and MarshalJSON show only its metadata. Logs name secrets and
// versions, never values.
//
// # Testing code that uses a Provider
//
// Pass Options.ClientOptions with the SDK's fake transport
// (azsecrets/fake.NewServerTransport) and an azcore/fake.TokenCredential, as
// the package examples do, or point the Provider at any HTTPS server that
// speaks Key Vault's protocol.
package kvsecrets
