package hostile_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/kvsecrets/kvsecrets/kvtest"
)

func loopback(t *testing.T, h http.Handler) *httptest.Server {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &httptest.Server{Listener: l, Config: &http.Server{Handler: h}}
	s.Start()
	return s
}

func TestHostileWebhookRedirectNotFollowed(t *testing.T) {
	var hits atomic.Int64
	target := loopback(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		(&hook{}).ServeHTTP(w, r)
	}))
	defer target.Close()
	redir := loopback(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("aeg-event-type") == "SubscriptionValidation" && r.URL.Query().Get("stage") == "ok" {
			(&hook{}).ServeHTTP(w, r)
			return
		}
		http.Redirect(w, r, target.URL+"/x", http.StatusTemporaryRedirect)
	}))
	defer redir.Close()
	v := kvtest.NewTestServer(t, nil)
	// handshake redirected: must fail
	if sub, err := v.Subscribe(redir.URL+"/e", nil); err == nil {
		t.Errorf("subscription created through a redirected handshake")
		sub.Close()
	}
	if hits.Load() != 0 {
		t.Errorf("redirect target received %d requests", hits.Load())
	}
	sub, err := v.Subscribe(redir.URL+"/e?stage=ok", &kvtest.SubscriptionOptions{MaxDeliveryAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	v.SetSecret("A", "a", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sub.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	ds := sub.Deliveries()
	if len(ds) != 1 || ds[0].Status != 307 || ds[0].Outcome != kvtest.DeadLettered {
		t.Errorf("deliveries %+v", ds)
	}
	if hits.Load() != 0 {
		t.Errorf("redirect followed: target received %d requests", hits.Load())
	}
}

// A webhook that answers 200 then streams forever: the attempt is a success
// at the status line, and must not hang until DeliveryTimeout (or forever).
func TestHostileWebhookEndlessBody(t *testing.T) {
	wh := loopback(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("aeg-event-type") == "SubscriptionValidation" {
			(&hook{}).ServeHTTP(w, r)
			return
		}
		w.WriteHeader(200)
		buf := make([]byte, 64<<10)
		for r.Context().Err() == nil {
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
	}))
	defer wh.Close()
	v := kvtest.NewTestServer(t, nil)
	sub, err := v.Subscribe(wh.URL+"/e", nil)
	if err != nil {
		t.Fatal(err)
	}
	v.SetSecret("A", "a", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sub.Wait(ctx); err != nil {
		t.Errorf("Wait: %v: the attempt is stuck reading an endless answer", err)
	}
	t.Logf("deliveries %+v", sub.Deliveries())
	v.Close()
}

// Close with retries scheduled far ahead, and with a webhook mid-attempt,
// leaves no goroutine.
func TestHostileCloseLeavesNoGoroutines(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	block := make(chan struct{})
	slow := loopback(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("aeg-event-type") == "SubscriptionValidation" {
			(&hook{}).ServeHTTP(w, r)
			return
		}
		io.ReadAll(r.Body) // so the server notices the client's close
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	failing := loopback(t, &hook{status: func(int) int { return 503 }})
	v, err := kvtest.NewServer(nil)
	if err != nil {
		t.Fatal(err)
	}
	s1, err := v.Subscribe(slow.URL+"/e", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.Subscribe(failing.URL+"/e", &kvtest.SubscriptionOptions{Schema: kvtest.CloudEventSchema})
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.SubscribeHandler("/e", &hook{status: func(int) int { return 500 }}, nil)
	if err != nil {
		t.Fatal(err)
	}
	v.SetSecret("A", "a", &kvtest.SecretOptions{Expires: time.Now().Add(40 * day)})
	time.Sleep(200 * time.Millisecond) // let the first attempts start (real network)
	done := make(chan struct{})
	go func() { v.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Errorf("Close blocked by a webhook mid-attempt")
		close(block)
		<-done
	}
	_ = s1.Stats()
	slow.Close()
	failing.Close()
}
