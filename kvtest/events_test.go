package kvtest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
)

// sink is a test's Event Grid subscriber: it answers both handshakes,
// records every notification, and answers each with status(n) (n counts
// notifications from 1).
type sink struct {
	mu     sync.Mutex
	got    []received
	status func(n int) int
}

type received struct {
	header http.Header
	body   []byte
	at     time.Time
	url    string
}

func (k *sink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if r.Method == http.MethodOptions {
		w.Header().Set("WebHook-Allowed-Origin", r.Header.Get("WebHook-Request-Origin"))
		return
	}
	if r.Header.Get("aeg-event-type") == "SubscriptionValidation" {
		var evs []struct {
			Data struct {
				ValidationCode string `json:"validationCode"`
			} `json:"data"`
		}
		json.Unmarshal(body, &evs)
		json.NewEncoder(w).Encode(map[string]string{"validationResponse": evs[0].Data.ValidationCode})
		return
	}
	k.mu.Lock()
	k.got = append(k.got, received{r.Header.Clone(), body, time.Now(), r.URL.String()})
	n := len(k.got)
	k.mu.Unlock()
	if k.status != nil {
		w.WriteHeader(k.status(n))
	}
}

func (k *sink) all() []received {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]received(nil), k.got...)
}

// gridEvents decodes an Event Grid schema delivery.
func gridEvents(t *testing.T, b []byte) []gridEvent {
	t.Helper()
	var evs []gridEvent
	if err := json.Unmarshal(b, &evs); err != nil {
		t.Fatalf("delivery is not an Event Grid array: %v: %s", err, b)
	}
	return evs
}

// keyOrder lists the object keys of a JSON document in document order, as
// paths ("data.Id"), so that a delivery can be compared with a real sample.
func keyOrder(t *testing.T, b []byte) []string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	var out []string
	var walk func(prefix string)
	walk = func(prefix string) {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		switch tok {
		case json.Delim('{'):
			for dec.More() {
				k, _ := dec.Token()
				out = append(out, prefix+k.(string))
				walk(prefix + k.(string) + ".")
			}
			dec.Token()
		case json.Delim('['):
			for dec.More() {
				walk(prefix)
			}
			dec.Token()
		}
	}
	walk("")
	return out
}

func TestEventsHaveTheShapeOfKeyVaultsSamples(t *testing.T) {
	for _, tc := range []struct {
		schema EventSchema
		sample string
		ctype  string
	}{
		{EventGridSchema, "rest-api-specs_event-grid-schema_secret_new_version_created.json", "application/json; charset=utf-8"},
		{CloudEventSchema, "rest-api-specs_cloud-events-schema_secret_new_version_created.json", "application/cloudevents+json; charset=utf-8"},
	} {
		t.Run(string(tc.schema), func(t *testing.T) {
			sample, err := os.ReadFile("../testdata/realdata/eventgrid/" + tc.sample)
			if err != nil {
				t.Fatal(err)
			}
			srv, err := NewInProcess(&Options{VaultName: "sample-kv"})
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			var k sink
			sub, err := srv.SubscribeHandler("/events?key=s3cret", &k, &SubscriptionOptions{Schema: tc.schema, Name: "orders"})
			if err != nil {
				t.Fatal(err)
			}
			nbf, exp := time.Unix(1559081980, 0), time.Now().Add(180*24*time.Hour)
			ver, err := srv.SetSecret("newsecret", "value-not-in-events", &SecretOptions{NotBefore: nbf, Expires: exp})
			if err != nil {
				t.Fatal(err)
			}
			if err := sub.Wait(context.Background()); err != nil {
				t.Fatal(err)
			}
			got := k.all()
			if len(got) != 1 {
				t.Fatalf("%d deliveries, want 1", len(got))
			}
			d := got[0]
			var sampleShape any = sample
			if tc.schema == EventGridSchema {
				sampleShape = []byte("[" + string(sample) + "]") // Event Grid delivers an array of one
			}
			if a, b := strings.Join(keyOrder(t, d.body), " "), strings.Join(keyOrder(t, sampleShape.([]byte)), " "); a != b {
				t.Errorf("keys of the delivery:\n%s\nkeys of the real sample:\n%s", a, b)
			}
			if bytes.Contains(d.body, []byte("value-not-in-events")) {
				t.Error("the event carries the secret's value")
			}
			for h, want := range map[string]string{"Content-Type": tc.ctype, "aeg-event-type": "Notification",
				"aeg-subscription-name": "orders", "aeg-delivery-count": "0", "aeg-data-version": "1", "aeg-metadata-version": "1"} {
				if g := d.header.Get(h); g != want {
					t.Errorf("header %s = %q, want %q", h, g, want)
				}
			}
			if d.url != "https://subscriber.example/events?key=s3cret" {
				t.Errorf("request URL %q", d.url)
			}
			var data eventData
			var typ, subject, source string
			if tc.schema == EventGridSchema {
				ev := gridEvents(t, d.body)[0]
				data, typ, subject, source = ev.Data, ev.EventType, ev.Subject, ev.Topic
			} else {
				var ev cloudEvent
				json.Unmarshal(d.body, &ev)
				data, typ, subject, source = ev.Data, ev.Type, ev.Subject, ev.Source
				if ev.SpecVersion != "1.0" {
					t.Errorf("specversion %q", ev.SpecVersion)
				}
			}
			want := eventData{ID: "https://sample-kv.vault.azure.net/secrets/newsecret/" + ver, VaultName: "sample-kv",
				ObjectType: "Secret", ObjectName: "newsecret", Version: ver, NBF: to.Ptr("1559081980"), EXP: to.Ptr(itoa(exp.Unix()))}
			if data.ID != want.ID || data.VaultName != want.VaultName || data.ObjectType != want.ObjectType ||
				data.ObjectName != want.ObjectName || data.Version != want.Version || *data.NBF != *want.NBF || *data.EXP != *want.EXP {
				t.Errorf("data %+v, want %+v", data, want)
			}
			if typ != SecretNewVersionCreated || subject != "newsecret" ||
				source != "/subscriptions/"+DefaultSubscriptionID+"/resourceGroups/kvtest/providers/Microsoft.KeyVault/vaults/sample-kv" {
				t.Errorf("type %q subject %q topic/source %q", typ, subject, source)
			}
		})
	}
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

func TestSubscribeValidatesTheSubscriberFirst(t *testing.T) {
	srv, err := NewInProcess(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.SetSecret("a", "1", nil)
	var calls int
	ok200 := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { calls++ }) // 200, but no handshake answer
	if _, err := srv.SubscribeHandler("/events", ok200, nil); err == nil || !strings.Contains(err.Error(), "validationResponse") {
		t.Errorf("Event Grid schema: a subscriber that does not echo the code was accepted: %v", err)
	}
	if _, err := srv.SubscribeHandler("/events", ok200, &SubscriptionOptions{Schema: CloudEventSchema}); err == nil || !strings.Contains(err.Error(), "WebHook-Allowed-Origin") {
		t.Errorf("CloudEvents: a subscriber without WebHook-Allowed-Origin was accepted: %v", err)
	}
	if calls != 2 {
		t.Errorf("%d handshake requests, want 2", calls)
	}
	// Nothing was subscribed: a new version is delivered to no one.
	srv.SetSecret("a", "2", nil)
	if calls != 2 {
		t.Errorf("a refused subscriber received %d more requests", calls-2)
	}
	for _, o := range []*SubscriptionOptions{
		{Schema: "EventGrid"}, {MaxDeliveryAttempts: 31}, {EventTimeToLive: time.Second}, {Duplicates: 2},
		{EventTypes: []string{"Microsoft.KeyVault.KeyNewVersionCreated"}}, {Delay: -time.Second},
	} {
		if _, err := srv.SubscribeHandler("/events", &sink{}, o); err == nil {
			t.Errorf("options %+v accepted", o)
		}
	}
	if _, err := srv.Subscribe("/relative", nil); err == nil {
		t.Error("Subscribe accepted a relative URL")
	}
}

func TestDeliveryRetriesOnEventGridsSchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, err := NewInProcess(nil)
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		// Fails 11 times, then succeeds: every step of the schedule and
		// the 12-hour repeat.
		k := &sink{status: func(n int) int {
			if n <= 11 {
				return http.StatusServiceUnavailable
			}
			return http.StatusOK
		}}
		sub, err := srv.SubscribeHandler("/events", k, nil)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		srv.SetSecret("a", "1", nil)
		sub.Wait(context.Background())
		got := k.all()
		want := []time.Duration{0, 10 * time.Second, 30 * time.Second, time.Minute, 5 * time.Minute, 10 * time.Minute,
			30 * time.Minute, time.Hour, 3 * time.Hour, 6 * time.Hour, 12 * time.Hour}
		if len(got) != len(want) {
			// 11 attempts fit in 24 hours; the 12th would be at 35h51m.
			t.Fatalf("%d attempts, want %d (the 12th would pass the 24-hour time to live)", len(got), len(want))
		}
		at := start
		for i, r := range got {
			if gap := r.at.Sub(at); gap != want[i] {
				t.Errorf("attempt %d came %v after the previous, want %v", i+1, gap, want[i])
			}
			at = r.at
			if c := r.header.Get("aeg-delivery-count"); c != itoa(int64(i)) {
				t.Errorf("attempt %d: aeg-delivery-count %q", i+1, c)
			}
		}
		ds := sub.Deliveries()
		if last := ds[len(ds)-1]; last.Outcome != DeadLettered || last.Status != 503 {
			t.Errorf("last attempt %+v, want dead-lettered: the next retry would pass the time to live", last)
		}
		if ids := map[string]bool{}; true {
			for _, r := range got {
				ids[gridEvents(t, r.body)[0].ID] = true
			}
			if len(ids) != 1 {
				t.Errorf("retries carried %d event ids, want the same one", len(ids))
			}
		}
		st := sub.Stats()
		if st != (SubscriptionStats{Published: 1, Attempts: 11, Failed: 11, DeadLettered: 1}) {
			t.Errorf("stats %+v", st)
		}
	})
}

func TestDeliveryStopsWhereEventGridStops(t *testing.T) {
	for _, tc := range []struct {
		name     string
		status   int
		opts     SubscriptionOptions
		attempts int
		outcome  DeliveryOutcome
	}{
		{"401 is not retried", 401, SubscriptionOptions{}, 1, DeadLettered},
		{"403 is not retried", 403, SubscriptionOptions{}, 1, DeadLettered},
		{"400 is not retried", 400, SubscriptionOptions{}, 1, DeadLettered},
		{"413 is not retried", 413, SubscriptionOptions{}, 1, DeadLettered},
		{"404 is retried", 404, SubscriptionOptions{MaxDeliveryAttempts: 3}, 3, DeadLettered},
		{"MaxDeliveryAttempts", 500, SubscriptionOptions{MaxDeliveryAttempts: 5}, 5, DeadLettered},
		// Attempts at 0, 10 s, 40 s and 1m40s; the next (6m40s) would pass 2 minutes.
		{"EventTimeToLive", 500, SubscriptionOptions{EventTimeToLive: 2 * time.Minute}, 4, DeadLettered},
		{"202 is success", 202, SubscriptionOptions{}, 1, Delivered},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				srv, _ := NewInProcess(nil)
				defer srv.Close()
				k := &sink{status: func(int) int { return tc.status }}
				sub, err := srv.SubscribeHandler("/e", k, &tc.opts)
				if err != nil {
					t.Fatal(err)
				}
				srv.SetSecret("a", "1", nil)
				sub.Wait(context.Background())
				ds := sub.Deliveries()
				want := tc.attempts
				if len(ds) != want || ds[len(ds)-1].Outcome != tc.outcome {
					t.Errorf("%d attempts ending %v, want %d ending %v", len(ds), ds[len(ds)-1].Outcome, want, tc.outcome)
				}
			})
		})
	}
}

func TestDeliveryWithoutAnAnswerIsRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, _ := NewInProcess(nil)
		defer srv.Close()
		var n atomic.Int32
		sub, err := srv.SubscribeHandler("/e", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("aeg-event-type") == "SubscriptionValidation" {
				(&sink{}).ServeHTTP(w, r)
				return
			}
			switch n.Add(1) {
			case 1:
				panic(http.ErrAbortHandler) // the connection closes without an answer
			case 2:
				<-r.Context().Done() // no answer within DeliveryTimeout
			case 3:
				time.Sleep(time.Hour) // ignores its context: abandoned after DeliveryTimeout, as Event Grid abandons it
			}
		}), nil)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		srv.SetSecret("a", "1", nil)
		sub.Wait(context.Background())
		ds := sub.Deliveries()
		if len(ds) != 4 || ds[0].Err == nil || ds[1].Err == nil || ds[2].Err == nil || ds[3].Outcome != Delivered {
			t.Fatalf("deliveries %+v", ds)
		}
		// 10 s after the first, 30 s after the second ends and 1 minute
		// after the third ends (each took DeliveryTimeout).
		if got := ds[3].At.Sub(start); got != 10*time.Second+DeliveryTimeout+30*time.Second+DeliveryTimeout+time.Minute {
			t.Errorf("fourth attempt at %v", got)
		}
	})
}

func TestDuplicatesDeliverAnEventAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, _ := NewInProcess(nil)
		defer srv.Close()
		k := &sink{}
		sub, err := srv.SubscribeHandler("/e", k, &SubscriptionOptions{Duplicates: 1})
		if err != nil {
			t.Fatal(err)
		}
		srv.SetSecret("a", "1", nil)
		srv.SetSecret("b", "1", nil)
		sub.Wait(context.Background())
		got := k.all()
		if len(got) != 4 {
			t.Fatalf("%d deliveries of 2 events with Duplicates 1, want 4", len(got))
		}
		ids := map[string]int{}
		for _, r := range got {
			ids[gridEvents(t, r.body)[0].ID]++
		}
		for id, n := range ids {
			if n != 2 {
				t.Errorf("event %s delivered %d times", id, n)
			}
		}
		if st := sub.Stats(); st.Published != 2 || st.Delivered != 4 {
			t.Errorf("stats %+v", st)
		}
	})
}

func TestExpiryEventsOnTheVaultsClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, _ := NewInProcess(nil)
		defer srv.Close()
		day := 24 * time.Hour
		start := time.Now()
		// Before any subscription: its NearExpiry moment passes unseen.
		srv.SetSecret("old", "1", &SecretOptions{Expires: start.Add(20 * day)})

		k := &sink{}
		sub, err := srv.SubscribeHandler("/e", k, &SubscriptionOptions{EventTypes: []string{SecretNearExpiry, SecretExpired}})
		if err != nil {
			t.Fatal(err)
		}
		srv.SetSecret("a", "1", &SecretOptions{Expires: start.Add(45 * day)})
		srv.SetSecret("soon", "1", &SecretOptions{Expires: start.Add(10 * day)}) // within 30 days: at once
		srv.SetSecret("gone", "1", &SecretOptions{Expires: start.Add(-day)})     // already expired: Expired alone
		srv.SetSecret("none", "1", nil)                                          // no exp: nothing
		srv.SetSecret("replaced", "1", &SecretOptions{Expires: start.Add(40 * day)})
		srv.SetSecret("replaced", "2", nil) // the current version has no exp: nothing

		// PATCH an exp through the REST API: the moments move.
		c, _ := azsecrets.NewClient(srv.URL(), srv.Credential(), srv.ClientOptions())
		vers, _ := srv.Versions("none")
		if _, err := c.UpdateSecretProperties(context.Background(), "none", vers[0], azsecrets.UpdateSecretPropertiesParameters{
			SecretAttributes: &azsecrets.SecretAttributes{Expires: to.Ptr(start.Add(60 * day))}}, nil); err != nil {
			t.Fatal(err)
		}

		time.Sleep(61 * day)
		synctest.Wait()
		type ev struct {
			typ, name string
			day       int
		}
		var got []ev
		for _, r := range k.all() {
			e := gridEvents(t, r.body)[0]
			got = append(got, ev{strings.TrimPrefix(e.EventType, "Microsoft.KeyVault."), e.Subject, int(r.at.Sub(start) / day)})
		}
		want := []ev{
			{"SecretNearExpiry", "soon", 0}, {"SecretExpired", "gone", 0},
			{"SecretNearExpiry", "a", 15}, {"SecretExpired", "soon", 10}, {"SecretExpired", "old", 20},
			{"SecretNearExpiry", "none", 30}, {"SecretExpired", "a", 45}, {"SecretExpired", "none", 60},
		}
		// Order within the same instant is unspecified: compare as sets,
		// with each event's day.
		sortEv := func(x []ev) string {
			var s []string
			for _, e := range x {
				s = append(s, e.typ+" "+e.name+" day "+itoa(int64(e.day)))
			}
			slices.Sort(s)
			return strings.Join(s, "\n")
		}
		if a, b := sortEv(got), sortEv(want); a != b {
			t.Errorf("events:\n%s\nwant:\n%s", a, b)
		}
		_ = sub
	})
}

func TestSubscribeDeliversToAURL(t *testing.T) {
	srv := NewTestServer(t, nil)
	k := &sink{}
	hs := httptest.NewServer(k) // 127.0.0.1
	defer hs.Close()
	sub, err := srv.Subscribe(hs.URL+"/events?key=k", &SubscriptionOptions{Schema: CloudEventSchema})
	if err != nil {
		t.Fatal(err)
	}
	// A new version written through the REST API, by the real client.
	c := newClient(t, srv)
	resp, err := c.SetSecret(context.Background(), "MyApiKey", azsecrets.SetSecretParameters{Value: to.Ptr("v")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sub.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	got := k.all()
	if len(got) != 1 {
		t.Fatalf("%d deliveries", len(got))
	}
	var ev cloudEvent
	json.Unmarshal(got[0].body, &ev)
	if ev.Data.Version != resp.ID.Version() || got[0].url != "/events?key=k" {
		t.Errorf("delivered %+v to %s", ev, got[0].url)
	}
	// Closing the server ends the subscription; later writes deliver
	// nothing and Subscribe refuses.
	sub.Close()
	srv.SetSecret("MyApiKey", "w", nil)
	if len(k.all()) != 1 {
		t.Error("a closed subscription delivered")
	}
	srv.Close()
	if _, err := srv.Subscribe(hs.URL, nil); err == nil {
		t.Error("Subscribe on a closed server succeeded")
	}
}

func TestCloseEndsPendingRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, _ := NewInProcess(nil)
		k := &sink{status: func(int) int { return 500 }}
		sub, err := srv.SubscribeHandler("/e", k, nil)
		if err != nil {
			t.Fatal(err)
		}
		srv.SetSecret("a", "1", &SecretOptions{Expires: time.Now().Add(400 * 24 * time.Hour)})
		synctest.Wait()
		if st := sub.Stats(); st.Pending != 1 || st.Attempts != 1 {
			t.Fatalf("stats %+v", st)
		}
		srv.Close() // the subscription's and the clock's goroutines end: synctest.Test would fail otherwise
		if err := sub.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		if st := sub.Stats(); st.Pending != 0 || st.Attempts != 1 {
			t.Errorf("after Close: stats %+v", st)
		}
	})
}
