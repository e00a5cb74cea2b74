package kvsecrets

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Event Grid event types this package understands.
const (
	EventSecretNewVersionCreated = "Microsoft.KeyVault.SecretNewVersionCreated"
	EventSecretNearExpiry        = "Microsoft.KeyVault.SecretNearExpiry"
	EventSecretExpired           = "Microsoft.KeyVault.SecretExpired"
	eventSubscriptionValidation  = "Microsoft.EventGrid.SubscriptionValidationEvent"
)

// maxEventBody is the largest delivery accepted (Event Grid's own limit for
// a batch is 1 MB).
const maxEventBody = 1 << 20

// maxEvents is the most events a delivery may hold (Event Grid's own limit
// for a batch is 5,000). 1 MiB holds 349,525 empty events: counting them
// first keeps such a delivery from costing a decoding of each.
const maxEvents = 5000

// EventGridOptions configure [Provider.EventGridHandler].
type EventGridOptions struct {
	// SharedSecret, when set, must be the value of the query parameter
	// SecretParam of every delivery's URL (Event Grid's "secret in the
	// endpoint URL"); it is compared in constant time. Subscribe with
	// https://host/path?key=SECRET.
	SharedSecret string
	// SecretParam names that query parameter. Default "key".
	SecretParam string
	// Authorize, when set, must return nil for a delivery to be accepted:
	// for example a check of the Entra ID bearer token Event Grid sends.
	// With both SharedSecret and Authorize set, both must pass.
	Authorize func(*http.Request) error
	// AllowUnauthenticated accepts deliveries with neither check. For
	// local trials only. A handler with neither check and without it
	// could never accept a delivery, so EventGridHandler panics.
	AllowUnauthenticated bool
	// CoalesceWindow folds the refreshes that events ask for within this
	// interval into one per secret, so that a replayed or forged burst
	// cannot become a burst on the vault. Default
	// Options.EventCoalesceWindow (1s).
	CoalesceWindow time.Duration
	// Spread delays each event-driven refresh by a random time up to
	// Spread. A large fleet rotating many secrets at once otherwise sends
	// every instance's reads in the same second, beyond Key Vault's 4,000
	// GETs per 10 s (see BENCHMARKS.md); spreading them over about
	// instances × secrets / 400 seconds avoids the 429s at no cost in
	// convergence. Default Options.EventSpread (0: refresh at once).
	Spread time.Duration
	// OnNearExpiry, when set, is called for SecretNearExpiry events about
	// this vault's secrets (besides a Warn log). It runs in the request; a
	// panic is recovered and logged.
	OnNearExpiry func(ExpiryEvent)
}

// ExpiryEvent tells EventGridOptions.OnNearExpiry that a secret nears its
// expiry.
type ExpiryEvent struct {
	Name      string    // from the event's Id
	Version   string    // from the event's Id
	NotBefore time.Time // the event's NBF; zero if absent
	Expires   time.Time // the event's EXP; zero if absent
}

// EventGridHandler returns an http.Handler for an Event Grid webhook
// subscription to the vault's events, so that a rotation reaches every
// instance in seconds instead of after a TTL.
//
// It answers the subscription validation of both schemas (Event Grid's
// SubscriptionValidationEvent, CloudEvents' OPTIONS handshake), and
// accepts deliveries in either schema, single or batched. For this vault's
// secrets that the Provider caches (through Get or Verify),
// SecretNewVersionCreated (of a version other than the cached one) and
// SecretExpired start a refresh, unless nobody has read the secret for
// Options.IdleTimeout (it is then dropped); the event is only a trigger,
// values always come from the vault. SecretNearExpiry is logged at Warn and
// passed to OnNearExpiry, at most once per secret per CoalesceWindow.
// Everything else — other vaults, keys and certificates, secrets not
// cached — is acknowledged and ignored.
//
// Deliveries must pass SharedSecret and/or Authorize (else 401). Without
// either (nil opts, or an empty SharedSecret such as an unset environment
// variable) and without AllowUnauthenticated, EventGridHandler panics, as
// http.ServeMux does for a bad pattern: such a handler would refuse every
// delivery, the subscription's validation handshake included, and the
// subscription would fail in the portal with nothing said on the service's
// side. Bodies
// over 1 MiB or of more than 5,000 events (Event Grid's own limits for a
// batch) get 413, malformed JSON 400, methods other than POST and OPTIONS
// 405, and none of them changes anything. Stats count events received and
// acted on, and deliveries rejected.
func (p *Provider) EventGridHandler(opts *EventGridOptions) http.Handler {
	h := &eventGridHandler{p: p, secretParam: "key", window: p.cfg.eventWindow, spread: p.cfg.eventSpread}
	if opts != nil {
		h.opts = *opts
		if opts.SecretParam != "" {
			h.secretParam = opts.SecretParam
		}
		if opts.CoalesceWindow > 0 {
			h.window = opts.CoalesceWindow
		}
		if opts.Spread > 0 {
			h.spread = opts.Spread
		}
	}
	if h.opts.SharedSecret == "" && h.opts.Authorize == nil && !h.opts.AllowUnauthenticated {
		panic(errNoEventGridAuth)
	}
	if u, err := url.Parse(p.vaultURL); err == nil {
		h.vaultHost = strings.ToLower(u.Hostname())
	}
	return h
}

// errNoEventGridAuth is EventGridHandler's panic without a check.
var errNoEventGridAuth = errors.New("kvsecrets: EventGridHandler: EventGridOptions has neither a SharedSecret " +
	"(an empty one, such as an unset environment variable, counts as none) nor an Authorize func, so every delivery " +
	"would be refused, Event Grid's validation handshake included; set one of them, or AllowUnauthenticated for local trials")

type eventGridHandler struct {
	p           *Provider
	opts        EventGridOptions
	secretParam string
	window      time.Duration
	spread      time.Duration
	vaultHost   string
}

func (h *eventGridHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := h.p
	if r.Method != http.MethodPost && r.Method != http.MethodOptions {
		p.eventsRejected.Add(1)
		w.Header().Set("Allow", "POST, OPTIONS")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if !h.authorized(r) {
		p.eventsRejected.Add(1)
		p.cfg.logger.Warn("kvsecrets: Event Grid delivery refused: not authorized", slog.String("remote", r.RemoteAddr))
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	if r.Method == http.MethodOptions {
		h.cloudEventsHandshake(w, r)
		return
	}
	events, ok := h.readEvents(w, r)
	if !ok || h.subscriptionValidation(w, events) {
		return
	}
	for _, ev := range events {
		p.eventsReceived.Add(1)
		h.handle(ev)
	}
	w.WriteHeader(http.StatusOK)
}

// cloudEventsHandshake answers CloudEvents' webhook validation (abuse
// protection): an OPTIONS request naming its origin.
func (h *eventGridHandler) cloudEventsHandshake(w http.ResponseWriter, r *http.Request) {
	origin := r.Header.Get("WebHook-Request-Origin")
	if origin == "" {
		h.p.eventsRejected.Add(1)
		http.Error(w, "missing WebHook-Request-Origin", http.StatusBadRequest)
		return
	}
	w.Header().Set("WebHook-Allowed-Origin", origin)
	w.Header().Set("WebHook-Allowed-Rate", "*")
	w.WriteHeader(http.StatusOK)
}

// readEvents reads and parses a delivery's body, answering 413 or 400 and
// reporting false when it cannot.
func (h *eventGridHandler) readEvents(w http.ResponseWriter, r *http.Request) ([]gridEvent, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxEventBody))
	if err != nil {
		h.p.eventsRejected.Add(1)
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			http.Error(w, "delivery larger than 1 MiB", http.StatusRequestEntityTooLarge)
			return nil, false
		}
		http.Error(w, "unreadable body", http.StatusBadRequest)
		return nil, false
	}
	events, err := parseEvents(body)
	if err != nil {
		h.p.eventsRejected.Add(1)
		code := http.StatusBadRequest
		if err == errTooManyEvents {
			code = http.StatusRequestEntityTooLarge
		}
		http.Error(w, err.Error(), code)
		return nil, false
	}
	return events, true
}

// subscriptionValidation answers Event Grid's subscription validation
// event if the delivery holds one, reporting whether it did.
func (h *eventGridHandler) subscriptionValidation(w http.ResponseWriter, events []gridEvent) bool {
	for _, ev := range events {
		if ev.Type != eventSubscriptionValidation {
			continue
		}
		if ev.ValidationCode == "" {
			h.p.eventsRejected.Add(1)
			http.Error(w, "validation event without validationCode", http.StatusBadRequest)
			return true
		}
		h.p.cfg.logger.Info("kvsecrets: Event Grid subscription validated")
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"validationResponse": ev.ValidationCode})
		return true
	}
	return false
}

func (h *eventGridHandler) authorized(r *http.Request) bool {
	o := &h.opts
	if o.SharedSecret == "" && o.Authorize == nil {
		return o.AllowUnauthenticated
	}
	if o.SharedSecret != "" {
		got := r.URL.Query().Get(h.secretParam)
		if subtle.ConstantTimeCompare([]byte(got), []byte(o.SharedSecret)) != 1 {
			return false
		}
	}
	if o.Authorize != nil && o.Authorize(r) != nil {
		return false
	}
	return true
}

// handle acts on one event.
func (h *eventGridHandler) handle(ev gridEvent) {
	p := h.p
	switch ev.Type {
	case EventSecretNewVersionCreated, EventSecretExpired, EventSecretNearExpiry:
	default:
		return
	}
	if ev.ObjectType != "" && !strings.EqualFold(ev.ObjectType, "Secret") {
		return
	}
	host, name, version, ok := parseEventID(ev.ID)
	if !ok || host != h.vaultHost {
		return // another vault, or not a secret id
	}
	e := p.idx.load(strings.ToLower(name))
	if e == nil {
		return // not cached here
	}
	if ev.Type == EventSecretNearExpiry {
		// Once per secret per coalescing window: a delivery repeating one
		// secret's warning thousands of times makes one call.
		now := time.Now()
		e.mu.Lock()
		evs := e.events()
		fresh := now.Sub(evs.nearAt) >= h.window
		if fresh {
			evs.nearAt = now
		}
		e.mu.Unlock()
		if !fresh {
			return
		}
		p.eventsActedOn.Add(1)
		p.cfg.logger.Warn("kvsecrets: Event Grid: secret near expiry; rotate it",
			slog.String("secret", name), slog.String("version", version), slog.Time("expires", ev.Expires))
		if h.opts.OnNearExpiry != nil {
			h.callOnNearExpiry(ExpiryEvent{Name: name, Version: version, NotBefore: ev.NotBefore, Expires: ev.Expires})
		}
		return
	}
	p.newVersion(name, version, ev.Type, ev.Type == EventSecretNewVersionCreated, h.window, randUpTo(h.spread))
}

// callOnNearExpiry calls the hook, recovering and logging a panic as
// OnRotate's are (without the panic value).
func (h *eventGridHandler) callOnNearExpiry(ev ExpiryEvent) {
	h.p.callHook("OnNearExpiry", func() { h.opts.OnNearExpiry(ev) }, slog.String("secret", ev.Name))
}

// gridEvent is the part of an event, in either schema, that matters here.
type gridEvent struct {
	Type           string // one of the types handled here, else ""
	ID             string // data.Id
	ObjectType     string
	NotBefore      time.Time
	Expires        time.Time
	ValidationCode string
}

var (
	errNotJSON       = errors.New("malformed JSON: want an event object or an array of events")
	errTooManyEvents = fmt.Errorf("delivery holds more than %d events", maxEvents)
)

// parseEvents reads a delivery in the Event Grid schema or CloudEvents 1.0,
// single or batched. It tolerates what real payloads hold: keys with stray
// spaces or other case, NBF and EXP as strings, numbers or null. A batch of
// more than maxEvents is errTooManyEvents, found without decoding it.
//
// The body is checked once with json.Valid, then walked in place: an event
// of a type not handled here allocates nothing, so that a delivery costs
// in proportion to what it holds for us, not to its size.
func parseEvents(body []byte) ([]gridEvent, error) {
	body = bytes.TrimSpace(body)
	if !json.Valid(body) {
		return nil, errNotJSON
	}
	if body[0] == '{' {
		return []gridEvent{parseEvent(body)}, nil
	}
	if body[0] != '[' {
		return nil, errNotJSON
	}
	n := 0
	for range jsonItems(body) {
		if n++; n > maxEvents {
			return nil, errTooManyEvents
		}
	}
	out := make([]gridEvent, 0, n)
	for _, raw := range jsonItems(body) {
		switch raw[0] {
		case '{':
			out = append(out, parseEvent(raw))
		case 'n':
			out = append(out, gridEvent{}) // null: an event of no type, as ever
		default:
			return nil, errNotJSON
		}
	}
	return out, nil
}

// parseEvent reads one event, a valid JSON object. Of keys that differ
// only in case or spacing, the last counts.
func parseEvent(obj []byte) gridEvent {
	var key [16]byte
	var eventType, typ, data []byte
	for k, v := range jsonItems(obj) {
		switch string(looseKey(&key, k)) {
		case "eventtype":
			eventType = v
		case "type":
			typ = v
		case "data":
			data = v
		}
	}
	if len(looseBytes(eventType)) == 0 {
		eventType = typ // CloudEvents
	}
	ev := gridEvent{Type: handledType(eventType)}
	if ev.Type == "" || len(data) == 0 || data[0] != '{' {
		return ev // not ours: its data is never read
	}
	var id, objectType, nbf, exp, code []byte
	for k, v := range jsonItems(data) {
		switch string(looseKey(&key, k)) {
		case "id":
			id = v
		case "objecttype":
			objectType = v
		case "nbf":
			nbf = v
		case "exp":
			exp = v
		case "validationcode":
			code = v
		}
	}
	ev.ID = looseString(id)
	ev.ObjectType = looseString(objectType)
	ev.NotBefore = looseUnix(nbf)
	ev.Expires = looseUnix(exp)
	ev.ValidationCode = looseString(code)
	return ev
}

// handledType returns the event type that raw holds if it is one handled
// here, else "".
func handledType(raw []byte) string {
	switch string(looseBytes(raw)) {
	case EventSecretNewVersionCreated:
		return EventSecretNewVersionCreated
	case EventSecretNearExpiry:
		return EventSecretNearExpiry
	case EventSecretExpired:
		return EventSecretExpired
	case eventSubscriptionValidation:
		return eventSubscriptionValidation
	}
	return ""
}

// looseKey decodes a member's quoted key, trims it and lower-cases it into
// buf, and returns it; nil if it is longer than buf, as no key read here is.
func looseKey(buf *[16]byte, quoted []byte) []byte {
	k := looseBytes(quoted)
	for _, c := range k {
		if c >= utf8.RuneSelf {
			k = []byte(strings.ToLower(string(k))) // by Unicode's rules (rare)
			break
		}
	}
	if len(k) > len(buf) {
		return nil
	}
	for i, c := range k {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	return buf[:len(k)]
}

// looseBytes returns a JSON string decoded and trimmed, or nil for
// anything else. It allocates only for a string with escapes or bytes that
// are not UTF-8, which it decodes as encoding/json does.
func looseBytes(raw []byte) []byte {
	if len(raw) == 0 || raw[0] != '"' {
		return nil
	}
	s := raw[1 : len(raw)-1]
	if bytes.IndexByte(s, '\\') >= 0 || !utf8.Valid(s) {
		var d string
		json.Unmarshal(raw, &d)
		s = []byte(d)
	}
	return bytes.TrimSpace(s)
}

// looseString returns a JSON string decoded and trimmed, or "" for
// anything else.
func looseString(raw []byte) string {
	return string(looseBytes(raw))
}

// looseUnix reads Unix seconds given as a number or a string; zero for
// null, absent or anything else.
func looseUnix(raw json.RawMessage) time.Time {
	s := strings.TrimSpace(strings.Trim(strings.TrimSpace(string(raw)), `"`))
	if s == "" || s == "null" {
		return time.Time{} // spares ParseFloat's error
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || !(f > 0 && f <= 1e11) { // so NaN too
		return time.Time{}
	}
	return time.Unix(int64(f), 0).UTC()
}

// jsonItems yields the elements of a JSON array, or the members of a JSON
// object (key still quoted, value), that b holds from its first byte. b
// must be valid JSON (json.Valid): this only walks it, without allocating
// or checking its syntax again.
func jsonItems(b []byte) iter.Seq2[[]byte, []byte] {
	return func(yield func(key, value []byte) bool) {
		i := 1 // past '[' or '{'
		for {
			i = skipJSONSpace(b, i)
			switch b[i] {
			case ']', '}':
				return
			case ',':
				i = skipJSONSpace(b, i+1)
			}
			var key []byte
			if b[0] == '{' {
				end := jsonValueEnd(b, i)
				key = b[i:end]
				i = skipJSONSpace(b, skipJSONSpace(b, end)+1) // past ':'
			}
			end := jsonValueEnd(b, i)
			if !yield(key, b[i:end]) {
				return
			}
			i = end
		}
	}
}

// jsonValueEnd returns the index just past the valid JSON value that
// starts at b[i], tracking only strings, their escapes and nesting.
func jsonValueEnd(b []byte, i int) int {
	depth := 0
	for {
		switch b[i] {
		case '"':
			for i++; b[i] != '"'; i++ {
				if b[i] == '\\' {
					i++ // the escaped byte cannot end the string
				}
			}
			i++
		case '{', '[':
			depth++
			i++
		case '}', ']':
			depth--
			i++
		case ' ', '\t', '\n', '\r', ',', ':':
			i++
		default: // a number, true, false or null
			for i < len(b) && !isJSONDelim(b[i]) {
				i++
			}
		}
		if depth == 0 {
			return i
		}
	}
}

func skipJSONSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// isJSONDelim reports whether c may follow a number, true, false or null.
func isJSONDelim(c byte) bool {
	switch c {
	case ' ', '\t', '\n', '\r', ',', ':', ']', '}':
		return true
	}
	return false
}

// parseEventID splits a secret id https://VAULT/secrets/NAME[/VERSION] into
// the lower-case host, the name and the version.
func parseEventID(id string) (host, name, version string, ok bool) {
	u, err := url.Parse(strings.TrimSpace(id))
	if err != nil || u.Scheme != "https" || u.Hostname() == "" {
		return "", "", "", false
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] != "secrets" || checkName(parts[1]) != nil {
		return "", "", "", false
	}
	if len(parts) == 3 {
		if checkVersion(parts[2]) != nil {
			return "", "", "", false
		}
		version = parts[2]
	}
	return strings.ToLower(u.Hostname()), parts[1], version, true
}
