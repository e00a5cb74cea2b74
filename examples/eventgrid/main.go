// Command eventgrid shows a rotation pushed to a service by Event Grid:
// the service serves kvsecrets' webhook, and a delivery of Key Vault's
// SecretNewVersionCreated event makes it re-read the secret at once rather
// than after its TTL.
//
//	go run ./examples/eventgrid
//
// It runs on a local Key Vault (kvtest) named like the vault in Microsoft's
// sample event (sample-kv) and serves the webhook on loopback. The local
// vault plays Event Grid too: it subscribes the webhook with the
// validation handshake, and delivers the event of each new version in the
// shape of Key Vault's published samples. No Azure account is needed.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "eventgrid:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer) error {
	vault, err := kvtest.NewServer(&kvtest.Options{VaultName: "sample-kv"})
	if err != nil {
		return err
	}
	defer vault.Close()
	if _, err := vault.SetSecret("newsecret", "first-value", nil); err != nil {
		return err
	}

	rotated := make(chan kvsecrets.RotationEvent, 1)
	secrets, err := kvsecrets.NewProvider(vault.URL(), vault.Credential(), &kvsecrets.Options{
		ClientOptions: vault.ClientOptions(),
		TTL:           8 * time.Hour, // without push, a rotation would wait up to 6-7 hours
		OnRotate:      func(ev kvsecrets.RotationEvent) { rotated <- ev },
	})
	if err != nil {
		return err
	}
	defer secrets.Close()
	if _, err := secrets.Get(ctx, "newsecret"); err != nil {
		return err
	}

	// The webhook, on loopback. Event Grid's subscription would point at
	// https://your-service/events?key=<shared secret>.
	const shared = "a-long-random-shared-secret"
	mux := http.NewServeMux()
	mux.Handle("/events", secrets.EventGridHandler(&kvsecrets.EventGridOptions{SharedSecret: shared}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	endpoint := "http://" + ln.Addr().String() + "/events?key=" + shared
	fmt.Fprintf(out, "Webhook listening on http://%s/events; TTL 8h, so polling alone would see a rotation hours late\n\n", ln.Addr())

	// 1. The vault's Event Grid subscribes the webhook: the validation
	// handshake first.
	sub, err := vault.Subscribe(endpoint, &kvtest.SubscriptionOptions{Name: "rotations"})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "1. Subscription %q validated by the webhook\n", sub.Name())

	// 2. A subscription without the shared secret cannot even validate.
	_, err = vault.Subscribe("http://"+ln.Addr().String()+"/events", nil)
	fmt.Fprintf(out, "2. Subscription without the shared secret refused: %v\n", err != nil && strings.Contains(err.Error(), "status 401"))

	// 3. The secret is rotated in the vault, and Event Grid delivers
	// SecretNewVersionCreated to the webhook.
	sent := time.Now()
	if _, err := vault.SetSecret("newsecret", "second-value", &kvtest.SecretOptions{Expires: time.Now().Add(180 * 24 * time.Hour)}); err != nil {
		return err
	}
	select {
	case ev := <-rotated:
		fmt.Fprintf(out, "3. Rotated in the vault; OnRotate %v later: %s… -> %s… (the value came from the vault, not the event)\n",
			time.Since(sent).Round(10*time.Microsecond), ev.OldVersion[:8], ev.NewVersion[:8])
	case <-time.After(5 * time.Second):
		return errors.New("the event did not lead to a refresh")
	}
	if err := sub.Wait(ctx); err != nil {
		return err
	}
	d := sub.Deliveries()[0]
	fmt.Fprintf(out, "   Event Grid delivered %s: %d\n", strings.TrimPrefix(d.EventType, "Microsoft.KeyVault."), d.Status)
	v, err := secrets.Get(ctx, "newsecret")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "   Get now serves the new version (%d characters)\n", len(v))

	st := secrets.Stats()
	fmt.Fprintf(out, "\nStats: events received %d, acted on %d, deliveries rejected %d, vault reads %d\n",
		st.EventsReceived, st.EventsActedOn, st.EventsRejected, st.VaultRequests)
	return nil
}
