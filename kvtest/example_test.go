package kvtest_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

func Example() {
	srv, err := kvtest.NewServer(nil) // in a test: kvtest.NewTestServer(t, nil)
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	srv.SetSecret("MyApiKey", "test-key", nil)

	// Any Key Vault client: the real azsecrets client here.
	client, _ := azsecrets.NewClient(srv.URL(), srv.Credential(), srv.ClientOptions())
	resp, err := client.GetSecret(context.Background(), "MyApiKey", "", nil)
	if err != nil {
		panic(err)
	}
	fmt.Println(*resp.Value)
	fmt.Println(srv.Counts().Unauthenticated, "challenge,", srv.SecretRequests("MyApiKey"), "read")

	// Failures as Key Vault sends them.
	srv.FailSecret("MyApiKey", kvtest.ForbiddenByRbac)
	_, err = client.GetSecret(context.Background(), "MyApiKey", "", nil)
	var re *azcore.ResponseError
	fmt.Println(errors.As(err, &re), re.StatusCode, re.ErrorCode)
	// Output:
	// test-key
	// 1 challenge, 1 read
	// true 403 Forbidden
}

// A service's Event Grid webhook, tested with kvtest alone: the vault
// rotates a secret, delivers SecretNewVersionCreated to the webhook, and
// the service serves the new key at once, where its TTL would have kept the
// old one for hours.
func ExampleServer_SubscribeHandler() {
	ctx := context.Background()
	vault, err := kvtest.NewServer(nil) // in a test: kvtest.NewTestServer(t, nil)
	if err != nil {
		panic(err)
	}
	defer vault.Close()
	vault.SetSecret("MyApiKey", "key-1", nil)

	rotated := make(chan kvsecrets.RotationEvent, 1)
	secrets, err := kvsecrets.NewProvider(vault.URL(), vault.Credential(), &kvsecrets.Options{
		ClientOptions: vault.ClientOptions(),
		TTL:           8 * time.Hour,
		OnRotate:      func(ev kvsecrets.RotationEvent) { rotated <- ev },
	})
	if err != nil {
		panic(err)
	}
	defer secrets.Close()
	key, _ := secrets.Get(ctx, "MyApiKey")
	fmt.Println("serving", key)

	// The service's webhook, subscribed as Event Grid subscribes it: the
	// validation handshake first, then every event of the vault.
	webhook := secrets.EventGridHandler(&kvsecrets.EventGridOptions{SharedSecret: "s3cret"})
	sub, err := vault.SubscribeHandler("/events?key=s3cret", webhook, nil)
	if err != nil {
		panic(err)
	}

	vault.SetSecret("MyApiKey", "key-2", nil) // the rotation
	<-rotated                                 // the refresh the delivery started
	sub.Wait(ctx)                             // the delivery's answer is in
	key, _ = secrets.Get(ctx, "MyApiKey")
	fmt.Println("serving", key)
	fmt.Println(sub.Stats().Delivered, "delivery,", secrets.Stats().EventsActedOn, "event acted on")
	// Output:
	// serving key-1
	// serving key-2
	// 1 delivery, 1 event acted on
}
