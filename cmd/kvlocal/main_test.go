package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type staticToken string

func (s staticToken) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: string(s), ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// TestKvlocalProcess builds and runs the real binary: it seeds from a flag
// and a file, prints URL, certificate and token, serves the Go SDK, and
// exits 0 on SIGTERM.
func TestKvlocalProcess(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "kvlocal")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	seed := filepath.Join(dir, "seed.json")
	os.WriteFile(seed, []byte(`{"FromFile": "file-value", "Rich": {"value": "r", "contentType": "text/plain", "expires": "2030-01-01T00:00:00Z", "tags": {"a": "b"}}, "Off": {"value": "x", "enabled": false}}`), 0o644)
	ca := filepath.Join(dir, "ca.pem")
	cmd := exec.Command(bin, "-port", "0", "-seed", "MyApiKey=flag-value", "-seed-file", seed, "-ca-out", ca, "-token", "fixed-token")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()

	sc := bufio.NewScanner(stdout)
	var url string
	for sc.Scan() {
		if m := regexp.MustCompile(`URL:\s+(\S+)`).FindStringSubmatch(sc.Text()); m != nil {
			url = m[1]
		}
		if regexp.MustCompile(`^Node:`).MatchString(sc.Text()) {
			break
		}
	}
	if url == "" {
		t.Fatal("no URL printed")
	}
	pem, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	c, err := azsecrets.NewClient(url, staticToken("fixed-token"), &azsecrets.ClientOptions{
		ClientOptions:                        azcore.ClientOptions{Transport: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}},
		DisableChallengeResourceVerification: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for name, want := range map[string]string{"MyApiKey": "flag-value", "FromFile": "file-value", "Rich": "r"} {
		got, err := c.GetSecret(ctx, name, "", nil)
		if err != nil || *got.Value != want {
			t.Fatalf("GetSecret(%s) = %v, %v", name, got.Value, err)
		}
		if name == "Rich" && (got.Attributes.Expires.Year() != 2030 || *got.ContentType != "text/plain" || *got.Tags["a"] != "b") {
			t.Fatalf("Rich = %+v", got)
		}
	}
	if _, err := c.GetSecret(ctx, "Off", "", nil); err == nil {
		t.Fatal("a disabled seed was served")
	}

	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() {
		for sc.Scan() {
		}
		done <- cmd.Wait()
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("kvlocal did not exit on SIGTERM")
	}
}

func TestKvlocalRefusesBadFlags(t *testing.T) {
	for _, args := range [][]string{{"-port", "70000"}, {"-seed", "novalue"}, {"extra"}, {"-seed-file", "/nonexistent.json"}, {"-vault-name", "x"},
		{"-eventgrid", "/relative"}, {"-eventgrid-schema", "xml"}} {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := run(ctx, args, discard{}); err == nil {
			t.Errorf("run(%q) succeeded", args)
		}
	}
}

type discard struct{}

func (discard) Write(b []byte) (int, error) { return len(b), nil }

// TestKvlocalDefaultsStayOutOfTheWorkingFolder runs kvlocal as the README
// shows it, without -ca-out and with the sample seed file: the certificate
// goes to the user's cache folder, whose path is printed, the working folder
// stays empty, and every secret of the sample is served.
func TestKvlocalDefaultsStayOutOfTheWorkingFolder(t *testing.T) {
	sample, err := filepath.Abs("seed.example.json")
	if err != nil {
		t.Fatal(err)
	}
	work, cache := t.TempDir(), t.TempDir()
	t.Chdir(work)
	t.Setenv("XDG_CACHE_HOME", cache)

	ctx, cancel := context.WithCancel(context.Background())
	out := &lines{printed: make(chan string, 100)}
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"-port", "0", "-token", "tok", "-seed-file", sample}, out) }()
	var url, ca, names string
	for url == "" || ca == "" || names == "" {
		select {
		case l := <-out.printed:
			if m := regexp.MustCompile(`^  URL:\s+(\S+)`).FindStringSubmatch(l); m != nil {
				url = m[1]
			}
			if m := regexp.MustCompile(`^  CA cert:\s+(\S+)`).FindStringSubmatch(l); m != nil {
				ca = m[1]
			}
			if m := regexp.MustCompile(`^  Secrets:\s+(.+)`).FindStringSubmatch(l); m != nil {
				names = m[1]
			}
		case err := <-done:
			t.Fatalf("kvlocal stopped: %v", err)
		}
	}
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	if want := filepath.Join(cache, "kvlocal") + string(filepath.Separator); !strings.HasPrefix(ca, want) {
		t.Errorf("CA certificate at %s, want it under %s", ca, want)
	}
	if names != "DatabaseConfig, MyApiKey, PartnerApiKey, RetiredKey" {
		t.Errorf("seeded %q", names)
	}
	pem, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("the printed CA file holds no certificate")
	}
	transport := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	defer transport.CloseIdleConnections()
	c, err := azsecrets.NewClient(url, staticToken("tok"), &azsecrets.ClientOptions{
		ClientOptions:                        azcore.ClientOptions{Transport: &http.Client{Transport: transport}},
		DisableChallengeResourceVerification: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.GetSecret(context.Background(), "DatabaseConfig", "", nil)
	if err != nil || *got.ContentType != "application/json" || *got.Tags["owner"] != "payments" {
		t.Fatalf("DatabaseConfig: %+v, %v", got, err)
	}
	if left, _ := os.ReadDir(work); len(left) != 0 {
		t.Errorf("kvlocal wrote %s into the working folder", left[0].Name())
	}
}

// lines passes each line written to it to printed.
type lines struct {
	mu      sync.Mutex
	buf     []byte
	printed chan string
}

func (l *lines) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, b...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		select {
		case l.printed <- string(l.buf[:i]):
		default:
		}
		l.buf = l.buf[i+1:]
	}
}

// TestKvlocalDeliversEventGridEvents runs kvlocal with -eventgrid pointing
// at a webhook that is not ready at first (its first handshake fails, as a
// service starting after the vault would): kvlocal validates it on a later
// try, delivers the event of a new version written through the REST API,
// and logs the delivery.
func TestKvlocalDeliversEventGridEvents(t *testing.T) {
	var mu sync.Mutex
	var handshakes int
	var events []string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		if r.Header.Get("aeg-event-type") == "SubscriptionValidation" {
			handshakes++
			if handshakes == 1 {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			var evs []struct {
				Data struct{ ValidationCode string } `json:"data"`
			}
			json.Unmarshal(body, &evs)
			fmt.Fprintf(w, `{"validationResponse":%q}`, evs[0].Data.ValidationCode)
			return
		}
		if r.URL.Query().Get("key") != "k" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		events = append(events, string(body))
	}))
	defer hook.Close()

	ctx, cancel := context.WithCancel(context.Background())
	out := &lines{printed: make(chan string, 100)}
	done := make(chan error, 1)
	dir := t.TempDir()
	go func() {
		done <- run(ctx, []string{"-port", "0", "-token", "tok", "-ca-out", filepath.Join(dir, "ca.pem"), "-eventgrid", hook.URL + "/events?key=k"}, out)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	var url string
	var validated, delivered bool
	var c *azsecrets.Client
	timeout := time.After(20 * time.Second)
	for !delivered {
		select {
		case l := <-out.printed:
			if m := regexp.MustCompile(`^  URL:\s+(\S+)`).FindStringSubmatch(l); m != nil {
				url = m[1]
			}
			if strings.Contains(l, "validated by "+hook.URL) {
				validated = true
				pem, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
				pool := x509.NewCertPool()
				pool.AppendCertsFromPEM(pem)
				c, _ = azsecrets.NewClient(url, staticToken("tok"), &azsecrets.ClientOptions{
					ClientOptions:                        azcore.ClientOptions{Transport: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}},
					DisableChallengeResourceVerification: true,
				})
				if _, err := c.SetSecret(context.Background(), "Rotated", azsecrets.SetSecretParameters{Value: to.Ptr("v2")}, nil); err != nil {
					t.Fatal(err)
				}
			}
			if strings.Contains(l, "SecretNewVersionCreated Rotated/") && strings.HasSuffix(l, ": 200 (delivered)") {
				delivered = true
			}
		case err := <-done:
			t.Fatalf("kvlocal stopped: %v", err)
		case <-timeout:
			t.Fatalf("validated %v, delivered %v", validated, delivered)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if handshakes != 2 || len(events) != 1 || !strings.Contains(events[0], `"eventType":"Microsoft.KeyVault.SecretNewVersionCreated"`) {
		t.Errorf("%d handshakes, events %q", handshakes, events)
	}
}
