package hostile_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/kvsecrets/kvsecrets/kvtest"
)

var schemas = []kvtest.EventSchema{kvtest.EventGridSchema, kvtest.CloudEventSchema}

func TestHostileNoSubscriptionWithoutValidHandshake(t *testing.T) {
	for _, sc := range schemas {
		t.Run(string(sc), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				v := mustInProcess(t, nil)
				defer v.Close()
				h := &hook{badHandshake: true}
				sub, err := v.SubscribeHandler("/events", h, &kvtest.SubscriptionOptions{Schema: sc})
				if err == nil {
					t.Errorf("subscription created although the handshake was not answered")
					defer sub.Close()
				}
				v.SetSecret("A", "value-A", nil)
				time.Sleep(48 * time.Hour)
				synctest.Wait()
				if n := h.notifications(); len(n) > 0 {
					t.Errorf("%d notifications delivered without a validated handshake", len(n))
				}
			})
		})
	}
}

// A handler that echoes a wrong validation code, or answers the handshake
// with an error status and the right body.
func TestHostileHandshakeWrongAnswers(t *testing.T) {
	cases := map[string]http.HandlerFunc{
		"wrong code": func(w http.ResponseWriter, r *http.Request) {
			json.NewEncoder(w).Encode(map[string]string{"validationResponse": "not-the-code"})
		},
		"right code, status 500": func(w http.ResponseWriter, r *http.Request) {
			var evs []struct {
				Data struct{ ValidationCode string } `json:"data"`
			}
			json.NewDecoder(r.Body).Decode(&evs)
			w.WriteHeader(500)
			if len(evs) > 0 {
				json.NewEncoder(w).Encode(map[string]string{"validationResponse": evs[0].Data.ValidationCode})
			}
		},
		"empty 200": func(w http.ResponseWriter, r *http.Request) {},
	}
	for name, h := range cases {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				v := mustInProcess(t, nil)
				defer v.Close()
				sub, err := v.SubscribeHandler("/e", h, nil)
				if err == nil {
					t.Errorf("subscription created")
					sub.Close()
				}
			})
		})
	}
	t.Run("CloudEvents wrong origin", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			v := mustInProcess(t, nil)
			defer v.Close()
			sub, err := v.SubscribeHandler("/e", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("WebHook-Allowed-Origin", "evil.example.com")
			}), &kvtest.SubscriptionOptions{Schema: kvtest.CloudEventSchema})
			if err == nil {
				t.Errorf("subscription created with a non-matching WebHook-Allowed-Origin")
				sub.Close()
			}
		})
	})
}

func TestHostileEventContentBothSchemas(t *testing.T) {
	for _, sc := range schemas {
		t.Run(string(sc), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				v := mustInProcess(t, &kvtest.Options{VaultName: "myvault"})
				defer v.Close()
				other := mustInProcess(t, &kvtest.Options{VaultName: "othervault"})
				defer other.Close()
				h := &hook{}
				sub, err := v.SubscribeHandler("/events?key=k", h, &kvtest.SubscriptionOptions{Schema: sc, Name: "mysub"})
				if err != nil {
					t.Fatal(err)
				}
				all := h.all()
				if len(all) != 1 {
					t.Fatalf("handshake requests: %d", len(all))
				}
				if sc == kvtest.CloudEventSchema && all[0].Method != "OPTIONS" {
					t.Errorf("CloudEvents handshake method %s", all[0].Method)
				}
				other.SetSecret("A", "other-value", nil)
				v1, _ := v.SetSecret("A", "value-one-SECRET", nil)
				v2, _ := v.SetSecret("A", "value-two-SECRET", &kvtest.SecretOptions{Expires: time.Now().Add(90 * 24 * time.Hour)})
				c := client(t, v)
				r, err := c.SetSecret(context.Background(), "B", azsecrets.SetSecretParameters{Value: ptr("rest-SECRET")}, nil)
				if err != nil {
					t.Fatal(err)
				}
				if err := sub.Wait(context.Background()); err != nil {
					t.Fatal(err)
				}
				ns := h.notifications()
				if len(ns) != 3 {
					t.Fatalf("got %d notifications, want 3 (two of A, one of B)", len(ns))
				}
				ids := map[string]bool{}
				wantVers := []string{v1, v2, r.ID.Version()}
				wantNames := []string{"A", "A", "B"}
				for i, n := range ns {
					if strings.Contains(string(n.Body), "SECRET") || strings.Contains(string(n.Body), "other") {
						t.Errorf("delivery body carries a value or another vault: %s", n.Body)
					}
					if n.Method != "POST" {
						t.Errorf("method %s", n.Method)
					}
					if got := n.Header.Get("aeg-event-type"); got != "Notification" {
						t.Errorf("aeg-event-type %q", got)
					}
					if got := n.Header.Get("aeg-subscription-name"); !strings.EqualFold(got, "mysub") {
						t.Errorf("aeg-subscription-name %q", got)
					}
					if got := n.Header.Get("aeg-delivery-count"); got != "0" {
						t.Errorf("aeg-delivery-count %q", got)
					}
					ct := n.Header.Get("Content-Type")
					if sc == kvtest.CloudEventSchema && !strings.HasPrefix(ct, "application/cloudevents+json") {
						t.Errorf("CloudEvents content type %q", ct)
					}
					if sc == kvtest.EventGridSchema && !strings.HasPrefix(ct, "application/json") {
						t.Errorf("EventGrid content type %q", ct)
					}
					if !strings.Contains(n.URL, "key=k") {
						t.Errorf("delivered to %q, query lost", n.URL)
					}
					es := events(t, n.Body)
					if len(es) != 1 {
						t.Fatalf("events per delivery: %d", len(es))
					}
					e := es[0]
					if ids[e.ID] || e.ID == "" {
						t.Errorf("event id %q empty or repeated", e.ID)
					}
					ids[e.ID] = true
					if e.kind() != kvtest.SecretNewVersionCreated {
						t.Errorf("type %s", e.kind())
					}
					topic := e.Topic
					if sc == kvtest.CloudEventSchema {
						topic = e.Source
					}
					if topic != v.ResourceID() || !strings.HasSuffix(topic, "/vaults/myvault") {
						t.Errorf("topic/source %q, want %q", topic, v.ResourceID())
					}
					if e.Subject != wantNames[i] {
						t.Errorf("subject %q want %q", e.Subject, wantNames[i])
					}
					var d map[string]any
					json.Unmarshal(e.Data, &d)
					wantID := fmt.Sprintf("https://myvault.vault.azure.net/secrets/%s/%s", wantNames[i], wantVers[i])
					if d["Id"] != wantID || d["Version"] != wantVers[i] || d["ObjectName"] != wantNames[i] || d["VaultName"] != "myvault" || d["ObjectType"] != "Secret" {
						t.Errorf("data %s, want Id %s", e.Data, wantID)
					}
					if i == 1 && (d["EXP"] == nil || d["EXP"] == "") {
						t.Errorf("EXP missing for a version with exp: %s", e.Data)
					}
				}
			})
		})
	}
}

func TestHostileRetryScheduleAndTTL(t *testing.T) {
	want := []time.Duration{10 * time.Second, 30 * time.Second, time.Minute, 5 * time.Minute, 10 * time.Minute, 30 * time.Minute, time.Hour, 3 * time.Hour, 6 * time.Hour, 12 * time.Hour, 12 * time.Hour, 12 * time.Hour}
	for i, w := range want {
		if got := kvtest.RetryDelay(i + 1); got != w {
			t.Errorf("RetryDelay(%d) = %v, want %v (Event Grid's schedule)", i+1, got, w)
		}
	}
	for _, n := range []int{0, -1, math.MinInt, math.MaxInt} {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("RetryDelay(%d) panics: %v", n, r)
				}
			}()
			if d := kvtest.RetryDelay(n); d < 0 {
				t.Errorf("RetryDelay(%d) = %v", n, d)
			}
		}()
	}
	synctest.Test(t, func(t *testing.T) {
		v := mustInProcess(t, nil)
		defer v.Close()
		h := &hook{status: func(int) int { return 503 }}
		sub, err := v.SubscribeHandler("/e", h, nil)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		v.SetSecret("A", "x", nil)
		if err := sub.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		ds := sub.Deliveries()
		var at []time.Duration
		for _, d := range ds {
			at = append(at, d.At.Sub(start))
		}
		t.Logf("attempts at %v", at)
		for i := 1; i < len(ds); i++ {
			gap := ds[i].At.Sub(ds[i-1].At)
			if gap < kvtest.RetryDelay(i) || gap > kvtest.RetryDelay(i)+kvtest.RetryDelay(i)/5+time.Second {
				t.Errorf("gap before attempt %d = %v, want about RetryDelay(%d) = %v", i+1, gap, i, kvtest.RetryDelay(i))
			}
			if ds[i].Attempt != i+1 {
				t.Errorf("attempt numbering %d at %d", ds[i].Attempt, i)
			}
		}
		for _, d := range ds {
			if d.At.Sub(start) > kvtest.DefaultEventTimeToLive {
				t.Errorf("attempt at %v, past the 24h TTL", d.At.Sub(start))
			}
		}
		if last := ds[len(ds)-1]; last.Outcome != kvtest.DeadLettered {
			t.Errorf("last outcome %s", last.Outcome)
		}
		// delivery-count headers
		for i, n := range h.notifications() {
			if got := n.Header.Get("aeg-delivery-count"); got != fmt.Sprint(i) {
				t.Errorf("attempt %d: aeg-delivery-count %q", i+1, got)
			}
		}
		st := sub.Stats()
		if st.Attempts != len(ds) || st.Failed != len(ds) || st.DeadLettered != 1 || st.Pending != 0 || st.Delivered != 0 || st.Published != 1 {
			t.Errorf("stats %+v with %d attempts", st, len(ds))
		}
	})
}

func TestHostileNoRetryOnTerminalStatuses(t *testing.T) {
	for _, code := range []int{400, 401, 403, 413} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				v := mustInProcess(t, nil)
				defer v.Close()
				h := &hook{status: func(int) int { return code }}
				sub, err := v.SubscribeHandler("/e", h, nil)
				if err != nil {
					t.Fatal(err)
				}
				v.SetSecret("A", "x", nil)
				sub.Wait(context.Background())
				time.Sleep(25 * time.Hour)
				synctest.Wait()
				ds := sub.Deliveries()
				if len(ds) != 1 || ds[0].Outcome != kvtest.DeadLettered || ds[0].Status != code {
					t.Errorf("deliveries %+v", ds)
				}
			})
		})
	}
	for _, code := range []int{404, 408, 429, 500, 302, 100 + 99} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				v := mustInProcess(t, nil)
				defer v.Close()
				h := &hook{status: func(n int) int {
					if n == 1 {
						return code
					}
					return 200
				}}
				sub, err := v.SubscribeHandler("/e", h, nil)
				if err != nil {
					t.Fatal(err)
				}
				v.SetSecret("A", "x", nil)
				sub.Wait(context.Background())
				ds := sub.Deliveries()
				if len(ds) != 2 || ds[0].Outcome != kvtest.Retrying || ds[1].Outcome != kvtest.Delivered {
					t.Errorf("status %d: deliveries %v", code, delTypes(ds))
				}
			})
		})
	}
}

func TestHostileMaxAttemptsAndShortTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := mustInProcess(t, nil)
		defer v.Close()
		h := &hook{status: func(int) int { return 500 }}
		sub, err := v.SubscribeHandler("/e", h, &kvtest.SubscriptionOptions{MaxDeliveryAttempts: 3})
		if err != nil {
			t.Fatal(err)
		}
		h2 := &hook{status: func(int) int { return 500 }}
		sub2, err := v.SubscribeHandler("/e2", h2, &kvtest.SubscriptionOptions{EventTimeToLive: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		// A Delay past the time to live would drop every event: refused.
		if _, err := v.SubscribeHandler("/e3", &hook{}, &kvtest.SubscriptionOptions{EventTimeToLive: time.Minute, Delay: 2 * time.Minute}); err == nil {
			t.Error("a Delay longer than EventTimeToLive was accepted")
		}
		// Events queued behind attempts that each wait DeliveryTimeout
		// outlive a 1-minute time to live before their turn: dropped
		// without an attempt.
		var calls atomic.Int32
		stuck := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("aeg-event-type") == "SubscriptionValidation" {
				(&hook{}).ServeHTTP(w, r)
				return
			}
			calls.Add(1)
			<-r.Context().Done()
		})
		sub3, err := v.SubscribeHandler("/e3", stuck, &kvtest.SubscriptionOptions{EventTimeToLive: time.Minute, MaxDeliveryAttempts: 1})
		if err != nil {
			t.Fatal(err)
		}
		v.SetSecret("A", "x", nil)
		for _, n := range []string{"B", "C", "D"} {
			v.SetSecret(n, "x", nil)
		}
		sub.Wait(context.Background())
		sub2.Wait(context.Background())
		sub3.Wait(context.Background())
		if n := len(sub.Deliveries()); n != 3*4 {
			t.Errorf("MaxDeliveryAttempts 3: %d attempts for 4 events", n)
		}
		if n := len(sub2.Deliveries()); n != 3*4 { // 0, 10s, 40s; next at 1m40 > 1m
			t.Errorf("TTL 1m: %d attempts (%v)", n, sub2.Deliveries())
		}
		// Attempts at 0, 30 s and 60 s; the fourth event's turn comes at
		// 90 s, past its time to live.
		if n := calls.Load(); n != 3 {
			t.Errorf("TTL 1m behind stuck attempts: %d attempts, want 3", n)
		}
		if st := sub3.Stats(); st.DeadLettered != 4 || st.Attempts != 3 {
			t.Errorf("TTL 1m behind stuck attempts: stats %+v", st)
		}
	})
}

func TestHostileBadSubscriptionOptions(t *testing.T) {
	bad := map[string]kvtest.SubscriptionOptions{
		"attempts -1":    {MaxDeliveryAttempts: -1},
		"attempts 31":    {MaxDeliveryAttempts: 31},
		"ttl -1":         {EventTimeToLive: -1},
		"ttl 30s":        {EventTimeToLive: 30 * time.Second},
		"ttl 25h":        {EventTimeToLive: 25 * time.Hour},
		"dup NaN":        {Duplicates: math.NaN()},
		"dup -0.1":       {Duplicates: -0.1},
		"dup 1.5":        {Duplicates: 1.5},
		"dup +Inf":       {Duplicates: math.Inf(1)},
		"delay -1":       {Delay: -time.Second},
		"schema bogus":   {Schema: "bogus"},
		"type bogus":     {EventTypes: []string{"Microsoft.KeyVault.KeyNewVersionCreated"}},
		"type empty str": {EventTypes: []string{""}},
		"name bad":       {Name: "bad name with spaces/and/slashes"},
	}
	for name, o := range bad {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				v := mustInProcess(t, nil)
				defer v.Close()
				h := &hook{}
				func() {
					defer func() {
						if r := recover(); r != nil {
							t.Errorf("panic: %v", r)
						}
					}()
					sub, err := v.SubscribeHandler("/e", h, &o)
					if err == nil {
						t.Errorf("accepted")
						sub.Close()
					}
				}()
			})
		})
	}
	t.Run("nil handler / bad endpoints", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			v := mustInProcess(t, nil)
			defer v.Close()
			for _, ep := range []string{"", "::", "ftp://x/", "/e\x00"} {
				func() {
					defer func() {
						if r := recover(); r != nil {
							t.Errorf("endpoint %q panics: %v", ep, r)
						}
					}()
					if sub, err := v.SubscribeHandler(ep, &hook{}, nil); err == nil {
						t.Logf("endpoint %q accepted (%s)", ep, sub.Endpoint())
						sub.Close()
					}
				}()
			}
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Errorf("nil handler panics: %v", r)
					}
				}()
				if sub, err := v.SubscribeHandler("/e", nil, nil); err == nil {
					t.Errorf("nil handler accepted")
					sub.Close()
				}
			}()
		})
	})
}

func TestHostileDuplicatesKeepTheID(t *testing.T) {
	for _, sc := range schemas {
		t.Run(string(sc), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				v := mustInProcess(t, nil)
				defer v.Close()
				h := &hook{}
				sub, err := v.SubscribeHandler("/e", h, &kvtest.SubscriptionOptions{Schema: sc, Duplicates: 1})
				if err != nil {
					t.Fatal(err)
				}
				v.SetSecret("A", "x", nil)
				v.SetSecret("A", "y", nil)
				sub.Wait(context.Background())
				ns := h.notifications()
				if len(ns) != 4 {
					t.Fatalf("%d notifications, want 4", len(ns))
				}
				count := map[string]int{}
				for _, n := range ns {
					count[events(t, n.Body)[0].ID]++
				}
				for id, c := range count {
					if c != 2 {
						t.Errorf("event %s delivered %d times", id, c)
					}
				}
				ds := sub.Deliveries()
				dups := 0
				for _, d := range ds {
					if d.Duplicate {
						dups++
					}
				}
				if dups != 2 {
					t.Errorf("Duplicate flags: %d", dups)
				}
				if st := sub.Stats(); st.Delivered != 4 || st.Published != 2 || st.Attempts != 4 {
					t.Errorf("stats %+v", st)
				}
			})
		})
	}
}

func TestHostileWaitHonoursDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := mustInProcess(t, nil)
		defer v.Close()
		h := &hook{}
		sub, err := v.SubscribeHandler("/e", h, &kvtest.SubscriptionOptions{Delay: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		v.SetSecret("A", "x", nil)
		if sub.Stats().Pending != 1 {
			t.Errorf("pending right after publish: %+v", sub.Stats())
		}
		sub.Wait(context.Background())
		if el := time.Since(start); el < time.Minute {
			t.Errorf("Wait returned after %v, before the delayed delivery", el)
		}
		if len(h.notifications()) != 1 {
			t.Errorf("notifications %d", len(h.notifications()))
		}
		// Wait with a context that ends first
		h.status = func(int) int { return 500 }
		v.SetSecret("A", "y", nil)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := sub.Wait(ctx); err == nil {
			t.Errorf("Wait returned nil while a retry is pending")
		}
	})
}
