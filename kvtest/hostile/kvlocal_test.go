package hostile_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

type kvl struct {
	url    string
	client *http.Client
	cmd    *exec.Cmd
	out    *lockedBuffer // stderr, written by exec's goroutine while the test reads it
	lines  chan string   // stdout after the URL line
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitLine waits for a line of kvlocal's output that contains s.
func (k *kvl) waitLine(t *testing.T, s string) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case l := <-k.lines:
			if strings.Contains(l, s) {
				return
			}
		case <-deadline:
			t.Fatalf("kvlocal printed no line with %q; stderr: %s", s, k.out.String())
		}
	}
}

func startKvlocal(t *testing.T, args ...string) *kvl {
	t.Helper()
	dir := t.TempDir()
	bin := buildKvlocal(t)
	ca := filepath.Join(dir, "ca.pem")
	cmd := exec.Command(bin, append([]string{"-port", "0", "-token", "tok-h14", "-ca-out", ca}, args...)...)
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	all := &lockedBuffer{}
	cmd.Stderr = all
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	k := &kvl{cmd: cmd, out: all, lines: make(chan string, 1000)}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		pw.Close()
		t.Logf("kvlocal stderr:\n%s", all.String())
	})
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		line := sc.Text()
		if f := strings.Fields(line); len(f) == 2 && f[0] == "URL:" {
			k.url = f[1]
			break
		}
	}
	go func() {
		for sc.Scan() {
			select {
			case k.lines <- sc.Text():
			default: // nobody is waiting for more
			}
		}
		io.Copy(io.Discard, pr)
	}()
	pem, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	k.client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	return k
}

var (
	kvlocalOnce sync.Once
	kvlocalBin  string
	kvlocalErr  error
)

// buildKvlocal builds cmd/kvlocal once for the package's tests.
func buildKvlocal(t *testing.T) string {
	t.Helper()
	kvlocalOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kvlocal-hostile")
		if err != nil {
			kvlocalErr = err
			return
		}
		kvlocalBin = filepath.Join(dir, "kvlocal")
		if out, err := exec.Command("go", "build", "-o", kvlocalBin, "../../cmd/kvlocal").CombinedOutput(); err != nil {
			kvlocalErr = fmt.Errorf("build: %v %s", err, out)
		}
	})
	if kvlocalErr != nil {
		t.Fatal(kvlocalErr)
	}
	return kvlocalBin
}

func (k *kvl) put(t *testing.T, name, value string) {
	req, _ := http.NewRequest("PUT", k.url+"secrets/"+name+"?api-version=7.4", strings.NewReader(`{"value":"`+value+`"}`))
	req.Header.Set("Authorization", "Bearer tok-h14")
	req.Header.Set("Content-Type", "application/json")
	resp, err := k.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("PUT %s: %d", name, resp.StatusCode)
	}
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := l.Addr().String()
	l.Close()
	return a
}

// signalHook wraps hook, signalling handshakes and notifications.
type signalHook struct {
	*hook
	handshakes chan struct{}
	notes      chan got
}

func (s *signalHook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := len(s.hook.notifications())
	s.hook.ServeHTTP(w, r)
	if r.Method == "OPTIONS" || r.Header.Get("aeg-event-type") == "SubscriptionValidation" {
		select {
		case s.handshakes <- struct{}{}:
		default:
		}
		return
	}
	if ns := s.hook.notifications(); len(ns) > n {
		s.notes <- ns[len(ns)-1]
	}
}

func TestHostileKvlocalEventGridWaitsForWebhook(t *testing.T) {
	for _, schema := range []string{"eventgrid", "cloudevents"} {
		t.Run(schema, func(t *testing.T) {
			addr := freePort(t)
			k := startKvlocal(t, "-eventgrid", "http://"+addr+"/events?key=k", "-eventgrid-schema", schema, "-seed", "Seeded=seedvalue")
			k.put(t, "Early", "early-value") // before the webhook is up
			h := &signalHook{hook: &hook{}, handshakes: make(chan struct{}, 10), notes: make(chan got, 10)}
			l, err := net.Listen("tcp", addr)
			if err != nil {
				t.Skipf("port taken again: %v", err)
			}
			srv := &http.Server{Handler: h}
			go srv.Serve(l)
			defer srv.Close()
			select {
			case <-h.handshakes:
			case <-time.After(20 * time.Second):
				t.Fatalf("no handshake retried within 20s; kvlocal says: %s", k.out.String())
			}
			// Events reach a subscription made after the handshake is
			// answered, as with Event Grid: wait for kvlocal to say so.
			k.waitLine(t, "validated by")
			k.put(t, "Late", "late-value-SECRET")
			deadline := time.After(20 * time.Second)
			for {
				select {
				case n := <-h.notes:
					es := events(t, n.Body)
					t.Logf("delivered %s %s", es[0].kind(), es[0].Subject)
					if strings.Contains(string(n.Body), "SECRET") {
						t.Errorf("value in event")
					}
					if es[0].Subject == "Late" {
						return
					}
				case <-deadline:
					t.Fatalf("event for Late never delivered; kvlocal: %s", k.out.String())
				}
			}
		})
	}
}

func TestHostileKvlocalNoEventsWithoutHandshake(t *testing.T) {
	h := &signalHook{hook: &hook{badHandshake: true}, handshakes: make(chan struct{}, 100), notes: make(chan got, 10)}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	defer srv.Close()
	k := startKvlocal(t, "-eventgrid", "http://"+l.Addr().String()+"/e")
	<-h.handshakes
	k.put(t, "A", "a")
	for i := 0; i < 2; i++ {
		select {
		case <-h.handshakes:
		case n := <-h.notes:
			t.Fatalf("event delivered without a validated handshake: %s", n.Body)
		case <-time.After(20 * time.Second):
			t.Fatalf("handshake not retried")
		}
	}
	if n := h.hook.notifications(); len(n) != 0 {
		t.Fatalf("events delivered without handshake: %d", len(n))
	}
}
