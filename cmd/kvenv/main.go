// Command kvenv runs a command with the Key Vault references in its
// environment replaced by the secrets they name.
//
//	export DB_PASSWORD='@Microsoft.KeyVault(SecretUri=https://myvault.vault.azure.net/secrets/DbPassword/)'
//	kvenv -- ./server --port 8080
//
// Every variable whose value is an @Microsoft.KeyVault(...) reference (the
// App Service syntax: SecretUri=..., or VaultName=...;SecretName=...[;SecretVersion=...])
// is resolved, in parallel, and kvenv then replaces itself with the command
// (exec): the command gets kvenv's process id, its signals and its exit
// code. If any reference fails, kvenv exits 1 naming each failing variable,
// never a value, and runs nothing.
//
// Without "--", kvenv prints the names of the variables it would resolve
// (never values) and exits.
//
// By default it authenticates with DefaultAzureCredential. For the local
// vault of cmd/kvlocal:
//
//	KVLOCAL_TOKEN=<token kvlocal printed> kvenv -vault https://127.0.0.1:8443/ \
//	    -ca-file /tmp/kvlocal-ca.pem -token-env KVLOCAL_TOKEN -no-challenge-verification -- ./server
//
// A vault taken from the first reference (without -vault or
// AZURE_KEYVAULT_URL) must be a Key Vault host (or -allow-host), and
// -token-env and -no-challenge-verification need an explicit -vault, so
// that a reference never gets the token sent to a host of its choosing.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/kvsecrets/kvsecrets"
)

func main() {
	plan, code := run(context.Background(), os.Args[1:], os.Environ(), os.Stdout, os.Stderr)
	if plan == nil {
		os.Exit(code)
	}
	if err := syscall.Exec(plan.path, plan.argv, plan.env); err != nil {
		fmt.Fprintf(os.Stderr, "kvenv: exec %s: %v\n", plan.argv[0], err)
		os.Exit(126)
	}
}

// execPlan is the command to become.
type execPlan struct {
	path string
	argv []string
	env  []string
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

type staticToken string

func (s staticToken) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: string(s), ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// run resolves the environment and returns what to exec, or nil and an
// exit code.
func run(ctx context.Context, args, environ []string, stdout, stderr io.Writer) (*execPlan, int) {
	fs := flag.NewFlagSet("kvenv", flag.ContinueOnError)
	fs.SetOutput(stderr)
	vault := fs.String("vault", "", "vault URL of the Provider (default $AZURE_KEYVAULT_URL, else the first reference's vault if it is a Key Vault host)")
	caFile := fs.String("ca-file", "", "PEM file of an extra CA certificate to trust (cmd/kvlocal's)")
	tokenEnv := fs.String("token-env", "", "name of a variable holding a bearer token to use instead of DefaultAzureCredential (removed from the command's environment; needs -vault)")
	noVerify := fs.Bool("no-challenge-verification", false, "accept a challenge from a host outside vault.azure.net (cmd/kvlocal on 127.0.0.1; needs -vault)")
	timeout := fs.Duration("timeout", 30*time.Second, "bound on resolving every reference")
	var allow listFlag
	fs.Var(&allow, "allow-host", "host[:port] references may name besides Key Vault's DNS suffixes (repeatable)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: kvenv [flags] -- command [args...]\n       kvenv [flags]    (lists the variables it would resolve)")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, 2
	}
	if (*tokenEnv != "" || *noVerify) && *vault == "" {
		// Both loosen what protects the token; the host they apply to must be
		// one the user named, not one taken from a reference.
		fmt.Fprintln(stderr, "kvenv: -token-env and -no-challenge-verification need an explicit -vault")
		return nil, 2
	}
	command := fs.Args()
	dashdash := len(args) > len(command) && args[len(args)-len(command)-1] == "--"
	if len(command) > 0 && !dashdash {
		fmt.Fprintln(stderr, "kvenv: put -- before the command")
		return nil, 2
	}

	var names []string
	firstVault := ""
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if ok && kvsecrets.IsReference(v) {
			names = append(names, k)
			if r, err := kvsecrets.ParseReference(v); err == nil && firstVault == "" {
				firstVault = r.VaultURL
			}
		}
	}
	sort.Strings(names)
	if !dashdash {
		for _, n := range names {
			fmt.Fprintln(stdout, n)
		}
		return nil, 0
	}
	if len(command) == 0 {
		fmt.Fprintln(stderr, "kvenv: no command after --")
		return nil, 2
	}

	env := environ
	if len(names) > 0 {
		var err error
		env, err = resolve(ctx, environ, *vault, firstVault, *caFile, *tokenEnv, *noVerify, allow, *timeout)
		if err != nil {
			fmt.Fprintln(stderr, "kvenv:", err)
			return nil, 1
		}
	}
	if *tokenEnv != "" {
		env = without(env, *tokenEnv)
	}
	path, err := exec.LookPath(command[0])
	if err != nil {
		fmt.Fprintf(stderr, "kvenv: %v\n", err)
		return nil, 127
	}
	return &execPlan{path: path, argv: command, env: env}, 0
}

func resolve(ctx context.Context, environ []string, vault, firstVault, caFile, tokenEnv string, noVerify bool, allow []string, timeout time.Duration) ([]string, error) {
	if vault == "" {
		vault = lookup(environ, "AZURE_KEYVAULT_URL")
	}
	if vault == "" && firstVault != "" {
		// A vault taken from a reference gets the token like any other host
		// a reference names: only if it is a Key Vault host or allowed.
		u, err := url.Parse(firstVault)
		if err != nil || !(kvsecrets.IsVaultHost(u.Host) || slices.ContainsFunc(allow, func(a string) bool { return strings.EqualFold(a, u.Host) })) {
			return nil, errors.New("the first reference's vault is not a Key Vault host: pass -vault, or -allow-host for it")
		}
		vault = firstVault
	}
	if vault == "" {
		return nil, errors.New("no vault: pass -vault or set AZURE_KEYVAULT_URL")
	}
	co := &azsecrets.ClientOptions{DisableChallengeResourceVerification: noVerify}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-ca-file %s holds no PEM certificate", caFile)
		}
		co.Transport = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	}
	var cred azcore.TokenCredential // nil: DefaultAzureCredential
	if tokenEnv != "" {
		tok := lookup(environ, tokenEnv)
		if tok == "" {
			return nil, fmt.Errorf("-token-env: %s is empty", tokenEnv)
		}
		cred = staticToken(tok)
	}
	p, err := kvsecrets.NewProvider(vault, cred, &kvsecrets.Options{ClientOptions: co, AllowedVaultHosts: allow})
	if err != nil {
		return nil, err
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return p.ResolveEnv(ctx, environ)
}

func lookup(environ []string, key string) string {
	for i := len(environ) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(environ[i], "="); ok && k == key {
			return v
		}
	}
	return ""
}

func without(environ []string, key string) []string {
	out := make([]string, 0, len(environ))
	for _, kv := range environ {
		if k, _, _ := strings.Cut(kv, "="); k != key {
			out = append(out, kv)
		}
	}
	return out
}
