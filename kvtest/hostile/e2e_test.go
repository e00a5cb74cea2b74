package hostile_test

import (
	"context"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

func TestHostileEndToEndRotationBothSchemas(t *testing.T) {
	for _, sc := range schemas {
		t.Run(string(sc), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				vault := mustInProcess(t, nil)
				defer vault.Close()
				vault.SetSecret("StripeKey", "sk_1", nil)
				var rotations atomic.Int64
				p, err := kvsecrets.NewProvider(vault.URL(), vault.Credential(), &kvsecrets.Options{
					ClientOptions: vault.ClientOptions(), TTL: 8 * time.Hour,
					OnRotate: func(kvsecrets.RotationEvent) { rotations.Add(1) },
				})
				if err != nil {
					t.Fatal(err)
				}
				defer p.Close()
				if _, err := p.Get(t.Context(), "StripeKey"); err != nil {
					t.Fatal(err)
				}
				var near atomic.Int64
				webhook := p.EventGridHandler(&kvsecrets.EventGridOptions{SharedSecret: "s3cret",
					OnNearExpiry: func(kvsecrets.ExpiryEvent) { near.Add(1) }})
				sub, err := vault.SubscribeHandler("/events?key=s3cret", webhook, &kvtest.SubscriptionOptions{Schema: sc, Duplicates: 1})
				if err != nil {
					t.Fatal(err)
				}
				// a subscription with the wrong key never validates
				if bad, err := vault.SubscribeHandler("/events?key=wrong", webhook, &kvtest.SubscriptionOptions{Schema: sc}); err == nil {
					t.Errorf("subscription with a wrong shared secret validated")
					bad.Close()
				}
				vault.SetSecret("StripeKey", "sk_2", &kvtest.SecretOptions{Expires: time.Now().Add(40 * day)})
				sub.Wait(context.Background())
				synctest.Wait()
				if k, _ := p.Get(t.Context(), "StripeKey"); k != "sk_2" {
					t.Fatalf("after the event Get serves %q", k)
				}
				for _, d := range sub.Deliveries() {
					if d.Outcome != kvtest.Delivered {
						t.Errorf("delivery %+v", d)
					}
				}
				if r := rotations.Load(); r != 1 {
					t.Errorf("OnRotate fired %d times for one rotation delivered twice", r)
				}
				for i := 0; i < 10*24+1; i++ { // keep the secret in use (IdleTimeout)
					time.Sleep(time.Hour)
					p.Get(t.Context(), "StripeKey")
				}
				sub.Wait(context.Background())
				synctest.Wait()
				if n := near.Load(); n != 1 {
					t.Errorf("OnNearExpiry called %d times (event delivered twice)", n)
				}
				// rotation elsewhere, then expiry of the current version: refresh on SecretExpired
				vault.SetSecret("StripeKey", "sk_3", &kvtest.SecretOptions{Expires: time.Now().Add(time.Hour)})
				sub.Wait(context.Background())
				synctest.Wait()
				if k, _ := p.Get(t.Context(), "StripeKey"); k != "sk_3" {
					t.Errorf("after second rotation Get serves %q", k)
				}
				time.Sleep(2 * time.Hour)
				sub.Wait(context.Background())
				synctest.Wait()
				st := sub.Stats()
				if st.DeadLettered != 0 || st.Pending != 0 {
					t.Errorf("stats %+v", st)
				}
			})
		})
	}
}
