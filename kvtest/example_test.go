package kvtest_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

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
