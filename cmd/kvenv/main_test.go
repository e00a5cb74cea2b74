package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/kvsecrets/kvsecrets/kvtest"
)

var (
	buildDir  string
	buildErr  error
	buildOut  []byte
	buildPath string
	built     sync.Once
)

func TestMain(m *testing.M) {
	buildDir, _ = os.MkdirTemp("", "kvenv-test")
	code := m.Run()
	os.RemoveAll(buildDir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// buildOnce builds the kvenv binary once for all tests.
func buildOnce(t *testing.T) string {
	built.Do(func() {
		buildPath = filepath.Join(buildDir, "kvenv")
		buildOut, buildErr = exec.Command("go", "build", "-o", buildPath, ".").CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("go build: %v\n%s", buildErr, buildOut)
	}
	return buildPath
}

// kvenvSetup builds kvenv and starts a local vault reachable as
// https://127.0.0.1:PORT/, as cmd/kvlocal serves it.
func kvenvSetup(t *testing.T) (bin string, vault *kvtest.Server, env []string) {
	t.Helper()
	dir := t.TempDir()
	bin = buildOnce(t)
	vault = kvtest.NewTestServer(t, nil)
	vault.Seed(map[string]string{"DbPassword": "pw-secret", "ApiKey": "key-secret"})
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, vault.CACertPEM(), 0o600)
	tok, _ := vault.IssueToken()
	url := vault.LoopbackURL()
	env = []string{
		"PATH=" + os.Getenv("PATH"),
		"KVLOCAL_TOKEN=" + tok,
		"PLAIN=unchanged",
		"DB_PASSWORD=@Microsoft.KeyVault(SecretUri=" + url + "secrets/DbPassword/)",
		"API_KEY=@Microsoft.KeyVault(SecretUri=" + url + "secrets/ApiKey)",
	}
	return bin, vault, append(env, "KVENV_FLAGS=-vault "+url+" -ca-file "+ca+" -token-env KVLOCAL_TOKEN -no-challenge-verification")
}

func kvenv(t *testing.T, bin string, env []string, args ...string) *exec.Cmd {
	var flags []string
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "KVENV_FLAGS="); ok {
			flags = strings.Fields(v)
		}
	}
	cmd := exec.Command(bin, append(flags, args...)...)
	cmd.Env = env
	return cmd
}

func TestKvenvExecsTheCommandWithResolvedEnvironment(t *testing.T) {
	bin, _, env := kvenvSetup(t)
	cmd := kvenv(t, bin, env, "--", "sh", "-c", `echo "DB=$DB_PASSWORD API=$API_KEY PLAIN=$PLAIN TOKEN=${KVLOCAL_TOKEN:-gone}"; exit 3`)
	out, err := cmd.Output()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Fatalf("exit: %v (stdout %s)", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "DB=pw-secret API=key-secret PLAIN=unchanged TOKEN=gone" {
		t.Fatalf("child saw %q", got)
	}
}

func TestKvenvListsNamesOnly(t *testing.T) {
	bin, vault, env := kvenvSetup(t)
	out, err := kvenv(t, bin, env).Output()
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "API_KEY\nDB_PASSWORD\n" {
		t.Fatalf("listing = %q", out)
	}
	if vault.Counts().Total != 0 {
		t.Fatal("listing contacted the vault")
	}
}

func TestKvenvFailsNamingEachVariableAndRunsNothing(t *testing.T) {
	bin, vault, env := kvenvSetup(t)
	url := vault.LoopbackURL()
	env = append(env, "MISSING_ONE=@Microsoft.KeyVault(SecretUri="+url+"secrets/Nope/)",
		"EVIL=@Microsoft.KeyVault(SecretUri=https://evil.example/secrets/x)")
	marker := filepath.Join(t.TempDir(), "ran")
	var stderr bytes.Buffer
	cmd := kvenv(t, bin, env, "--", "touch", marker)
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("exit: %v", err)
	}
	if !strings.Contains(stderr.String(), "variable EVIL") || strings.Contains(stderr.String(), "pw-secret") || strings.Contains(stderr.String(), "key-secret") {
		t.Fatalf("stderr: %s", stderr.String())
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the command ran")
	}
	// Without the host problem, the missing secret is named.
	env = env[:len(env)-1]
	stderr.Reset()
	cmd = kvenv(t, bin, env, "--", "touch", marker)
	cmd.Stderr = &stderr
	cmd.Run()
	if !strings.Contains(stderr.String(), "variable MISSING_ONE") || !strings.Contains(stderr.String(), "not found") {
		t.Fatalf("stderr: %s", stderr.String())
	}
}

func TestKvenvSignalsReachTheCommand(t *testing.T) {
	bin, _, env := kvenvSetup(t)
	cmd := kvenv(t, bin, env, "--", "sh", "-c", `trap 'echo "got TERM"; exit 5' TERM; echo ready; while :; do sleep 0.05; done`)
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() || sc.Text() != "ready" {
		t.Fatalf("child did not start: %q", sc.Text())
	}
	cmd.Process.Signal(syscall.SIGTERM) // kvenv's pid is the command's after exec
	done := make(chan error, 1)
	go func() {
		var rest []string
		for sc.Scan() {
			rest = append(rest, sc.Text())
		}
		err := cmd.Wait()
		if len(rest) == 0 || rest[0] != "got TERM" {
			err = errors.New("the trap did not run: " + strings.Join(rest, "|"))
		}
		done <- err
	}()
	select {
	case err := <-done:
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 5 {
			t.Fatalf("after SIGTERM: %v", err)
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the command did not exit on SIGTERM")
	}
}

func TestKvenvUsage(t *testing.T) {
	for _, args := range [][]string{{"sh"}, {"--"}, {"-nope"}} {
		var out, errb bytes.Buffer
		plan, code := run(context.Background(), args, nil, &out, &errb)
		if plan != nil || code != 2 {
			t.Errorf("run(%q) = %v, %d", args, plan, code)
		}
	}
	plan, code := run(context.Background(), []string{"--", "definitely-not-a-command-xyz"}, []string{"PATH=/usr/bin"}, &bytes.Buffer{}, &bytes.Buffer{})
	if plan != nil || code != 127 {
		t.Fatalf("unknown command: %v %d", plan, code)
	}
}

// TestKvenvSendsNoTokenToAHostOfTheReferencesChoosing points a reference at
// an HTTPS server on loopback that answers like Key Vault and records
// Authorization headers. Without an explicit -vault, kvenv refuses to take
// that host as its vault and refuses -token-env and
// -no-challenge-verification, and the server receives nothing; with the
// host given explicitly (the control), the token does reach it.
func TestKvenvSendsNoTokenToAHostOfTheReferencesChoosing(t *testing.T) {
	var mu sync.Mutex
	var hits int
	var auth []string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		if a := r.Header.Get("Authorization"); a != "" {
			auth = append(auth, a)
		}
		mu.Unlock()
		if r.Header.Get("Authorization") == "" {
			w.Header().Set("WWW-Authenticate", `Bearer authorization="https://login.microsoftonline.com/t", resource="https://example.com"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"value":"stolen","id":"https://` + r.Host + `/secrets/x/0123456789abcdef0123456789abcdef"}`))
	}))
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600)
	hostile := srv.URL + "/" // https://127.0.0.1:PORT/
	env := []string{"PATH=" + os.Getenv("PATH"), "TOK=the-token", "AZURE_CLIENT_ID=", "DB_PASSWORD=@Microsoft.KeyVault(SecretUri=" + hostile + "secrets/x)"}

	for _, args := range [][]string{
		{"-token-env", "TOK", "-ca-file", ca, "--", "true"},
		{"-token-env", "TOK", "-no-challenge-verification", "-ca-file", ca, "--", "true"},
		{"-no-challenge-verification", "-ca-file", ca, "--", "true"},
		{"-ca-file", ca, "--", "true"},
		{"-ca-file", ca, "-allow-host", "evil.example.com", "--", "true"},
	} {
		var stderr bytes.Buffer
		plan, code := run(t.Context(), args, env, &bytes.Buffer{}, &stderr)
		if plan != nil || code == 0 {
			t.Errorf("kvenv %q: ran the command (exit %d)", args, code)
		}
		if strings.Contains(stderr.String(), "the-token") || strings.Contains(stderr.String(), "stolen") {
			t.Errorf("kvenv %q: stderr reveals the token or a value: %s", args, stderr.String())
		}
	}
	mu.Lock()
	if hits != 0 || len(auth) != 0 {
		t.Fatalf("the reference's host received %d requests, Authorization %q", hits, auth)
	}
	mu.Unlock()

	// Control: named explicitly with -vault, the same host gets the token.
	plan, code := run(t.Context(), []string{"-vault", hostile, "-token-env", "TOK", "-no-challenge-verification", "-ca-file", ca, "--", "true"}, env, &bytes.Buffer{}, &bytes.Buffer{})
	if plan == nil || code != 0 {
		t.Fatalf("control: exit %d", code)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(auth) != 1 || auth[0] != "Bearer the-token" {
		t.Fatalf("control: the host received Authorization %q, want the token once", auth)
	}
}

// TestKvenvTimeoutNamesTheSecretAndTheVault: when -timeout passes while a
// secret is read, the error says which secret, which vault, and that the
// deadline passed while waiting for it.
func TestKvenvTimeoutNamesTheSecretAndTheVault(t *testing.T) {
	bin, vault, env := kvenvSetup(t)
	vault.SetLatency(time.Minute)
	var stderr bytes.Buffer
	cmd := kvenv(t, bin, env, "-timeout", "300ms", "--", "true")
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("exit: %v", err)
	}
	msg := stderr.String()
	for _, want := range []string{"variable DB_PASSWORD", `secret "DbPassword"`, "in vault 127.0.0.1:", "deadline passed while waiting for the vault"} {
		if !strings.Contains(msg, want) {
			t.Errorf("stderr lacks %q: %s", want, msg)
		}
	}
	vault.SetLatency(0)
}
