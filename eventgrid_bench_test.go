package kvsecrets

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/kvsecrets/kvsecrets/internal/recordings"
)

// Event Grid deliveries of 1 MiB of events that are not ours, as a forged
// or misrouted subscription may send them:
//
//	go test -run '^$' -bench EventGrid -benchmem -count 3 .
//
// Each answers one delivery per op, body read included, beside the
// baseline of one real event; the target is under 50 ms and 10 MB per
// delivery.

// junkEmptyEvents is 349,522 empty events in an array: 1 MiB less 9 bytes,
// more events than Event Grid ever batches.
func junkEmptyEvents() []byte {
	const n = 349522
	b := make([]byte, 0, 3*n+1)
	b = append(b, '[')
	for i := range n {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, "{}"...)
	}
	return append(b, ']')
}

// junkEventSize makes 5,000 events, their commas and brackets fill a
// delivery to just under 1 MiB: 208 bytes.
const junkEventSize = (maxEventBody - 5001) / 5000

// junkEvents is n events of junkEventSize bytes each, in an array, made by
// event(i) and padded.
func junkEvents(n int, event func(i int) string) []byte {
	b := make([]byte, 0, n*(junkEventSize+1)+1)
	b = append(b, '[')
	for i := range n {
		if i > 0 {
			b = append(b, ',')
		}
		ev := event(i)
		ev = ev[:len(ev)-1] + `,"pad":"` // reopen the object
		pad := junkEventSize - len(ev) - len(`"}`)
		if pad < 0 {
			panic("junk event too long: " + ev)
		}
		b = append(b, ev...)
		b = append(b, bytes.Repeat([]byte{'x'}, pad)...)
		b = append(b, `"}`...)
	}
	return append(b, ']')
}

// otherVaultEvent is a new version of a secret of another vault.
func otherVaultEvent(i int) string {
	return fmt.Sprintf(`{"id":"%d","eventType":"Microsoft.KeyVault.SecretNewVersionCreated","data":{"Id":"https://other-kv.vault.azure.net/secrets/s%d/%s","ObjectType":"Secret"}}`,
		i, i, sampleVersion)
}

// otherTypeEvent is an event of a type this package does not handle.
func otherTypeEvent(i int) string {
	return fmt.Sprintf(`{"id":"%d","eventType":"Microsoft.Storage.BlobCreated","subject":"/blobServices/default/containers/c/blobs/b%d","data":{"api":"PutBlob","url":"https://a.blob.core.windows.net/c/b%d"}}`,
		i, i, i)
}

func benchEventGrid(b *testing.B, body []byte, want int) {
	v := newFakeVault()
	v.url = "https://sample-kv.vault.azure.net/"
	p := v.newProvider(b, nil)
	h := p.EventGridHandler(&EventGridOptions{AllowUnauthenticated: true})
	if len(body) > maxEventBody {
		b.Fatalf("body of %d bytes", len(body))
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if w := deliver(h, http.MethodPost, "/e", body, nil); w.Code != want {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
}

func BenchmarkEventGridJunkEmpty(b *testing.B) {
	benchEventGrid(b, junkEmptyEvents(), http.StatusRequestEntityTooLarge)
}

func BenchmarkEventGridJunkOtherVault(b *testing.B) {
	benchEventGrid(b, junkEvents(5000, otherVaultEvent), http.StatusOK)
}

func BenchmarkEventGridJunkOtherType(b *testing.B) {
	benchEventGrid(b, junkEvents(5000, otherTypeEvent), http.StatusOK)
}

// BenchmarkEventGridOneEvent is the baseline: a delivery of one real
// event of this vault, for a secret not cached (so nothing but the
// delivery is measured).
func BenchmarkEventGridOneEvent(b *testing.B) {
	body, err := os.ReadFile(filepath.Join(recordings.EventGridDir(), "rest-api-specs_event-grid-schema_secret_new_version_created.json"))
	if err != nil {
		b.Fatal(err)
	}
	benchEventGrid(b, body, http.StatusOK)
}
