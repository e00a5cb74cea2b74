package kvtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Event Grid for the vault: Key Vault publishes an event for each new
// version of a secret, and for the current version 30 days before it
// expires and when it does; Event Grid delivers each to every subscription,
// first validating the subscriber, retrying on a schedule, and at least
// once. Facts from learn.microsoft.com/azure/key-vault/general/event-grid-overview,
// /azure/event-grid/event-schema-key-vault, /azure/event-grid/delivery-and-retry,
// /azure/event-grid/webhook-event-delivery and /azure/event-grid/delivery-properties.

// The event types a vault publishes for secrets.
const (
	SecretNewVersionCreated = "Microsoft.KeyVault.SecretNewVersionCreated"
	SecretNearExpiry        = "Microsoft.KeyVault.SecretNearExpiry"
	SecretExpired           = "Microsoft.KeyVault.SecretExpired"
)

// NearExpiryLead is how long before a secret's expiry Key Vault publishes
// SecretNearExpiry: 30 days.
const NearExpiryLead = 30 * 24 * time.Hour

// DefaultSubscriptionID and DefaultResourceGroup name the vault's Azure
// resource in events' topic (see [Server.ResourceID]).
const (
	DefaultSubscriptionID = "00000000-0000-0000-0000-0000000c0de0"
	DefaultResourceGroup  = "kvtest"
)

// EventSchema is the shape of delivered events, named as Event Grid's
// eventDeliverySchema names them.
type EventSchema string

const (
	// EventGridSchema delivers a JSON array holding one event
	// {id, topic, subject, eventType, eventTime, data, dataVersion,
	// metadataVersion}, after a SubscriptionValidationEvent handshake.
	EventGridSchema EventSchema = "EventGridSchema"
	// CloudEventSchema delivers one CloudEvents 1.0 event in structured
	// mode (application/cloudevents+json), after the CloudEvents webhook
	// OPTIONS handshake.
	CloudEventSchema EventSchema = "CloudEventSchemaV1_0"
)

// Event Grid's delivery policy: the defaults of an event subscription and
// the retry schedule, "on a best-effort basis", of
// learn.microsoft.com/azure/event-grid/delivery-and-retry.
const (
	DefaultMaxDeliveryAttempts = 30
	DefaultEventTimeToLive     = 24 * time.Hour
	// DeliveryTimeout is how long Event Grid waits for an answer before
	// counting the attempt as failed.
	DeliveryTimeout = 30 * time.Second
)

// retrySchedule is the wait after each failed attempt: 10 s, 30 s, 1 min,
// 5 min, 10 min, 30 min, 1 h, 3 h, 6 h, then every 12 h. kvtest leaves
// out Event Grid's "small randomization" of each step so that tests are
// repeatable.
var retrySchedule = []time.Duration{10 * time.Second, 30 * time.Second, time.Minute, 5 * time.Minute,
	10 * time.Minute, 30 * time.Minute, time.Hour, 3 * time.Hour, 6 * time.Hour, 12 * time.Hour}

// RetryDelay returns how long Event Grid waits after the n-th failed
// attempt (n ≥ 1) before the next one.
func RetryDelay(n int) time.Duration {
	return retrySchedule[min(max(n, 1), len(retrySchedule))-1]
}

// errExpired is the Err of a Delivery given up on because the event's
// time to live passed before its attempt was due.
var errExpired = errors.New("kvtest: the event's time to live passed before this attempt")

// validSubscriptionName reports whether n is a valid Event Grid event
// subscription name: 3-64 letters, digits and '-'.
func validSubscriptionName(n string) bool { return validDashed(n, 3, 64) }

// noRetry reports whether a webhook's answer ends delivery at once: Event
// Grid does not retry 400, 401, 403 or 413 from a webhook (it dead-letters
// or drops the event).
func noRetry(status int) bool {
	switch status {
	case http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusRequestEntityTooLarge:
		return true
	}
	return false
}

// SubscriptionOptions configure an event subscription. A nil
// *SubscriptionOptions means defaults.
type SubscriptionOptions struct {
	// Name is the subscription's name, sent in the aeg-subscription-name
	// header: 3-64 letters, digits and '-'. Default "kvtest-N".
	Name string
	// Schema is the delivery schema. Default EventGridSchema.
	Schema EventSchema
	// EventTypes lists the event types to deliver (Event Grid's
	// includedEventTypes). Default: all three secret events.
	EventTypes []string
	// MaxDeliveryAttempts is Event Grid's retry policy limit, 1–30.
	// Default 30.
	MaxDeliveryAttempts int
	// EventTimeToLive is how long an event is retried after it was
	// published, 1 minute to 24 hours. Default 24 hours.
	EventTimeToLive time.Duration
	// Duplicates is the probability, from 0 to 1, that an event delivered
	// successfully is delivered once more, as Event Grid's at-least-once
	// delivery allows: 1 delivers every event twice. Default 0.
	Duplicates float64
	// Delay is how long after an event is published its first delivery is
	// attempted (Event Grid's latency, usually under a second); shorter
	// than EventTimeToLive. Default 0.
	Delay time.Duration
	// Client sends the deliveries of a subscription made with
	// [Server.Subscribe]. Default: http.DefaultTransport, following no
	// redirect (to Event Grid a 3xx is a failure); each attempt is bounded
	// by DeliveryTimeout.
	Client *http.Client
	// OnDelivery, when set, is called after each delivery attempt, on the
	// subscription's goroutine: the next attempt waits for it.
	OnDelivery func(Delivery)
}

// DeliveryOutcome is what came of one delivery attempt.
type DeliveryOutcome string

// Outcomes of a delivery attempt.
const (
	Delivered    DeliveryOutcome = "delivered"     // 2xx
	Retrying     DeliveryOutcome = "retrying"      // failed; another attempt is scheduled
	DeadLettered DeliveryOutcome = "dead-lettered" // failed for good: no retry, attempts or time to live spent
)

// Delivery records one attempt to deliver an event to a subscription.
type Delivery struct {
	EventID   string // the same on every attempt and duplicate of an event
	EventType string
	Secret    string // the secret's name
	Version   string
	Attempt   int       // 1 for the first attempt; the aeg-delivery-count header is Attempt-1
	At        time.Time // when the attempt was made (the vault's clock)
	Status    int       // the subscriber's HTTP status; 0 without an answer
	Err       error     // why there was no answer (connection, timeout)
	Duplicate bool      // a deliberate second delivery (SubscriptionOptions.Duplicates)
	Outcome   DeliveryOutcome
}

// SubscriptionStats counts a subscription's work.
type SubscriptionStats struct {
	Published    int // events matched to the subscription
	Attempts     int // delivery attempts, duplicates included
	Delivered    int // events delivered (2xx), duplicates included
	Failed       int // attempts that failed
	DeadLettered int // events given up on
	Pending      int // events waiting for an attempt or in one
}

// maxDeliveryLog bounds Subscription.Deliveries, so that a long-running
// kvlocal does not grow without end.
const maxDeliveryLog = 1000

// Subscription is an event subscription on a Server: the vault's events
// are delivered to its endpoint until it or the Server is closed. Its
// methods are safe for concurrent use.
type Subscription struct {
	srv      *Server
	ctx      context.Context // the bus's
	name     string
	endpoint *url.URL
	schema   EventSchema
	types    []string
	attempts int
	ttl      time.Duration
	dup      float64
	delay    time.Duration
	notify   func(Delivery)
	send     func(ctx context.Context, method string, h http.Header, body []byte) (int, http.Header, []byte, error)
	calls    *sync.WaitGroup // SubscribeHandler's handler calls under way, or nil

	mu       sync.Mutex
	queue    []*pending // ordered by due
	inflight bool
	closed   bool
	changed  chan struct{} // closed and replaced whenever the queue drains or moves
	wake     chan struct{}
	done     chan struct{}
	stats    SubscriptionStats
	log      []Delivery
}

type pending struct {
	ev        *event
	due       time.Time
	attempt   int // attempts made so far
	duplicate bool
}

// event is one published event, shared by every subscription's queue.
type event struct {
	id, typ       string
	name, version string
	nbf, exp      *int64
	at            time.Time
}

// bus is a Server's event publisher: its subscriptions and the clock that
// publishes expiry events. Guarded by Server.mu.
type bus struct {
	ctx    context.Context // ends at Server.Close: handshakes and attempts under way stop
	cancel context.CancelFunc
	subs   []*Subscription
	n      int // subscriptions ever made, for default names
	poke   chan struct{}
	stop   chan struct{}
	done   chan struct{}
	since  time.Time
}

// Subscribe creates an event subscription that POSTs the vault's events to
// endpoint over HTTP, as an Event Grid webhook subscription does (for
// example the URL of a service's kvsecrets EventGridHandler, with its
// shared secret in the query string). The validation handshake of the
// schema runs first: Subscribe returns an error, and creates nothing, if
// the endpoint does not answer it, as Event Grid refuses to create such a
// subscription. kvtest does not do Event Grid's manual validation through
// validationUrl.
//
// Events published from then on are delivered one per request, retried on
// Event Grid's schedule after a failure, and given up on (Outcome
// DeadLettered) after a 400, 401, 403 or 413, after MaxDeliveryAttempts,
// or once EventTimeToLive has passed. Deliveries run on a goroutine of the
// subscription and wait on the vault's clock, so under testing/synctest
// they happen in simulated time. Close the Subscription or the Server to
// stop them.
func (s *Server) Subscribe(endpoint string, o *SubscriptionOptions) (*Subscription, error) {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, errors.New("kvtest: Subscribe: endpoint must be an absolute http or https URL")
	}
	// Event Grid does not follow redirects: a 3xx is a failed attempt.
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if o != nil && o.Client != nil {
		client = o.Client
	}
	send := func(ctx context.Context, method string, h http.Header, body []byte) (int, http.Header, []byte, error) {
		req, err := http.NewRequestWithContext(ctx, method, u.String(), bytes.NewReader(body))
		if err != nil {
			return 0, nil, nil, err
		}
		req.Header = h
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return resp.StatusCode, resp.Header, b, err
	}
	return s.subscribe(u, send, o)
}

// SubscribeHandler creates an event subscription that delivers the vault's
// events to h in process: each delivery is a request to h.ServeHTTP for
// endpoint, which may be a path with a query string ("/events?key=SECRET")
// or an absolute URL, as in Subscribe. Each call runs on a goroutine of
// its own; one that has not answered within DeliveryTimeout is abandoned
// (its request's context is done) and the attempt fails, as with Event
// Grid. Only the first 64 KiB of an answer are read. Everything else is as in
// Subscribe: the handshake first, the schema, retries, duplicates. With an
// in-process Server (NewInProcess) under testing/synctest, a test sees a
// rotation reach its service's handler in simulated time.
func (s *Server) SubscribeHandler(endpoint string, h http.Handler, o *SubscriptionOptions) (*Subscription, error) {
	if h == nil {
		return nil, errors.New("kvtest: SubscribeHandler: nil handler")
	}
	if endpoint == "" {
		return nil, errors.New("kvtest: SubscribeHandler: empty endpoint (want a path such as /events, or a URL)")
	}
	base, _ := url.Parse("https://subscriber.example/")
	ref, err := url.Parse(endpoint)
	if err != nil || (ref.Scheme != "" && ref.Scheme != "https" && ref.Scheme != "http") {
		return nil, errors.New("kvtest: SubscribeHandler: endpoint is not a path or an http or https URL")
	}
	u := base.ResolveReference(ref)
	calls := &sync.WaitGroup{}
	send := func(ctx context.Context, method string, hdr http.Header, body []byte) (int, http.Header, []byte, error) {
		req, err := http.NewRequestWithContext(ctx, method, u.String(), bytes.NewReader(body))
		if err != nil {
			return 0, nil, nil, err
		}
		req.Header = hdr
		req.RemoteAddr = "192.0.2.10:443" // documentation address: Event Grid's, not the test's
		req.RequestURI = u.RequestURI()
		// The handler runs on a goroutine of its own, so that one that
		// does not return is abandoned after DeliveryTimeout, as Event
		// Grid abandons a connection; Close waits for it.
		type answer struct {
			rec *capRecorder
			err error
		}
		done := make(chan answer, 1)
		calls.Add(1)
		go func() {
			defer calls.Done()
			rec := newCapRecorder()
			defer func() {
				// A panicking handler is, to Event Grid, a connection
				// that closed without an answer.
				if p := recover(); p != nil {
					done <- answer{err: fmt.Errorf("kvtest: subscriber handler panicked: %v", p)}
				}
			}()
			h.ServeHTTP(rec, req)
			done <- answer{rec: rec}
		}()
		select {
		case a := <-done:
			if a.err != nil {
				return 0, nil, nil, a.err
			}
			if ctx.Err() != nil {
				// Event Grid stopped waiting: whatever the handler
				// wrote after DeliveryTimeout reached no one.
				return 0, nil, nil, fmt.Errorf("kvtest: subscriber did not answer within %v", DeliveryTimeout)
			}
			return a.rec.code, a.rec.header, a.rec.body.Bytes(), nil
		case <-ctx.Done():
			return 0, nil, nil, fmt.Errorf("kvtest: subscriber did not answer within %v", DeliveryTimeout)
		}
	}
	sub, err := s.subscribe(u, send, o)
	if sub != nil {
		sub.calls = calls
	}
	return sub, err
}

// capRecorder is the response of an in-process subscriber: its status,
// headers and the first 64 KiB of its body, which is all Event Grid reads
// (of the handshake's answer) and all a test needs.
type capRecorder struct {
	code   int
	header http.Header
	body   bytes.Buffer
	wrote  bool
}

const maxAnswerBytes = 64 << 10

func newCapRecorder() *capRecorder { return &capRecorder{code: http.StatusOK, header: http.Header{}} }

func (r *capRecorder) Header() http.Header { return r.header }

func (r *capRecorder) WriteHeader(code int) {
	if !r.wrote {
		r.code, r.wrote = code, true
	}
}

func (r *capRecorder) Write(b []byte) (int, error) {
	r.wrote = true
	if room := maxAnswerBytes - r.body.Len(); room > 0 {
		r.body.Write(b[:min(len(b), room)])
	}
	return len(b), nil
}

func (r *capRecorder) Flush() {}

func (s *Server) subscribe(u *url.URL, send func(context.Context, string, http.Header, []byte) (int, http.Header, []byte, error), o *SubscriptionOptions) (*Subscription, error) {
	if o == nil {
		o = &SubscriptionOptions{}
	}
	sub := &Subscription{srv: s, endpoint: u, send: send, name: o.Name, schema: o.Schema,
		attempts: o.MaxDeliveryAttempts, ttl: o.EventTimeToLive, dup: o.Duplicates, delay: o.Delay, notify: o.OnDelivery,
		changed: make(chan struct{}), wake: make(chan struct{}, 1), done: make(chan struct{})}
	if sub.schema == "" {
		sub.schema = EventGridSchema
	}
	if sub.schema != EventGridSchema && sub.schema != CloudEventSchema {
		return nil, fmt.Errorf("kvtest: SubscriptionOptions.Schema %q is not EventGridSchema or CloudEventSchema", string(sub.schema))
	}
	if sub.attempts == 0 {
		sub.attempts = DefaultMaxDeliveryAttempts
	}
	if sub.attempts < 1 || sub.attempts > 30 {
		return nil, errors.New("kvtest: SubscriptionOptions.MaxDeliveryAttempts must be 1-30, as Event Grid allows")
	}
	if sub.ttl == 0 {
		sub.ttl = DefaultEventTimeToLive
	}
	if sub.ttl < time.Minute || sub.ttl > 24*time.Hour {
		return nil, errors.New("kvtest: SubscriptionOptions.EventTimeToLive must be 1 minute to 24 hours, as Event Grid allows")
	}
	if !(sub.dup >= 0 && sub.dup <= 1) {
		return nil, errors.New("kvtest: SubscriptionOptions.Duplicates must be between 0 and 1")
	}
	if sub.delay < 0 || sub.delay >= sub.ttl {
		return nil, errors.New("kvtest: SubscriptionOptions.Delay must be at least 0 and shorter than EventTimeToLive")
	}
	if sub.name != "" && !validSubscriptionName(sub.name) {
		return nil, errors.New("kvtest: SubscriptionOptions.Name must be 3-64 letters, digits and '-', as Event Grid allows")
	}
	sub.types = []string{SecretNewVersionCreated, SecretNearExpiry, SecretExpired}
	if o.EventTypes != nil {
		sub.types = nil
		for _, t := range o.EventTypes {
			switch t {
			case SecretNewVersionCreated, SecretNearExpiry, SecretExpired:
				if !slices.Contains(sub.types, t) {
					sub.types = append(sub.types, t)
				}
			default:
				return nil, fmt.Errorf("kvtest: SubscriptionOptions.EventTypes: %q is not a secret event type this vault publishes", t)
			}
		}
	}

	s.mu.Lock()
	if s.events == nil {
		ctx, cancel := context.WithCancel(context.Background())
		s.events = &bus{ctx: ctx, cancel: cancel, poke: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	}
	b := s.events
	sub.ctx = b.ctx
	b.n++
	if sub.name == "" {
		sub.name = "kvtest-" + strconv.Itoa(b.n)
	}
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, errors.New("kvtest: Subscribe: the server is closed")
	}

	if err := sub.handshake(b.ctx); err != nil {
		return nil, err
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("kvtest: Subscribe: the server is closed")
	}
	if b.since.IsZero() {
		// The clock starts with the first subscription. Expiry moments
		// that passed before it were published to no one.
		b.since = time.Now()
		s.markExpiryLocked(b.since)
		go s.expiryClock(b)
	}
	b.subs = append(b.subs, sub)
	go sub.run()
	return sub, nil
}

// handshake validates the subscription as Event Grid does before it
// creates one.
func (sub *Subscription) handshake(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, DeliveryTimeout)
	defer cancel()
	h := http.Header{}
	h.Set("aeg-subscription-name", sub.name)
	if sub.schema == CloudEventSchema {
		// CloudEvents' abuse protection (CloudEvents 1.0 webhook spec,
		// section 4): an OPTIONS request naming the sender.
		h.Set("WebHook-Request-Origin", "eventgrid.azure.net")
		h.Set("WebHook-Request-Rate", "120")
		status, rh, _, err := sub.send(ctx, http.MethodOptions, h, nil)
		if err != nil {
			return fmt.Errorf("kvtest: subscription %s: CloudEvents validation handshake: %w", sub.name, err)
		}
		origin := rh.Get("WebHook-Allowed-Origin")
		if status/100 != 2 || (origin != "eventgrid.azure.net" && origin != "*") {
			return fmt.Errorf("kvtest: subscription %s: CloudEvents validation handshake failed: status %d, WebHook-Allowed-Origin %q (want 200 and eventgrid.azure.net or *)", sub.name, status, origin)
		}
		return nil
	}
	code := newUUID()
	ev := []map[string]any{{
		"id":      newUUID(),
		"topic":   sub.srv.ResourceID(),
		"subject": "",
		"data": map[string]string{
			"validationCode": code,
			"validationUrl": "https://rp-kvtest.eventgrid.azure.net:553/eventsubscriptions/" + sub.name +
				"/validate?id=" + code + "&t=" + time.Now().UTC().Format(time.RFC3339) + "&apiVersion=2025-02-15&token=kvtest-not-served",
		},
		"eventType":       "Microsoft.EventGrid.SubscriptionValidationEvent",
		"eventTime":       eventTime(time.Now()),
		"metadataVersion": "1",
		"dataVersion":     "2",
	}}
	body, _ := json.Marshal(ev)
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("aeg-event-type", "SubscriptionValidation")
	h.Set("aeg-delivery-count", "0")
	h.Set("aeg-data-version", "2")
	h.Set("aeg-metadata-version", "1")
	status, _, rb, err := sub.send(ctx, http.MethodPost, h, body)
	if err != nil {
		return fmt.Errorf("kvtest: subscription %s: validation handshake: %w", sub.name, err)
	}
	var ans struct {
		ValidationResponse string `json:"validationResponse"`
	}
	if status/100 != 2 || json.Unmarshal(rb, &ans) != nil || ans.ValidationResponse != code {
		return fmt.Errorf("kvtest: subscription %s: validation handshake failed: status %d, body %.200q (want 200 and {\"validationResponse\":\"<the validationCode>\"})", sub.name, status, rb)
	}
	return nil
}

// ResourceID returns the vault's Azure resource id, the topic (Event Grid
// schema) or source (CloudEvents) of its events:
// /subscriptions/DefaultSubscriptionID/resourceGroups/DefaultResourceGroup/providers/Microsoft.KeyVault/vaults/VaultName.
func (s *Server) ResourceID() string {
	return "/subscriptions/" + DefaultSubscriptionID + "/resourceGroups/" + DefaultResourceGroup +
		"/providers/Microsoft.KeyVault/vaults/" + s.name
}

// publishLocked publishes an event for a version of a secret to every
// subscription that wants its type. The caller holds s.mu.
func (s *Server) publishLocked(typ string, sec *secret, ver *version) {
	b := s.events
	if b == nil || len(b.subs) == 0 {
		return
	}
	ev := &event{id: newUUID(), typ: typ, name: sec.name, version: ver.id, at: time.Now()}
	if ver.nbf != nil {
		n := *ver.nbf
		ev.nbf = &n
	}
	if ver.exp != nil {
		x := *ver.exp
		ev.exp = &x
	}
	for _, sub := range b.subs {
		if slices.Contains(sub.types, typ) {
			sub.enqueue(&pending{ev: ev, due: ev.at.Add(sub.delay)}, true)
		}
	}
}

// newVersionLocked publishes SecretNewVersionCreated for a version just
// written and lets the expiry clock see its exp. The caller holds s.mu.
func (s *Server) newVersionLocked(sec *secret, ver *version) {
	s.publishLocked(SecretNewVersionCreated, sec, ver)
	s.pokeExpiryLocked()
}

// pokeExpiryLocked tells the expiry clock that versions or their exp
// changed. The caller holds s.mu.
func (s *Server) pokeExpiryLocked() {
	if s.events == nil {
		return
	}
	select {
	case s.events.poke <- struct{}{}:
	default:
	}
}

// markExpiryLocked records as published every expiry moment of the
// current versions that is at or before now.
func (s *Server) markExpiryLocked(now time.Time) {
	for _, sec := range s.vault.active {
		v := sec.latest()
		if v.exp == nil {
			continue
		}
		exp := time.Unix(*v.exp, 0)
		v.nearSent = v.nearSent || !exp.Add(-NearExpiryLead).After(now)
		v.expiredSent = v.expiredSent || !exp.After(now)
	}
}

// expiryClock publishes SecretNearExpiry and SecretExpired for the current
// version of each secret when their moments come on the vault's clock. A
// version written (or given an exp) when its moment has already passed
// gets its event at once: SecretExpired alone if it has already expired.
func (s *Server) expiryClock(b *bus) {
	defer close(b.done)
	t := time.NewTimer(time.Hour)
	t.Stop()
	defer t.Stop()
	for {
		s.mu.Lock()
		now := time.Now()
		var next time.Time
		for _, sec := range s.vault.active {
			v := sec.latest()
			if v.exp == nil || v.expiredSent {
				continue
			}
			exp := time.Unix(*v.exp, 0)
			near := exp.Add(-NearExpiryLead)
			if !exp.After(now) {
				v.nearSent, v.expiredSent = true, true
				s.publishLocked(SecretExpired, sec, v)
				continue
			}
			if !v.nearSent && !near.After(now) {
				v.nearSent = true
				s.publishLocked(SecretNearExpiry, sec, v)
			}
			at := exp
			if !v.nearSent {
				at = near
			}
			if next.IsZero() || at.Before(next) {
				next = at
			}
		}
		s.mu.Unlock()
		var tc <-chan time.Time
		if !next.IsZero() {
			t.Reset(time.Until(next))
			tc = t.C
		}
		select {
		case <-tc:
		case <-b.poke:
			t.Stop()
		case <-b.stop:
			return
		}
	}
}

// enqueue adds p to the queue in due order.
func (sub *Subscription) enqueue(p *pending, published bool) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if sub.closed {
		return
	}
	if published {
		sub.stats.Published++
	}
	sub.insertLocked(p)
	select {
	case sub.wake <- struct{}{}:
	default:
	}
}

// run delivers the queue in due order, one attempt at a time.
func (sub *Subscription) run() {
	defer close(sub.done)
	t := time.NewTimer(time.Hour)
	t.Stop()
	defer t.Stop()
	for {
		sub.mu.Lock()
		if sub.closed {
			sub.mu.Unlock()
			return
		}
		if len(sub.queue) == 0 {
			sub.mu.Unlock()
			<-sub.wake
			continue
		}
		p := sub.queue[0]
		if wait := time.Until(p.due); wait > 0 {
			sub.mu.Unlock()
			t.Reset(wait)
			select {
			case <-t.C:
			case <-sub.wake:
				t.Stop()
			}
			continue
		}
		sub.queue = sub.queue[1:]
		sub.inflight = true
		sub.mu.Unlock()

		var d Delivery
		if time.Since(p.ev.at) > sub.ttl {
			// Its time to live passed before this attempt: Event Grid
			// drops it without trying.
			d = Delivery{EventID: p.ev.id, EventType: p.ev.typ, Secret: p.ev.name, Version: p.ev.version,
				Attempt: p.attempt, At: time.Now(), Duplicate: p.duplicate, Err: errExpired}
		} else {
			d = sub.attempt(p)
		}

		sub.mu.Lock()
		d = sub.settleLocked(p, d)
		sub.mu.Unlock()
		if sub.notify != nil {
			sub.notify(d)
		}
		sub.mu.Lock()
		sub.inflight = false
		close(sub.changed)
		sub.changed = make(chan struct{})
		sub.mu.Unlock()
	}
}

// attempt makes one delivery of p.
func (sub *Subscription) attempt(p *pending) Delivery {
	p.attempt++
	d := Delivery{EventID: p.ev.id, EventType: p.ev.typ, Secret: p.ev.name, Version: p.ev.version,
		Attempt: p.attempt, At: time.Now(), Duplicate: p.duplicate}
	body, ctype := sub.body(p.ev)
	h := http.Header{}
	h.Set("Content-Type", ctype)
	h.Set("aeg-event-type", "Notification")
	h.Set("aeg-subscription-name", sub.name)
	h.Set("aeg-delivery-count", strconv.Itoa(p.attempt-1))
	h.Set("aeg-data-version", "1")
	h.Set("aeg-metadata-version", "1")
	ctx, cancel := context.WithTimeout(sub.ctx, DeliveryTimeout)
	d.Status, _, _, d.Err = sub.send(ctx, http.MethodPost, h, body)
	cancel()
	return d
}

// settleLocked decides what comes after an attempt: done, a retry, or
// dead-lettering. The caller holds sub.mu.
func (sub *Subscription) settleLocked(p *pending, d Delivery) Delivery {
	now := time.Now()
	if d.Err != errExpired {
		sub.stats.Attempts++
	}
	switch {
	case d.Err == errExpired:
		d.Outcome = DeadLettered
		sub.stats.DeadLettered++
	case d.Err == nil && d.Status/100 == 2:
		d.Outcome = Delivered
		sub.stats.Delivered++
		if !p.duplicate && sub.dup > 0 && mrand.Float64() < sub.dup {
			sub.insertLocked(&pending{ev: p.ev, due: now, attempt: p.attempt, duplicate: true})
		}
	default:
		sub.stats.Failed++
		next := now.Add(RetryDelay(p.attempt))
		if (d.Err == nil && noRetry(d.Status)) || p.attempt >= sub.attempts || next.Sub(p.ev.at) > sub.ttl {
			d.Outcome = DeadLettered
			sub.stats.DeadLettered++
		} else {
			d.Outcome = Retrying
			p.due = next
			sub.insertLocked(p)
		}
	}
	if len(sub.log) == maxDeliveryLog {
		sub.log = slices.Delete(sub.log, 0, 1)
	}
	sub.log = append(sub.log, d)
	return d
}

// insertLocked adds p to the queue in due order; equal dues keep their
// order of arrival. The caller holds sub.mu.
func (sub *Subscription) insertLocked(p *pending) {
	i, _ := slices.BinarySearchFunc(sub.queue, p.due, func(q *pending, t time.Time) int {
		if q.due.After(t) {
			return 1
		}
		return -1
	})
	sub.queue = slices.Insert(sub.queue, i, p)
}

// body renders ev in the subscription's schema, with the payload shape of
// Key Vault's published samples (testdata/realdata/eventgrid).
func (sub *Subscription) body(ev *event) ([]byte, string) {
	s := sub.srv
	data := eventData{
		ID:         s.URL() + "secrets/" + ev.name + "/" + ev.version,
		VaultName:  s.name,
		ObjectType: "Secret",
		ObjectName: ev.name,
		Version:    ev.version,
		NBF:        unixString(ev.nbf),
		EXP:        unixString(ev.exp),
	}
	if sub.schema == CloudEventSchema {
		b, _ := json.Marshal(cloudEvent{Source: s.ResourceID(), Subject: ev.name, Type: ev.typ,
			Time: eventTime(ev.at), ID: ev.id, Data: data, SpecVersion: "1.0"})
		return b, "application/cloudevents+json; charset=utf-8"
	}
	b, _ := json.Marshal([]gridEvent{{ID: ev.id, Topic: s.ResourceID(), Subject: ev.name, EventType: ev.typ,
		EventTime: eventTime(ev.at), Data: data, DataVersion: "1", MetadataVersion: "1"}})
	return b, "application/json; charset=utf-8"
}

// Wire shapes of events, fields in the order of Key Vault's samples.
type eventData struct {
	ID         string  `json:"Id"`
	VaultName  string  `json:"VaultName"`
	ObjectType string  `json:"ObjectType"`
	ObjectName string  `json:"ObjectName"`
	Version    string  `json:"Version"`
	NBF        *string `json:"NBF"`
	EXP        *string `json:"EXP"`
}

type gridEvent struct {
	ID              string    `json:"id"`
	Topic           string    `json:"topic"`
	Subject         string    `json:"subject"`
	EventType       string    `json:"eventType"`
	EventTime       string    `json:"eventTime"`
	Data            eventData `json:"data"`
	DataVersion     string    `json:"dataVersion"`
	MetadataVersion string    `json:"metadataVersion"`
}

type cloudEvent struct {
	Source      string    `json:"source"`
	Subject     string    `json:"subject"`
	Type        string    `json:"type"`
	Time        string    `json:"time"`
	ID          string    `json:"id"`
	Data        eventData `json:"data"`
	SpecVersion string    `json:"specversion"`
}

// unixString renders a time as the samples do: Unix seconds in a string,
// or null.
func unixString(t *int64) *string {
	if t == nil {
		return nil
	}
	s := strconv.FormatInt(*t, 10)
	return &s
}

// eventTime renders t as Event Grid does, with seven fractional digits:
// 2019-07-25T01:08:33.1036736Z.
func eventTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.0000000Z") }

// Name returns the subscription's name.
func (sub *Subscription) Name() string { return sub.name }

// Endpoint returns the URL deliveries are made to.
func (sub *Subscription) Endpoint() string { return sub.endpoint.String() }

// Stats returns the subscription's counts.
func (sub *Subscription) Stats() SubscriptionStats {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	st := sub.stats
	st.Pending = len(sub.queue)
	if sub.inflight {
		st.Pending++
	}
	return st
}

// Deliveries returns the subscription's delivery attempts, oldest first:
// the last 1,000.
func (sub *Subscription) Deliveries() []Delivery {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	return slices.Clone(sub.log)
}

// Wait blocks until no event published so far is waiting for an attempt or
// in one — each was delivered or given up on — or until ctx is done. A
// retry scheduled hours ahead keeps Wait waiting that long on the vault's
// clock, which under testing/synctest is no time at all.
func (sub *Subscription) Wait(ctx context.Context) error {
	for {
		sub.mu.Lock()
		if len(sub.queue) == 0 && !sub.inflight || sub.closed {
			sub.mu.Unlock()
			return nil
		}
		ch := sub.changed
		sub.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Close deletes the subscription: events not yet delivered are dropped,
// and Close returns after an attempt under way has ended and every call of
// a SubscribeHandler handler has returned, including one abandoned after
// DeliveryTimeout (Server.Close cancels the requests' context first). So
// it must not be called from the subscriber's handler or OnDelivery, which
// run within an attempt (nor may Server.Close).
func (sub *Subscription) Close() {
	s := sub.srv
	s.mu.Lock()
	if b := s.events; b != nil {
		b.subs = slices.DeleteFunc(b.subs, func(x *Subscription) bool { return x == sub })
	}
	s.mu.Unlock()
	sub.mu.Lock()
	already := sub.closed
	sub.closed = true
	sub.queue = nil
	close(sub.changed)
	sub.changed = make(chan struct{})
	sub.mu.Unlock()
	if !already {
		select {
		case sub.wake <- struct{}{}:
		default:
		}
	}
	<-sub.done
	if sub.calls != nil {
		sub.calls.Wait() // a handler abandoned after DeliveryTimeout, too
	}
}

// closeEvents stops every subscription and the expiry clock.
func (s *Server) closeEvents() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	b := s.events
	var subs []*Subscription
	clock := false
	if b != nil {
		subs = slices.Clone(b.subs)
		clock = !b.since.IsZero()
		b.cancel()
	}
	s.mu.Unlock()
	for _, sub := range subs {
		sub.Close()
	}
	if clock {
		close(b.stop)
		<-b.done
	}
}
