// Command eventgrid shows a rotation pushed to a service by Event Grid:
// the service serves kvsecrets' webhook, and a delivery of Key Vault's
// SecretNewVersionCreated event makes it re-read the secret at once rather
// than after its TTL.
//
//	go run ./examples/eventgrid
//
// It runs on a local Key Vault named like the vault in Microsoft's sample
// event (sample-kv), serves the webhook on loopback, and plays Event Grid:
// first the subscription validation handshake, then the real sample
// payload, byte for byte. No Azure account is needed.
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

// samplePayload is Key Vault's SecretNewVersionCreated sample in the Event
// Grid schema, from the azure-rest-api-specs examples
// (testdata/realdata/eventgrid/rest-api-specs_secret_new_version_created.json).
const samplePayload = `{
  "id":"00eccf70-95a7-4e7c-8299-2eb17ee9ad64",
  "topic":"/subscriptions/{subscription-id}/resourceGroups/sample-rg/providers/Microsoft.KeyVault/vaults/sample-kv",
  "subject":"newsecret",
  "eventType":"Microsoft.KeyVault.SecretNewVersionCreated",
  "eventTime":"2019-07-25T01:08:33.1036736Z",
  "data":{
     "Id":"https://sample-kv.vault.azure.net/secrets/newsecret/ee059b2bb5bc48398a53b168c6cdcb10",
     "VaultName":"sample-kv",
     "ObjectType":"Secret",
     "ObjectName":"newsecret",
     "Version":"ee059b2bb5bc48398a53b168c6cdcb10",
     "NBF":"1559081980",
     "EXP":"1559082102"
  },
  "dataVersion":"1",
  "metadataVersion":"1"
}
`

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

	// 1. Event Grid validates the subscription.
	validation := `[{"id":"2d1781af-3a4c-4d7c-bd0c-e34b19da4e66","topic":"/subscriptions/x","subject":"","data":{"validationCode":"512d38b6-c7b8-40c8-89fe-f46f9e9622b6"},"eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","eventTime":"2018-01-25T22:12:19.4556811Z","metadataVersion":"1","dataVersion":"1"}]`
	status, body, err := post(ctx, endpoint, validation, "SubscriptionValidation")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "1. Subscription validation: %d %s\n", status, bytes.TrimSpace(body))

	// 2. A delivery without the shared secret is refused and changes nothing.
	status, _, err = post(ctx, "http://"+ln.Addr().String()+"/events", samplePayload, "Notification")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "2. Delivery without the shared secret: %d\n", status)

	// 3. The secret is rotated in the vault, and Event Grid delivers the event.
	if _, err := vault.SetSecret("newsecret", "second-value", &kvtest.SecretOptions{Expires: time.Now().Add(180 * 24 * time.Hour)}); err != nil {
		return err
	}
	sent := time.Now()
	status, _, err = post(ctx, endpoint, samplePayload, "Notification")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "3. Rotated in the vault; Event Grid delivers SecretNewVersionCreated: %d\n", status)
	select {
	case ev := <-rotated:
		fmt.Fprintf(out, "   OnRotate %v after the delivery: %s… -> %s… (the value came from the vault, not the event)\n",
			time.Since(sent).Round(10*time.Microsecond), ev.OldVersion[:8], ev.NewVersion[:8])
	case <-time.After(5 * time.Second):
		return errors.New("the event did not lead to a refresh")
	}
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

// post delivers body as Event Grid does.
func post(ctx context.Context, url, body, eventType string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewBufferString(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("aeg-event-type", eventType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}
