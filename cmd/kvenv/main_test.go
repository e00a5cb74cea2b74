package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
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
