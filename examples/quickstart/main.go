// Command quickstart shows kvsecrets at work in a few seconds.
//
//	go run ./examples/quickstart
//
// With no AZURE_KEYVAULT_URL set, it starts a local Key Vault in-process
// (package kvtest) and shows the first read going to the vault, cached
// reads and what they cost, a rotation picked up by itself, an outage the
// callers do not see, and the Provider's counters.
//
// With AZURE_KEYVAULT_URL set (and a secret name as the argument or in
// KEYVAULT_SECRET_NAME), the same Provider code reads your real vault
// through DefaultAzureCredential. Values are never printed, only their
// length.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

func main() {
	if err := run(context.Background(), os.Stdout, os.Getenv, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

// demoTTL is the local demo's TTL: short, so that a rotation is picked up
// by the background refresh within a second.
const demoTTL = time.Second

func run(ctx context.Context, out io.Writer, getenv func(string) string, args []string) error {
	if url := getenv("AZURE_KEYVAULT_URL"); url != "" {
		name := getenv("KEYVAULT_SECRET_NAME")
		if len(args) > 0 {
			name = args[0]
		}
		if name == "" {
			return errors.New("AZURE_KEYVAULT_URL is set: name a secret as the argument or in KEYVAULT_SECRET_NAME")
		}
		return realVault(ctx, out, url, name)
	}
	return localVault(ctx, out)
}

// realVault reads one secret of a real vault through DefaultAzureCredential.
func realVault(ctx context.Context, out io.Writer, url, name string) error {
	p, err := kvsecrets.NewProvider(url, nil, nil)
	if err != nil {
		return err
	}
	defer p.Close()
	fmt.Fprintf(out, "Reading %q from %s with DefaultAzureCredential\n", name, p.VaultURL())
	if err := firstAndCachedReads(ctx, out, p, name); err != nil {
		return err
	}
	printStats(out, p.Stats())
	return nil
}

// localVault runs the whole story against an in-process local vault.
func localVault(ctx context.Context, out io.Writer) error {
	srv, err := kvtest.NewServer(nil)
	if err != nil {
		return err
	}
	defer srv.Close()
	if _, err := srv.SetSecret("MyApiKey", "sk-live-first-key", nil); err != nil {
		return err
	}
	srv.SetLatency(40 * time.Millisecond) // a vault is tens of milliseconds away
	fmt.Fprintf(out, "No AZURE_KEYVAULT_URL set: started a local Key Vault at %s with secret MyApiKey\n\n", srv.URL())

	rotated := make(chan kvsecrets.RotationEvent, 1)
	p, err := kvsecrets.NewProvider(srv.URL(), srv.Credential(), &kvsecrets.Options{
		ClientOptions: srv.ClientOptions(),
		// A short TTL so that the demo sees a background refresh within a
		// second; production wants hours (see the README).
		TTL: demoTTL,
		OnRotate: func(ev kvsecrets.RotationEvent) {
			select {
			case rotated <- ev:
			default:
			}
		},
	})
	if err != nil {
		return err
	}
	defer p.Close()

	if err := firstAndCachedReads(ctx, out, p, "MyApiKey"); err != nil {
		return err
	}

	// Rotation: a new version with a 180-day expiry, as Key Vault's guidance has it.
	expires := time.Now().Add(180 * 24 * time.Hour)
	rotatedAt := time.Now()
	version, err := srv.SetSecret("MyApiKey", "sk-live-second-key", &kvtest.SecretOptions{Expires: expires})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\n3. Rotated MyApiKey in the vault: new version %s…, expires %s\n", version[:8], expires.Format(time.DateOnly))
	select {
	case ev := <-rotated:
		fmt.Fprintf(out, "   OnRotate fired %s later: %s… -> %s…, picked up by the background refresh\n",
			ev.Detected.Sub(rotatedAt).Round(time.Millisecond), ev.OldVersion[:8], ev.NewVersion[:8])
		fmt.Fprintf(out, "   (this demo's TTL is %v; the default is %v, with a refresh at 75-90%% of it, by the\n"+
			"   secret's expiry, at once on Refresh, or within seconds with Event Grid)\n", demoTTL, kvsecrets.DefaultTTL)
	case <-time.After(5 * time.Second):
		return errors.New("the rotation was not picked up")
	}
	s, err := p.GetSecret(ctx, "MyApiKey")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "   Get now returns version %s… (%d characters), expiring %s\n", s.Version[:8], len(s.Value()), s.Expires.Format(time.DateOnly))

	// Outage: every vault request fails; callers keep their value.
	srv.FailFor(time.Hour, kvtest.ServiceUnavailable)
	before := p.Stats().RefreshFailures
	fmt.Fprintf(out, "\n4. The vault goes down (every request answers 503)\n")
	deadline := time.Now().Add(5 * time.Second)
	for p.Stats().RefreshFailures == before && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	errs := 0
	for range 1000 {
		if _, err := p.Get(ctx, "MyApiKey"); err != nil {
			errs++
		}
	}
	fmt.Fprintf(out, "   background refreshes failing: %d; 1,000 Gets during the outage: %d errors (stale value served, up to MaxStale)\n",
		p.Stats().RefreshFailures-before, errs)
	srv.ClearFaults()

	fmt.Fprintln(out)
	printStats(out, p.Stats())
	return nil
}

// firstAndCachedReads shows the first read going to the vault and what
// cached reads cost.
func firstAndCachedReads(ctx context.Context, out io.Writer, p *kvsecrets.Provider, name string) error {
	start := time.Now()
	v, err := p.Get(ctx, name)
	if err != nil {
		var re *azcore.ResponseError
		if errors.As(err, &re) {
			return fmt.Errorf("%w\n(the identity needs the \"Key Vault Secrets User\" role on the vault)", err)
		}
		return err
	}
	first := time.Since(start)
	fmt.Fprintf(out, "1. First Get(%q): %v, read from the vault (%d characters; values are never printed)\n", name, first.Round(time.Microsecond), len(v))

	const n = 1_000_000
	before := p.Stats()
	start = time.Now()
	for range n {
		if _, err := p.Get(ctx, name); err != nil {
			return err
		}
	}
	per := time.Since(start) / n
	after := p.Stats()
	// Background refreshes (the demo's TTL is short) are the only reads of
	// the vault meanwhile; the Gets themselves make none.
	byGets := (after.VaultRequests - before.VaultRequests) - (after.Refreshes - before.Refreshes)
	fmt.Fprintf(out, "2. 1,000,000 cached Gets: %v each; vault requests made by them: %d\n", per, byGets)
	return nil
}

func printStats(out io.Writer, s kvsecrets.Stats) {
	fmt.Fprintf(out, "Stats: hits %d, misses %d, vault requests %d, refreshes %d (failed %d), stale serves %d, rotations %d\n",
		s.Hits, s.Misses, s.VaultRequests, s.Refreshes, s.RefreshFailures, s.StaleServes, s.Rotations)
}
