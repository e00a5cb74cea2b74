// Package recordings loads real Key Vault traffic for tests: the
// test-proxy recordings in testdata/realdata (captured by the JavaScript
// SDK's tests against a real vault; see testdata/realdata/README.md) and
// those shipped with azsecrets v0.12.0.
package recordings

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
)

// Entry is one recorded request and its answer.
type Entry struct {
	RequestURI      string            `json:"RequestUri"`
	RequestMethod   string            `json:"RequestMethod"`
	RequestHeaders  map[string]string `json:"RequestHeaders"`
	RequestBody     json.RawMessage   `json:"RequestBody"`
	StatusCode      int               `json:"StatusCode"`
	ResponseHeaders map[string]string `json:"ResponseHeaders"`
	ResponseBody    json.RawMessage   `json:"ResponseBody"`
}

// Recording is one recorded test.
type Recording struct {
	Name    string  // file name
	Entries []Entry `json:"Entries"`
}

// Load reads a recording file.
func Load(path string) (*Recording, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r := &Recording{Name: filepath.Base(path)}
	if err := json.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("recording %s: %w", path, err)
	}
	return r, nil
}

// realdata is the module's testdata/realdata folder.
func realdata() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "testdata", "realdata")
}

// Dir is testdata/realdata/recordings, in the module's own tree.
func Dir() string { return filepath.Join(realdata(), "recordings") }

// SDKModule is the old azsecrets release whose testdata holds recordings
// made against a real vault (host fakevault.local).
const SDKModule = "github.com/Azure/azure-sdk-for-go/sdk/keyvault/azsecrets@v0.12.0"

// SDKDir returns the recordings folder of SDKModule, downloading the
// module through the Go module proxy (or finding it in the cache).
func SDKDir() (string, error) {
	out, err := exec.Command("go", "mod", "download", "-json", SDKModule).Output()
	if err != nil {
		return "", fmt.Errorf("go mod download %s: %w (needs the Go module proxy or cache)", SDKModule, err)
	}
	var m struct{ Dir string }
	if err := json.Unmarshal(out, &m); err != nil || m.Dir == "" {
		return "", fmt.Errorf("go mod download %s: %s", SDKModule, out)
	}
	return filepath.Join(m.Dir, "testdata", "recordings"), nil
}

// All returns the paths of every recording: the module's own, then the SDK's.
func All() ([]string, error) {
	own, err := filepath.Glob(filepath.Join(Dir(), "*.json"))
	if err != nil {
		return nil, err
	}
	if len(own) == 0 {
		return nil, fmt.Errorf("no recordings in %s", Dir())
	}
	dir, err := SDKDir()
	if err != nil {
		return nil, err
	}
	sdk, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil || len(sdk) == 0 {
		return nil, fmt.Errorf("no recordings in %s", dir)
	}
	sort.Strings(own)
	sort.Strings(sdk)
	return append(own, sdk...), nil
}

// EventGridDir is testdata/realdata/eventgrid: Key Vault events as Event
// Grid and CloudEvents deliver them, quirks included.
func EventGridDir() string { return filepath.Join(realdata(), "eventgrid") }
