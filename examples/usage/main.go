// Command usage is the README's "Usage in 60 seconds": a service reading
// its API keys from a real vault (https://myvault.vault.azure.net/ stands
// for yours) through DefaultAzureCredential. TestDocCodeIsCompiled checks
// that the README shows this file as it is.
package main

import (
	"context"
	"log"

	"github.com/kvsecrets/kvsecrets"
)

func main() {
	ctx := context.Background()
	// nil credential: azidentity.NewDefaultAzureCredential (managed identity, az login, env vars…).
	// nil options: the defaults below.
	secrets, err := kvsecrets.NewProvider("https://myvault.vault.azure.net/", nil, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer secrets.Close()

	// At start-up: read every key in parallel; one error names every missing secret.
	if err := secrets.Preload(ctx, "StripeKey", "MapsKey"); err != nil {
		log.Fatal(err)
	}

	// On hot paths, from any number of goroutines: served from memory.
	key, err := secrets.Get(ctx, "StripeKey")
	if err != nil {
		log.Fatal(err) // names the secret, never its value
	}
	log.Printf("StripeKey: %d characters", len(key))
}
