package kvsecrets

import (
	"reflect"
	"strings"
	"testing"
)

// Fuzz targets for every parser of outside input. .ci/run runs each for a
// few seconds; crashers are committed under testdata/fuzz/.

func FuzzCheckName(f *testing.F) {
	for _, s := range []string{"MyApiKey", "", "a_b", strings.Repeat("a", 127), strings.Repeat("a", 128), "ü", "-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := checkName(s)
		valid := len(s) >= 1 && len(s) <= 127
		for _, c := range []byte(s) {
			valid = valid && (c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-')
		}
		if (err == nil) != valid {
			t.Fatalf("checkName(%q) = %v, want valid %v", s, err, valid)
		}
		if err != nil && len(s) > 3 && strings.Contains(err.Error(), s) {
			t.Fatalf("the error repeats the name: %v", err)
		}
	})
}

func FuzzCheckVersion(f *testing.F) {
	for _, s := range []string{"0123456789abcdef0123456789abcdef", "", "a-b", strings.Repeat("a", 65)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := checkVersion(s)
		valid := len(s) >= 1 && len(s) <= 64
		for _, c := range []byte(s) {
			valid = valid && (c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z')
		}
		if (err == nil) != valid {
			t.Fatalf("checkVersion(%q) = %v, want valid %v", s, err, valid)
		}
	})
}

// FuzzLoadTag runs the `keyvault` tag grammar: it never panics, and what it
// accepts names a valid secret with known options only.
func FuzzLoadTag(f *testing.F) {
	for _, s := range []string{"ApiKey", "ApiKey,json", "ApiKey,optional", "ApiKey,json,optional", "", ",json", "ApiKey,",
		"ApiKey,omitempty", "@Microsoft.KeyVault(VaultName=myvault;SecretName=k),optional", "https://x.vault.azure.net/secrets/k/abc,json"} {
		f.Add(s)
	}
	p := &Provider{host: "fake.vault.azure.net"}
	f.Fuzz(func(t *testing.T, tag string) {
		for _, typ := range []reflect.Type{reflect.TypeFor[string](), reflect.TypeFor[int](), reflect.TypeFor[map[string]any]()} {
			lf := loadField{typ: typ}
			if err := p.parseTag(tag, &lf); err != nil {
				continue
			}
			if checkName(lf.ref.name) != nil {
				t.Fatalf("tag %q accepted with name %q", tag, lf.ref.name)
			}
			if typ.Kind() != reflect.String && lf.kind != loadJSON {
				t.Fatalf("tag %q accepted for %v without json", tag, typ)
			}
			_, opts, _ := strings.Cut(tag, ",")
			for o := range strings.SplitSeq(opts, ",") {
				if o = strings.TrimSpace(o); o != "" && o != "json" && o != "optional" {
					t.Fatalf("tag %q accepted with option %q", tag, o)
				}
			}
		}
	})
}
