// Command startup shows a service loading its whole configuration from Key
// Vault with one call at start-up.
//
//	go run ./examples/startup
//
// It runs on a local Key Vault (package kvtest). The config struct names
// its secrets in `keyvault` tags: API keys, a JSON secret, an optional one,
// and a reference in App Service syntax. Load reads them all in parallel;
// then a second run with a secret missing shows the error a new user sees.
// Values are never printed.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

// Config is the service's configuration; every secret comes from Key Vault.
type Config struct {
	StripeKey   string   `keyvault:"StripeKey"`
	SendGridKey string   `keyvault:"SendGridKey"`
	MapsKey     []byte   `keyvault:"MapsKey"`
	Database    Database `keyvault:"DatabaseConfig,json"`
	SentryDSN   string   `keyvault:"SentryDsn,optional"` // not every environment has one
	Webhook     string   `keyvault:"@Microsoft.KeyVault(VaultName=kvtest;SecretName=WebhookSecret)"`
	Cache       struct {
		Password string `keyvault:"RedisPassword"`
	}
}

// Database is a JSON secret.
type Database struct {
	Host     string `json:"host"`
	Port     int    `json:"port"`
	User     string `json:"user"`
	Password string `json:"password"`
}

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "startup:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer) error {
	vault, err := kvtest.NewServer(nil)
	if err != nil {
		return err
	}
	defer vault.Close()
	err = vault.Seed(map[string]string{
		"StripeKey":      "sk_live_0123456789",
		"SendGridKey":    "SG.abcdef",
		"MapsKey":        "maps-key-42",
		"DatabaseConfig": `{"host":"db.internal","port":5432,"user":"app","password":"db-password"}`,
		"WebhookSecret":  "whsec_xyz",
		"RedisPassword":  "redis-password",
	})
	if err != nil {
		return err
	}
	vault.SetLatency(50 * time.Millisecond) // each read costs what a real vault's does

	secrets, err := kvsecrets.NewProvider(vault.URL(), vault.Credential(), &kvsecrets.Options{ClientOptions: vault.ClientOptions()})
	if err != nil {
		return err
	}
	defer secrets.Close()

	var cfg Config
	start := time.Now()
	if err := secrets.Load(ctx, &cfg); err != nil {
		return err
	}
	fmt.Fprintf(out, "Loaded the config in %v: 7 secrets (one optional and absent) read in parallel at 50 ms each\n", time.Since(start).Round(10*time.Millisecond))
	fmt.Fprintf(out, "  StripeKey %d chars, SendGridKey %d chars, MapsKey %d bytes, Webhook %d chars, Redis password %d chars\n",
		len(cfg.StripeKey), len(cfg.SendGridKey), len(cfg.MapsKey), len(cfg.Webhook), len(cfg.Cache.Password))
	fmt.Fprintf(out, "  Database %s@%s:%d (JSON secret), SentryDSN set: %v (optional, absent)\n",
		cfg.Database.User, cfg.Database.Host, cfg.Database.Port, cfg.SentryDSN != "")
	st := secrets.Stats()
	fmt.Fprintf(out, "  vault reads %d; later Gets are served from memory and refreshed in the background\n", st.VaultRequests)

	// The same service deployed to a vault where two secrets were never created.
	fmt.Fprintln(out, "\nThe same service on a vault without SendGridKey and RedisPassword, whose DatabaseConfig has the port as a string:")
	vault2, err := kvtest.NewServer(nil)
	if err != nil {
		return err
	}
	defer vault2.Close()
	vault2.Seed(map[string]string{"StripeKey": "sk", "MapsKey": "m", "DatabaseConfig": `{"host":"h","port":"5432"}`, "WebhookSecret": "w"})
	secrets2, err := kvsecrets.NewProvider(vault2.URL(), vault2.Credential(), &kvsecrets.Options{ClientOptions: vault2.ClientOptions()})
	if err != nil {
		return err
	}
	defer secrets2.Close()
	var cfg2 Config
	if err := secrets2.Load(ctx, &cfg2); err != nil {
		fmt.Fprintf(out, "%v\n", err)
	}
	return nil
}
