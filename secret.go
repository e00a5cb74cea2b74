package kvsecrets

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// Secret is one version of a Key Vault secret: its value and metadata.
//
// The value is unexported and read with [Secret.Value]. Every way of printing
// a Secret — String, GoString, Format with any verb, LogValue for log/slog and
// MarshalJSON — shows its metadata and hides the value, so a Secret can be
// logged or dumped safely. The value is held behind a pointer, so that where
// fmt cannot call those methods (a Secret in an unexported field of your
// struct, the %p verb) and prints fields by reflection, it prints an
// address, never the value.
type Secret struct {
	Name        string            // as the vault spells it
	Version     string            // the version id
	ContentType string            // empty when unset
	Tags        map[string]string // nil when there are none; a copy, free to modify
	NotBefore   time.Time         // nbf; zero when unset
	Expires     time.Time         // exp; zero when unset
	Created     time.Time         // zero when unknown
	Updated     time.Time         // zero when unknown

	value *redacted // nil in the zero Secret
}

// redacted holds a secret value. Its own printing methods hide it too, as a
// second line of defence.
type redacted string

const redactedText = "[REDACTED]"

func (redacted) String() string                { return redactedText }
func (redacted) GoString() string              { return strconv.Quote(redactedText) }
func (redacted) Format(f fmt.State, verb rune) { fmt.Fprint(f, redactedText) }
func (redacted) LogValue() slog.Value          { return slog.StringValue(redactedText) }
func (redacted) MarshalJSON() ([]byte, error)  { return []byte(`"` + redactedText + `"`), nil }
func (redacted) MarshalText() ([]byte, error)  { return []byte(redactedText), nil }

// Value returns the secret's value.
func (s Secret) Value() string {
	if s.value == nil {
		return ""
	}
	return string(*s.value)
}

// newRedacted holds v behind a pointer.
func newRedacted(v string) *redacted {
	r := redacted(v)
	return &r
}

// String describes the secret without its value.
func (s Secret) String() string {
	var b strings.Builder
	b.WriteString("kvsecrets.Secret{Name: ")
	b.WriteString(strconv.Quote(s.Name))
	b.WriteString(", Version: ")
	b.WriteString(strconv.Quote(s.Version))
	if s.ContentType != "" {
		b.WriteString(", ContentType: ")
		b.WriteString(strconv.Quote(s.ContentType))
	}
	if !s.Expires.IsZero() {
		b.WriteString(", Expires: ")
		b.WriteString(s.Expires.UTC().Format(time.RFC3339))
	}
	b.WriteString(", Value: " + redactedText + "}")
	return b.String()
}

// GoString is used by %#v; it hides the value.
func (s Secret) GoString() string { return s.String() }

// Format implements fmt.Formatter so that every verb and flag (%v, %+v, %#v,
// %s, %q, %x, …) prints the redacted description.
func (s Secret) Format(f fmt.State, verb rune) {
	switch verb {
	case 'q':
		fmt.Fprint(f, strconv.Quote(s.String()))
	default:
		fmt.Fprint(f, s.String())
	}
}

// LogValue implements slog.LogValuer: the metadata as a group, no value.
func (s Secret) LogValue() slog.Value {
	attrs := []slog.Attr{slog.String("name", s.Name), slog.String("version", s.Version)}
	if s.ContentType != "" {
		attrs = append(attrs, slog.String("contentType", s.ContentType))
	}
	if !s.Expires.IsZero() {
		attrs = append(attrs, slog.Time("expires", s.Expires))
	}
	return slog.GroupValue(attrs...)
}

// MarshalJSON encodes the metadata; the value is never encoded.
func (s Secret) MarshalJSON() ([]byte, error) {
	type meta struct {
		Name        string            `json:"name"`
		Version     string            `json:"version"`
		ContentType string            `json:"contentType,omitempty"`
		Tags        map[string]string `json:"tags,omitempty"`
		NotBefore   *time.Time        `json:"notBefore,omitempty"`
		Expires     *time.Time        `json:"expires,omitempty"`
		Created     *time.Time        `json:"created,omitempty"`
		Updated     *time.Time        `json:"updated,omitempty"`
	}
	opt := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		return &t
	}
	return json.Marshal(meta{s.Name, s.Version, s.ContentType, s.Tags,
		opt(s.NotBefore), opt(s.Expires), opt(s.Created), opt(s.Updated)})
}

// RotationEvent tells Options.OnRotate that a cached secret has a new version.
type RotationEvent struct {
	Vault      string    // the vault's URL: Providers made for references to other vaults share OnRotate
	Name       string    // the secret's name as the vault spells it
	OldVersion string    // the version served until now
	NewVersion string    // the version served from now on
	Secret     Secret    // the new version; its value is read with Value()
	Detected   time.Time // when the Provider saw the new version
}

// Stats are counters since the Provider was made. Reading them is cheap.
type Stats struct {
	Hits            uint64 // reads answered from memory with a value
	NegativeHits    uint64 // reads answered from a remembered failure: not-found, disabled or forbidden within NegativeTTL, or an outage until its next retry
	Misses          uint64 // reads that had to wait for the vault
	VaultRequests   uint64 // reads of the vault (each may be several HTTP tries inside the SDK)
	Refreshes       uint64 // re-reads of cached secrets: background, Refresh, and retries
	RefreshFailures uint64 // re-reads that failed with a transient error
	StaleServes     uint64 // reads served from a value whose last refresh failed
	Rotations       uint64 // new versions seen for cached secrets
	Revocations     uint64 // cached values dropped because the vault said not found, disabled or forbidden
	StaleDrops      uint64 // cached values dropped because MaxStale passed without a successful refresh
	Writes          uint64 // new versions written by Rotate
	EventsReceived  uint64 // Event Grid events delivered to EventGridHandler
	EventsActedOn   uint64 // events and notices that started (or were folded into) a refresh, or were warned about
	Notices         uint64 // calls of Notify with a valid notice
	EventsRejected  uint64 // deliveries refused: authentication, size, method or malformed JSON
	Evictions       uint64 // entries evicted, least recently read first, to stay within Options.MaxEntries
	IdleDrops       uint64 // entries dropped because nobody read them for Options.IdleTimeout
	Entries         int    // names, pinned versions and Verify key sets the Provider holds now

	// The pacer's state (see Options.MaxReadRate); zero with
	// Options.DisablePacing.
	ReadRate   float64 // requests a second the Provider allows itself to send to its vault now
	PacedReads uint64  // requests that waited for their turn
	Throttled  uint64  // requests the vault answered 429

	// Options.Limiter's answers: read requests it gave a turn (the
	// challenge and the SDK's retries included), and requests sent
	// without one because it failed. Zero without a Limiter.
	LimitedReads    uint64
	LimiterFailures uint64
}
