// Command kvlocal runs a local Azure Key Vault (secrets only) on loopback
// HTTPS, for manual trials and for clients in other languages.
//
//	go install ./cmd/kvlocal
//	kvlocal -port 8443 -seed MyApiKey=s3cret -seed-file cmd/kvlocal/seed.example.json
//
// It writes its CA certificate to a file (-ca-out; by default
// kvlocal/ca-PORT.pem in the user's cache folder, or in the temporary
// folder when there is none, never the working folder), prints the vault
// URL, the certificate's path and a bearer token it accepts, and runs until
// SIGINT or SIGTERM. Clients must trust the certificate and turn off
// challenge resource verification, since 127.0.0.1 is not under
// vault.azure.net: in Go, azsecrets.ClientOptions.DisableChallengeResourceVerification;
// in JavaScript, disableChallengeResourceVerification with
// NODE_EXTRA_CA_CERTS pointing at the certificate.
//
// With -eventgrid URL (repeatable) the vault delivers its Event Grid events
// (SecretNewVersionCreated, SecretNearExpiry, SecretExpired) to a webhook
// as an event subscription does: the validation handshake first, retried
// every 2 seconds until the webhook answers it, then each event in the
// -eventgrid-schema (eventgrid or cloudevents), retried on Event Grid's
// schedule. Each delivery is logged.
//
// A seed file is a JSON object of name → value, or name → {"value",
// "contentType", "tags", "enabled", "notBefore", "expires"} with times in
// RFC 3339; seed.example.json beside this file is one.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	neturl "net/url"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kvsecrets/kvsecrets/kvtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kvlocal:", err)
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type seedFlag map[string]string

func (s seedFlag) String() string { return strconv.Itoa(len(s)) + " secrets" }
func (s seedFlag) Set(v string) error {
	name, value, ok := strings.Cut(v, "=")
	if !ok || name == "" {
		return errors.New("want NAME=VALUE")
	}
	s[name] = value
	return nil
}

// seedEntry is one secret of a seed file.
type seedEntry struct {
	Value       string            `json:"value"`
	ContentType string            `json:"contentType"`
	Tags        map[string]string `json:"tags"`
	Enabled     *bool             `json:"enabled"`
	NotBefore   time.Time         `json:"notBefore"`
	Expires     time.Time         `json:"expires"`
}

func (e *seedEntry) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		*e = seedEntry{Value: s}
		return nil
	}
	type plain seedEntry
	return json.Unmarshal(b, (*plain)(e))
}

// run starts the vault, prints how to reach it, and serves until ctx ends.
func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("kvlocal", flag.ContinueOnError)
	fs.SetOutput(out)
	port := fs.Int("port", 8443, "TCP port on 127.0.0.1 (0 picks a free one)")
	name := fs.String("vault-name", "kvlocal", "vault name, shown in the challenge's certificate and ids")
	caOut := fs.String("ca-out", "", "file to write the CA certificate to (default: kvlocal/ca-PORT.pem in the user's cache folder)")
	token := fs.String("token", "", "bearer token to accept (default: a random one, printed)")
	tokenTTL := fs.Duration("token-ttl", 24*time.Hour, "how long the printed token is accepted")
	seedFile := fs.String("seed-file", "", "JSON file of secrets to seed")
	seeds := seedFlag{}
	fs.Var(seeds, "seed", "NAME=VALUE secret to seed (repeatable)")
	var webhooks listFlag
	fs.Var(&webhooks, "eventgrid", "webhook `URL` to deliver the vault's Event Grid events to, as an event subscription does (repeatable)")
	schema := fs.String("eventgrid-schema", "eventgrid", "schema of -eventgrid deliveries: eventgrid or cloudevents")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *port < 0 || *port > 65535 {
		return fmt.Errorf("-port %d out of range", *port)
	}
	sopts := kvtest.SubscriptionOptions{Schema: kvtest.EventGridSchema}
	switch *schema {
	case "eventgrid":
	case "cloudevents":
		sopts.Schema = kvtest.CloudEventSchema
	default:
		return fmt.Errorf("-eventgrid-schema %q: want eventgrid or cloudevents", *schema)
	}
	for _, u := range webhooks {
		if p, err := neturl.Parse(u); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return fmt.Errorf("-eventgrid %q: want an absolute http or https URL", u)
		}
	}
	entries := map[string]seedEntry{}
	if *seedFile != "" {
		b, err := os.ReadFile(*seedFile)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, &entries); err != nil {
			return fmt.Errorf("-seed-file %s: %w", *seedFile, err)
		}
	}
	for n, v := range seeds {
		entries[n] = seedEntry{Value: v}
	}

	srv, err := kvtest.NewServer(&kvtest.Options{VaultName: *name, Addr: "127.0.0.1:" + strconv.Itoa(*port), TokenLifetime: *tokenTTL})
	if err != nil {
		return err
	}
	defer srv.Close()

	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		e := entries[n]
		o := &kvtest.SecretOptions{ContentType: e.ContentType, Tags: e.Tags, NotBefore: e.NotBefore, Expires: e.Expires,
			Disabled: e.Enabled != nil && !*e.Enabled}
		if _, err := srv.SetSecret(n, e.Value, o); err != nil {
			return fmt.Errorf("seeding %q: %w", n, err)
		}
	}

	url := srv.LoopbackURL()
	ca := *caOut
	if ca == "" {
		if ca, err = defaultCAPath(url); err != nil {
			return err
		}
	}
	if ca, err = filepath.Abs(ca); err != nil {
		return err
	}
	if err := os.WriteFile(ca, srv.CACertPEM(), 0o644); err != nil {
		return err
	}
	tok := *token
	if tok == "" {
		tok, _ = srv.IssueToken()
	}
	srv.AddToken(tok, time.Now().Add(*tokenTTL))

	fmt.Fprintf(out, "kvlocal: a local Key Vault is listening\n")
	fmt.Fprintf(out, "  URL:      %s\n", url)
	fmt.Fprintf(out, "  CA cert:  %s\n", ca)
	fmt.Fprintf(out, "  Token:    %s (valid %v; send it as \"Authorization: Bearer <token>\")\n", tok, *tokenTTL)
	fmt.Fprintf(out, "  Secrets:  %s\n", strings.Join(names, ", "))
	for _, u := range webhooks {
		fmt.Fprintf(out, "  Events:   %s (%s schema)\n", u, *schema)
	}
	fmt.Fprintf(out, "Clients must trust the CA cert and disable challenge resource verification.\n")
	fmt.Fprintf(out, "Try: curl --cacert %s -H \"Authorization: Bearer %s\" \"%ssecrets/NAME/?api-version=2025-07-01\"\n", ca, tok, url)
	fmt.Fprintf(out, "Node: NODE_EXTRA_CA_CERTS=%s; new SecretClient(%q, {getToken: async () => ({token: %q, expiresOnTimestamp: Date.now() + 3600e3})}, {disableChallengeResourceVerification: true})\n", ca, url, tok)
	if f, ok := out.(interface{ Sync() error }); ok {
		f.Sync()
	}

	var wg sync.WaitGroup
	for _, u := range webhooks {
		wg.Go(func() { subscribe(ctx, srv, u, sopts, out) })
	}
	<-ctx.Done()
	srv.Close() // ends handshakes and deliveries under way
	wg.Wait()
	fmt.Fprintln(out, "kvlocal: shutting down")
	return nil
}

// subscribe makes an event subscription for the webhook at u, trying the
// validation handshake every 2 seconds until the webhook answers it (a
// service often starts after the vault it reads), and logs each delivery.
func subscribe(ctx context.Context, srv *kvtest.Server, u string, o kvtest.SubscriptionOptions, out io.Writer) {
	o.OnDelivery = func(d kvtest.Delivery) {
		answer := strconv.Itoa(d.Status)
		if d.Err != nil {
			answer = d.Err.Error()
		}
		fmt.Fprintf(out, "kvlocal: Event Grid: %s %s/%s to %s, attempt %d: %s (%s)\n",
			strings.TrimPrefix(d.EventType, "Microsoft.KeyVault."), d.Secret, d.Version, u, d.Attempt, answer, d.Outcome)
	}
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for warned := false; ; {
		sub, err := srv.Subscribe(u, &o)
		if err == nil {
			fmt.Fprintf(out, "kvlocal: Event Grid: subscription %s validated by %s\n", sub.Name(), u)
			return // the server's Close ends it
		}
		if !warned {
			fmt.Fprintf(out, "kvlocal: Event Grid: %v; trying again every 2s\n", err)
			warned = true
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// defaultCAPath is where the CA certificate goes without -ca-out: outside
// the working folder (a repository's git status stays clean), in the user's
// cache folder, or the temporary folder when there is none, one file per
// port so that two kvlocals do not overwrite each other's certificate.
func defaultCAPath(vaultURL string) (string, error) {
	u, err := neturl.Parse(vaultURL)
	if err != nil {
		return "", err
	}
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	dir := filepath.Join(base, "kvlocal")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("folder for the CA certificate (set -ca-out): %w", err)
	}
	return filepath.Join(dir, "ca-"+u.Port()+".pem"), nil
}
