package kvsecrets

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kvsecrets/kvsecrets/internal/recordings"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

const sampleVersion = "ee059b2bb5bc48398a53b168c6cdcb10" // the version in the real samples

// sampleVault is a fake vault named like the real samples' vault, with
// "newsecret" cached by the returned Provider.
func sampleVault(t *testing.T, o *Options) (*fakeVault, *Provider) {
	v := newFakeVault()
	v.url = "https://sample-kv.vault.azure.net/"
	v.set("newsecret", "old-value")
	p := v.newProvider(t, o)
	mustGet(t, p, "newsecret", "old-value")
	return v, p
}

func deliver(h http.Handler, method, target string, body []byte, header http.Header) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, bytes.NewReader(body))
	for k, v := range header {
		r.Header[k] = v
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func samples(t *testing.T) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(recordings.EventGridDir(), "*.json"))
	if err != nil || len(files) != 5 {
		t.Fatalf("event samples: %v %v", files, err)
	}
	out := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(f)] = b
	}
	return out
}

func TestEventGridRealSamplesTriggerARefresh(t *testing.T) {
	for name, body := range samples(t) {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				v, p := sampleVault(t, nil)
				v.set("newsecret", "new-value", withID(sampleVersion))
				h := p.EventGridHandler(&EventGridOptions{SharedSecret: "s3cret"})
				before := v.requests.Load()
				w := deliver(h, http.MethodPost, "/events?key=s3cret", body, nil)
				if w.Code != http.StatusOK {
					t.Fatalf("status %d: %s", w.Code, w.Body)
				}
				synctest.Wait()
				if v.requests.Load() != before+1 {
					t.Fatalf("vault reads = %d, want one refresh", v.requests.Load()-before)
				}
				mustGet(t, p, "newsecret", "new-value")
				if st := p.Stats(); st.EventsReceived != 1 || st.EventsActedOn != 1 || st.Rotations != 1 {
					t.Fatalf("stats = %+v", st)
				}
				// The same event again: the version is now cached, nothing to do.
				deliver(h, http.MethodPost, "/events?key=s3cret", body, nil)
				synctest.Wait()
				if v.requests.Load() != before+1 {
					t.Fatal("a replayed event read the vault")
				}
			})
		})
	}
}

func TestEventGridSubscriptionValidation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, p := sampleVault(t, nil)
		h := p.EventGridHandler(&EventGridOptions{SharedSecret: "s3cret"})
		body := []byte(`[{"id":"2d1781af-3a4c-4d7c-bd0c-e34b19da4e66","topic":"/subscriptions/x","subject":"","data":{"validationCode":"512d38b6-c7b8-40c8-89fe-f46f9e9622b6","validationUrl":"https://rp-eastus2.eventgrid.azure.net:553/eventsubscriptions/x/validate?id=512d38b6"},"eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","eventTime":"2018-01-25T22:12:19.4556811Z","metadataVersion":"1","dataVersion":"1"}]`)
		w := deliver(h, http.MethodPost, "/events?key=s3cret", body, http.Header{"Aeg-Event-Type": {"SubscriptionValidation"}})
		var got map[string]string
		json.Unmarshal(w.Body.Bytes(), &got)
		if w.Code != 200 || got["validationResponse"] != "512d38b6-c7b8-40c8-89fe-f46f9e9622b6" {
			t.Fatalf("validation: %d %s", w.Code, w.Body)
		}
		w = deliver(h, http.MethodOptions, "/events?key=s3cret", nil, http.Header{"Webhook-Request-Origin": {"eventemitter.example.com"}})
		if w.Code != 200 || w.Header().Get("WebHook-Allowed-Origin") != "eventemitter.example.com" || w.Header().Get("WebHook-Allowed-Rate") == "" {
			t.Fatalf("CloudEvents handshake: %d %v", w.Code, w.Header())
		}
		if w := deliver(h, http.MethodOptions, "/events", nil, http.Header{"Webhook-Request-Origin": {"x"}}); w.Code != 401 {
			t.Fatalf("unauthenticated handshake: %d", w.Code)
		}
	})
}

func TestEventGridRefusesHostileDeliveries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p := sampleVault(t, nil)
		v.set("newsecret", "new-value")
		body := samples(t)["rest-api-specs_event-grid-schema_secret_new_version_created.json"]
		bearer := func(r *http.Request) error {
			if r.Header.Get("Authorization") != "Bearer good" {
				return errors.New("bad token")
			}
			return nil
		}
		h := p.EventGridHandler(&EventGridOptions{SharedSecret: "s3cret", Authorize: bearer})
		huge := append([]byte(`[{"eventType":"x","data":{"Id":"`), bytes.Repeat([]byte("a"), 2<<20)...)
		for _, tc := range []struct {
			method, target string
			body           []byte
			header         http.Header
			want           int
		}{
			{"POST", "/e", body, http.Header{"Authorization": {"Bearer good"}}, 401},                               // no shared secret
			{"POST", "/e?key=wrong", body, http.Header{"Authorization": {"Bearer good"}}, 401},                     // wrong shared secret
			{"POST", "/e?key=s3cret", body, http.Header{"Authorization": {"Bearer forged"}}, 401},                  // token refused
			{"POST", "/e?key=s3cret", body, nil, 401},                                                              // no token
			{"GET", "/e?key=s3cret", nil, http.Header{"Authorization": {"Bearer good"}}, 405},                      // method
			{"POST", "/e?key=s3cret", huge, http.Header{"Authorization": {"Bearer good"}}, 413},                    // size
			{"POST", "/e?key=s3cret", []byte(`{"eventType":`), http.Header{"Authorization": {"Bearer good"}}, 400}, // malformed
			{"POST", "/e?key=s3cret", []byte(`"a string"`), http.Header{"Authorization": {"Bearer good"}}, 400},
			{"POST", "/e?key=s3cret", []byte(`[1,2]`), http.Header{"Authorization": {"Bearer good"}}, 400},
		} {
			if w := deliver(h, tc.method, tc.target, tc.body, tc.header); w.Code != tc.want {
				t.Errorf("%s %s: %d, want %d", tc.method, tc.target, w.Code, tc.want)
			}
		}
		synctest.Wait()
		if n := v.count("newsecret"); n != 1 {
			t.Fatalf("rejected deliveries read the vault: %d reads", n)
		}
		mustGet(t, p, "newsecret", "old-value")
		if st := p.Stats(); st.EventsRejected != 9 || st.EventsReceived != 0 {
			t.Fatalf("stats = %+v", st)
		}
		if w := deliver(p.EventGridHandler(&EventGridOptions{AllowUnauthenticated: true}), "POST", "/e", body, nil); w.Code != 200 {
			t.Fatalf("AllowUnauthenticated: %d", w.Code)
		}
	})
}

func TestEventGridIgnoresWhatIsNotOurs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p := sampleVault(t, nil)
		v.set("newsecret", "new-value")
		h := p.EventGridHandler(&EventGridOptions{AllowUnauthenticated: true})
		ev := func(typ, id, objType string) []byte {
			return []byte(`{"id":"1","topic":"t","subject":"s","eventType":"` + typ + `","eventTime":"2019-07-25T01:08:33Z","data":{"Id":"` + id +
				`","VaultName":"v","ObjectType":"` + objType + `","ObjectName":"newsecret","Version":"v","NBF":null,"EXP":null},"dataVersion":"1","metadataVersion":"1"}`)
		}
		for _, body := range [][]byte{
			ev(EventSecretNewVersionCreated, "https://other-kv.vault.azure.net/secrets/newsecret/"+sampleVersion, "Secret"), // other vault
			ev("Microsoft.KeyVault.KeyNewVersionCreated", "https://sample-kv.vault.azure.net/keys/newsecret/"+sampleVersion, "Key"),
			ev(EventSecretNewVersionCreated, "https://sample-kv.vault.azure.net/secrets/notcached/"+sampleVersion, "Secret"), // not cached
			ev(EventSecretNewVersionCreated, "https://sample-kv.vault.azure.net/secrets/bad_name/"+sampleVersion, "Secret"),
			ev(EventSecretNewVersionCreated, "not a url", "Secret"),
			ev("Microsoft.Storage.BlobCreated", "https://sample-kv.vault.azure.net/secrets/newsecret/"+sampleVersion, "Secret"),
		} {
			if w := deliver(h, "POST", "/e", body, nil); w.Code != 200 {
				t.Fatalf("status %d for %s", w.Code, body)
			}
		}
		synctest.Wait()
		if n := v.count("newsecret"); n != 1 {
			t.Fatalf("ignored events read the vault: %d reads", n)
		}
		if st := p.Stats(); st.EventsReceived != 6 || st.EventsActedOn != 0 {
			t.Fatalf("stats = %+v", st)
		}
	})
}

func TestEventGridBurstIsCoalesced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p := sampleVault(t, nil)
		h := p.EventGridHandler(&EventGridOptions{AllowUnauthenticated: true})
		// Forged events, each naming a different version: each would
		// otherwise be a read of the vault.
		start := v.requests.Load()
		for i := range 200 {
			body := []byte(`[{"eventType":"Microsoft.KeyVault.SecretNewVersionCreated","data":{"Id":"https://sample-kv.vault.azure.net/secrets/newsecret/` +
				strings.Repeat("0", 29) + string(rune('a'+i%26)) + `ff"}}]`)
			deliver(h, "POST", "/e", body, nil)
			time.Sleep(10 * time.Millisecond) // 200 events over 2 seconds
		}
		synctest.Wait()
		time.Sleep(time.Second)
		synctest.Wait()
		// One read at once, then at most one per second.
		n := v.requests.Load() - start
		t.Logf("vault reads for 200 forged events over 2s: %d", n)
		if n < 2 || n > 4 {
			t.Fatalf("vault reads for a 2s burst = %d, want 2-4", n)
		}
		// Expired events refresh even for the cached version.
		ver := v.secrets["newsecret"].versions[0].id
		time.Sleep(2 * time.Second)
		before := v.requests.Load()
		deliver(h, "POST", "/e", []byte(`{"type":"Microsoft.KeyVault.SecretExpired","specversion":"1.0","data":{"Id":"https://sample-kv.vault.azure.net/secrets/newsecret/`+ver+`","EXP":1559082102}}`), nil)
		synctest.Wait()
		if v.requests.Load() != before+1 {
			t.Fatal("SecretExpired did not refresh")
		}
	})
}

func TestEventGridNearExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		logs := &logRecorder{}
		v, p := sampleVault(t, &Options{Logger: slog.New(logs)})
		var got []ExpiryEvent
		h := p.EventGridHandler(&EventGridOptions{AllowUnauthenticated: true, OnNearExpiry: func(e ExpiryEvent) { got = append(got, e) }})
		before := v.requests.Load()
		body := []byte(`{"eventType":"Microsoft.KeyVault.SecretNearExpiry","data":{"Id ":"https://sample-kv.vault.azure.net/secrets/newsecret/` + sampleVersion + `","NBF":"1559081980","EXP":1559082102}}`)
		if w := deliver(h, "POST", "/e", body, nil); w.Code != 200 {
			t.Fatal(w.Code)
		}
		if len(got) != 1 || got[0].Name != "newsecret" || got[0].Version != sampleVersion || got[0].Expires.Unix() != 1559082102 || got[0].NotBefore.Unix() != 1559081980 {
			t.Fatalf("OnNearExpiry = %+v", got)
		}
		if logs.count(slog.LevelWarn, "near expiry") != 1 || v.requests.Load() != before {
			t.Fatal("near expiry: want a warning and no vault read")
		}
	})
}

func TestParseEventsQuirks(t *testing.T) {
	for name, body := range samples(t) {
		evs, err := parseEvents(body)
		if err != nil || len(evs) != 1 {
			t.Fatalf("%s: %v %v", name, evs, err)
		}
		ev := evs[0]
		_, n, ver, ok := parseEventID(ev.ID)
		if ev.Type != EventSecretNewVersionCreated || !ok || n != "newsecret" || ver != sampleVersion ||
			ev.NotBefore.Unix() != 1559081980 || ev.Expires.Unix() != 1559082102 || ev.ObjectType != "Secret" {
			t.Fatalf("%s: %+v", name, ev)
		}
	}
}

func TestParseEventsUnixTimes(t *testing.T) {
	for raw, want := range map[string]int64{
		`1559082102`: 1559082102, `"1559082102"`: 1559082102, `" 1559082102 "`: 1559082102, `1559082102.9`: 1559082102,
		`null`: 0, ``: 0, `""`: 0, `"soon"`: 0, `-5`: 0, `0`: 0, `1e12`: 0, `"Inf"`: 0, `"NaN"`: 0, `"nan"`: 0,
	} {
		got := looseUnix(json.RawMessage(raw))
		if want == 0 && !got.IsZero() || want != 0 && got.Unix() != want {
			t.Errorf("looseUnix(%s) = %v, want %d", raw, got, want)
		}
	}
}

func FuzzParseEvents(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(recordings.EventGridDir(), "*.json"))
	for _, file := range files {
		b, _ := os.ReadFile(file)
		f.Add(b)
	}
	f.Add([]byte(`{"type":"Microsoft.KeyVault.SecretExpired","data":{"Id":"https://a.vault.azure.net/secrets/x","EXP":null}}`))
	f.Add([]byte(`[{"eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","data":{"validationCode":"c"}}]`))
	f.Add([]byte(`[{"EventType ":"Microsoft.KeyVault.SecretNearExpiry","DATA":{"\u0049d":"https://a.vault.azure.net/secrets/x/` + sampleVersion + `","nbf":1.5e9,"exp":" \"1559082102\""}},null,{"type":"x","data":null}]`))
	f.Add([]byte(`{"eventType":"","type":" Microsoft.KeyVault.SecretExpired ","data":{"\u0130D":"https://a.vault.azure.net/secrets/x","objectType":"\ud800"}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		evs, err := parseEvents(body)
		// The same as the map per event it replaced, where that was
		// deterministic, for the event types handled here.
		if want, ambiguous, werr := parseEventsMaps(body); !ambiguous && len(want) <= maxEvents {
			for i := range want {
				if want[i] = handled(want[i]); i < len(evs) && evs[i] != want[i] {
					t.Fatalf("event %d = %+v, want %+v", i, evs[i], want[i])
				}
			}
			if (err == nil) != (werr == nil) || len(evs) != len(want) {
				t.Fatalf("%d events, %v; want %d, %v", len(evs), err, len(want), werr)
			}
		}
		if err != nil {
			return
		}
		for _, ev := range evs {
			if host, name, version, ok := parseEventID(ev.ID); ok {
				if checkName(name) != nil || (version != "" && checkVersion(version) != nil) || host == "" {
					t.Fatalf("parseEventID accepted %q", ev.ID)
				}
			}
		}
	})
}

func TestEventGridSpreadDelaysTheRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p := sampleVault(t, nil)
		v.set("newsecret", "new-value", withID(sampleVersion))
		h := p.EventGridHandler(&EventGridOptions{AllowUnauthenticated: true, Spread: 10 * time.Second})
		before := v.requests.Load()
		deliver(h, "POST", "/e", samples(t)["rest-api-specs_secret_new_version_created.json"], nil)
		deliver(h, "POST", "/e", samples(t)["rest-api-specs_secret_new_version_created.json"], nil) // folded
		synctest.Wait()
		mustGet(t, p, "newsecret", "old-value") // not yet
		time.Sleep(10 * time.Second)
		synctest.Wait()
		mustGet(t, p, "newsecret", "new-value")
		if n := v.requests.Load() - before; n != 1 {
			t.Fatalf("vault reads = %d, want 1", n)
		}
	})
}

func TestEventGridCapsEventsPerDelivery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v, p := sampleVault(t, nil)
		v.set("newsecret", "new-value")
		h := p.EventGridHandler(&EventGridOptions{AllowUnauthenticated: true})
		// n events of which the first would refresh newsecret.
		batch := func(n int) []byte {
			b := []byte(`[{"eventType":"Microsoft.KeyVault.SecretNewVersionCreated","data":{"Id":"https://sample-kv.vault.azure.net/secrets/newsecret"}}`)
			for range n - 1 {
				b = append(b, `,{"eventType":"Microsoft.Storage.BlobCreated","data":{"url":"https://a.blob.core.windows.net/c/b"}}`...)
			}
			return append(b, ']')
		}
		for _, body := range [][]byte{batch(maxEvents + 1), junkEmptyEvents()} {
			w := deliver(h, "POST", "/e", body, nil)
			if w.Code != http.StatusRequestEntityTooLarge || !strings.Contains(w.Body.String(), "more than 5000 events") {
				t.Fatalf("%d bytes: %d %s", len(body), w.Code, w.Body)
			}
		}
		synctest.Wait()
		if n := v.count("newsecret"); n != 1 {
			t.Fatalf("refused deliveries read the vault: %d reads", n)
		}
		mustGet(t, p, "newsecret", "old-value")
		if st := p.Stats(); st.EventsRejected != 2 || st.EventsReceived != 0 || st.EventsActedOn != 0 {
			t.Fatalf("stats = %+v", st)
		}
		if w := deliver(h, "POST", "/e", batch(maxEvents), nil); w.Code != http.StatusOK {
			t.Fatalf("%d events: %d %s", maxEvents, w.Code, w.Body)
		}
		synctest.Wait()
		mustGet(t, p, "newsecret", "new-value")
		if st := p.Stats(); st.EventsRejected != 2 || st.EventsReceived != maxEvents || st.EventsActedOn != 1 {
			t.Fatalf("stats = %+v", st)
		}
	})
}

// A delivery of 1 MiB of events that are not ours allocates about twice
// its size (the body read, then the events), not the 20 to 300 MB that a
// map per event cost. Counted in bytes allocated, not timed.
func TestEventGridJunkDeliveryAllocatesLittle(t *testing.T) {
	_, p := sampleVault(t, nil)
	h := p.EventGridHandler(&EventGridOptions{AllowUnauthenticated: true})
	for _, tc := range []struct {
		name string
		body []byte
		want int
	}{
		{"349,522 empty events", junkEmptyEvents(), http.StatusRequestEntityTooLarge},
		{"5,000 events of another vault", junkEvents(5000, otherVaultEvent), http.StatusOK},
		{"5,000 events of another type", junkEvents(5000, otherTypeEvent), http.StatusOK},
	} {
		deliver(h, "POST", "/e", tc.body, nil) // warm up
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		w := deliver(h, "POST", "/e", tc.body, nil)
		runtime.ReadMemStats(&after)
		if w.Code != tc.want {
			t.Fatalf("%s: %d %s", tc.name, w.Code, w.Body)
		}
		alloc := after.TotalAlloc - before.TotalAlloc
		t.Logf("%s (%d bytes): %d bytes allocated", tc.name, len(tc.body), alloc)
		if alloc > 10_000_000 {
			t.Errorf("%s: %d bytes allocated, want under 10 MB", tc.name, alloc)
		}
	}
	// Events not handled here cost no allocation each: there is the slice
	// of results (and under -race, the walks' closures).
	body := junkEvents(5000, otherTypeEvent)
	if n := testing.AllocsPerRun(3, func() { parseEvents(body) }); n > 10 {
		t.Fatalf("parseEvents of 5,000 events of another type: %v allocations, want a few", n)
	}
}

// parseEventsMaps is parseEvents as it was, decoding each event into a map,
// kept to check the one that replaced it. ambiguous reports an object of
// keys that differ only in case or spacing: which one counted depended on
// the map's order.
func parseEventsMaps(body []byte) (_ []gridEvent, ambiguous bool, _ error) {
	body = bytes.TrimSpace(body)
	var raws []json.RawMessage
	switch {
	case len(body) > 0 && body[0] == '[':
		if err := json.Unmarshal(body, &raws); err != nil {
			return nil, false, errNotJSON
		}
	case len(body) > 0 && body[0] == '{':
		raws = []json.RawMessage{body}
	default:
		return nil, false, errNotJSON
	}
	looseObject := func(raw json.RawMessage) (map[string]json.RawMessage, error) {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, err
		}
		out := make(map[string]json.RawMessage, len(m))
		for k, v := range m {
			k = strings.ToLower(strings.TrimSpace(k))
			_, dup := out[k]
			ambiguous = ambiguous || dup
			out[k] = v
		}
		return out, nil
	}
	looseString := func(raw json.RawMessage) string {
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return ""
		}
		return strings.TrimSpace(s)
	}
	out := make([]gridEvent, 0, len(raws))
	for _, raw := range raws {
		env, err := looseObject(raw)
		if err != nil {
			return nil, ambiguous, errNotJSON
		}
		var ev gridEvent
		ev.Type = looseString(env["eventtype"])
		if ev.Type == "" {
			ev.Type = looseString(env["type"])
		}
		if d, ok := env["data"]; ok && len(bytes.TrimSpace(d)) > 0 && bytes.TrimSpace(d)[0] == '{' {
			data, err := looseObject(d)
			if err != nil {
				return nil, ambiguous, errNotJSON
			}
			ev.ID = looseString(data["id"])
			ev.ObjectType = looseString(data["objecttype"])
			ev.NotBefore = looseUnix(data["nbf"])
			ev.Expires = looseUnix(data["exp"])
			ev.ValidationCode = looseString(data["validationcode"])
		}
		out = append(out, ev)
	}
	return out, ambiguous, nil
}

// handled is ev as parseEvents reads it: nothing but that it is not ours
// if its type is not handled here.
func handled(ev gridEvent) gridEvent {
	switch ev.Type {
	case EventSecretNewVersionCreated, EventSecretNearExpiry, EventSecretExpired, eventSubscriptionValidation:
		return ev
	}
	return gridEvent{}
}

// TestEventGridHandlerWithoutAuthPanics: a handler that could never accept
// a delivery is a programming error, reported at construction with the fix.
func TestEventGridHandlerWithoutAuthPanics(t *testing.T) {
	v := newFakeVault()
	p := v.newProvider(t, nil)
	for name, opts := range map[string]*EventGridOptions{
		"nil":                 nil,
		"empty":               {},
		"unset env variable":  {SharedSecret: os.Getenv("KVSECRETS_TEST_UNSET_VARIABLE")},
		"only a secret param": {SecretParam: "k", CoalesceWindow: time.Second},
	} {
		func() {
			defer func() {
				r := recover()
				err, ok := r.(error)
				if !ok || !strings.Contains(err.Error(), "SharedSecret") || !strings.Contains(err.Error(), "AllowUnauthenticated") {
					t.Errorf("%s: recovered %v, want a panic naming the fix", name, r)
				}
			}()
			p.EventGridHandler(opts)
		}()
	}
	for name, opts := range map[string]*EventGridOptions{
		"shared secret": {SharedSecret: "s"},
		"authorize":     {Authorize: func(*http.Request) error { return nil }},
		"unauth":        {AllowUnauthenticated: true},
	} {
		if p.EventGridHandler(opts) == nil {
			t.Errorf("%s: nil handler", name)
		}
	}
}

// TestEventGridFromKvtestEndToEnd runs the webhook against kvtest's own
// Event Grid, in both schemas and in simulated time: a rotation written
// through the Provider's Rotate reaches a second Provider (another
// instance) through its webhook and is served at once, far inside its TTL;
// the new version's expiry brings OnNearExpiry 30 days ahead, on the
// vault's clock.
func TestEventGridFromKvtestEndToEnd(t *testing.T) {
	for _, schema := range []kvtest.EventSchema{kvtest.EventGridSchema, kvtest.CloudEventSchema} {
		t.Run(string(schema), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				vault, err := kvtest.NewInProcess(nil)
				if err != nil {
					t.Fatal(err)
				}
				defer vault.Close()
				vault.SetSecret("ApiKey", "key-1", nil)
				// IdleTimeout: the service reads the key all along, but the
				// test does not call Get for 60 days.
				opts := &Options{ClientOptions: vault.ClientOptions(), TTL: 8 * time.Hour, IdleTimeout: 100 * 24 * time.Hour}
				writer, _ := NewProvider(vault.URL(), vault.Credential(), opts)
				defer writer.Close()
				reader, _ := NewProvider(vault.URL(), vault.Credential(), opts)
				defer reader.Close()
				mustGet(t, reader, "ApiKey", "key-1")

				var near []ExpiryEvent
				webhook := reader.EventGridHandler(&EventGridOptions{SharedSecret: "s3cret",
					OnNearExpiry: func(ev ExpiryEvent) { near = append(near, ev) }})
				sub, err := vault.SubscribeHandler("/events?key=s3cret", webhook, &kvtest.SubscriptionOptions{Schema: schema})
				if err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				exp := start.Add(90 * 24 * time.Hour)
				ver, err := writer.Rotate(t.Context(), "ApiKey", "key-2", &RotateOptions{Validity: 90 * 24 * time.Hour})
				if err != nil {
					t.Fatal(err)
				}
				synctest.Wait()
				mustGet(t, reader, "ApiKey", "key-2")
				if st := reader.Stats(); st.EventsActedOn != 1 {
					t.Errorf("reader acted on %d events", st.EventsActedOn)
				}

				time.Sleep(60*24*time.Hour + time.Second)
				synctest.Wait()
				if len(near) != 1 || near[0].Name != "ApiKey" || near[0].Version != ver.Version || !near[0].Expires.Equal(exp.Truncate(time.Second)) {
					t.Fatalf("OnNearExpiry calls %+v, want one for %s 60 days after the rotation", near, ver.Version)
				}
				if ds := sub.Deliveries(); len(ds) != 2 || ds[1].At.Sub(start) != 60*24*time.Hour {
					t.Errorf("deliveries %+v", ds)
				}
			})
		})
	}
}
