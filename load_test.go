package kvsecrets

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kvsecrets/kvsecrets/kvtest"
)

func TestParseRefGrammar(t *testing.T) {
	const v = "0123456789abcdef0123456789abcdef"
	good := map[string]ref{
		"MyApiKey":   {name: "MyApiKey"},
		"  MyApiKey": {name: "MyApiKey"},
		"https://myvault.vault.azure.net/secrets/MyApiKey":                                          {host: "myvault.vault.azure.net", name: "MyApiKey"},
		"https://MyVault.vault.azure.net/secrets/MyApiKey/":                                         {host: "myvault.vault.azure.net", name: "MyApiKey"},
		"https://myvault.vault.azure.net/secrets/MyApiKey/" + v:                                     {host: "myvault.vault.azure.net", name: "MyApiKey", version: v},
		"https://myvault.vault.azure.cn/secrets/k/" + v + "/":                                       {host: "myvault.vault.azure.cn", name: "k", version: v},
		"@Microsoft.KeyVault(SecretUri=https://myvault.vault.azure.net/secrets/mysecret/)":          {host: "myvault.vault.azure.net", name: "mysecret"},
		"@Microsoft.KeyVault(SecretUri=https://myvault.vault.azure.net/secrets/mysecret/" + v + ")": {host: "myvault.vault.azure.net", name: "mysecret", version: v},
		"@Microsoft.KeyVault(VaultName=myvault;SecretName=mysecret)":                                {host: "myvault.vault.azure.net", name: "mysecret"},
		"@Microsoft.KeyVault(VaultName=myvault;SecretName=mysecret;SecretVersion=" + v + ")":        {host: "myvault.vault.azure.net", name: "mysecret", version: v},
		"@Microsoft.KeyVault(secretname=mysecret; vaultname=MyVault;)":                              {host: "myvault.vault.azure.net", name: "mysecret"},
		"@Microsoft.KeyVault(VaultName=myvault;SecretName=mysecret;SecretVersion=)":                 {host: "myvault.vault.azure.net", name: "mysecret"},
	}
	for in, want := range good {
		got, err := parseRef(in, ".vault.azure.net")
		if err != nil || got != want {
			t.Errorf("parseRef(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	bad := []string{
		"", "my_secret", "http://myvault.vault.azure.net/secrets/k", "ftp://x/secrets/k",
		"https://myvault.vault.azure.net/keys/k", "https://myvault.vault.azure.net/secrets/", "https://myvault.vault.azure.net/secrets/k/v/extra",
		"https://myvault.vault.azure.net/secrets/bad_name", "https://myvault.vault.azure.net/secrets/k/bad-version",
		"https://myvault.vault.azure.net/secrets/k?api-version=7.4", "https://u:p@myvault.vault.azure.net/secrets/k",
		"https://myvault.vault.azure.net/secrets/k#frag", "https://myvault.vault.azure.net/secrets/%6B",
		"@Microsoft.KeyVault(SecretUri=https://myvault.vault.azure.net/secrets/k/", "@Microsoft.KeyVault()",
		"@Microsoft.KeyVault(VaultName=myvault)", "@Microsoft.KeyVault(SecretName=k)", "@Microsoft.KeyVault(VaultName=v;SecretName=k)",
		"@Microsoft.KeyVault(VaultName=myvault;SecretName=k;Extra=1)", "@Microsoft.KeyVault(VaultName=myvault;VaultName=other;SecretName=k)",
		"@Microsoft.KeyVault(SecretUri=https://myvault.vault.azure.net/secrets/k;SecretName=k)", "@Microsoft.KeyVault(VaultName)",
		"@Microsoft.KeyVault(VaultName=my.vault;SecretName=k)",
	}
	for _, in := range bad {
		_, err := parseRef(in, ".vault.azure.net")
		if !errors.Is(err, ErrInvalidReference) {
			t.Errorf("parseRef(%q) = %v, want ErrInvalidReference", in, err)
			continue
		}
		if len(in) > 12 && strings.Contains(err.Error(), in) {
			t.Errorf("error repeats the reference: %v", err)
		}
	}
}

func FuzzParseRef(f *testing.F) {
	for _, s := range []string{"MyApiKey", "https://myvault.vault.azure.net/secrets/k/0123456789abcdef0123456789abcdef",
		"@Microsoft.KeyVault(SecretUri=https://myvault.vault.azure.net/secrets/mysecret/)",
		"@Microsoft.KeyVault(VaultName=myvault;SecretName=mysecret;SecretVersion=abc)", "https://127.0.0.1:8443/secrets/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := parseRef(s, ".vault.azure.net")
		if err != nil {
			return
		}
		if checkName(r.name) != nil || (r.version != "" && checkVersion(r.version) != nil) {
			t.Fatalf("parseRef(%q) accepted %+v", s, r)
		}
		if r.host != strings.ToLower(r.host) || strings.ContainsAny(r.host, " /?#@\\") {
			t.Fatalf("parseRef(%q) accepted host %q", s, r.host)
		}
		if r.host == "" && strings.Contains(s, "/") {
			t.Fatalf("parseRef(%q) lost the host", s)
		}
		// The invariant that guards the token: whatever a Provider accepts
		// sends it only to its own host, a host it was given explicitly, or
		// a Key Vault DNS name (checked here independently of hostAllowed).
		p := &Provider{host: "own.example:8443", cfg: config{allowedHosts: []string{"127.0.0.1:8443"}}}
		pr, err := p.parseRef(s)
		if err != nil {
			return
		}
		host := pr.host
		if host != "" && host != "127.0.0.1:8443" && !vaultHostPattern.MatchString(host) {
			t.Fatalf("Resolve(%q) would send the token to %q", s, host)
		}
	})
}

// vaultHostPattern is what a Key Vault host looks like: a vault name of 3-24
// letters, digits and '-' under one of the DNS suffixes, with no port.
var vaultHostPattern = regexp.MustCompile(`^[a-z0-9-]{3,24}\.(vault\.azure\.net|vault\.azure\.cn|vault\.usgovcloudapi\.net|vault\.microsoftazure\.de|managedhsm\.azure\.net)$`)

func TestHostAllowList(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("K", "x")
		p := v.newProvider(t, &Options{AllowedVaultHosts: []string{"127.0.0.1:8443", "vault.internal.example"}})
		for _, in := range []string{
			"https://evil.example/secrets/K",
			"https://127.0.0.1/secrets/K",
			"https://127.0.0.1:9999/secrets/K",
			"https://myvault.vault.azure.net.evil.example/secrets/K",
			"https://vault.azure.net/secrets/K",
			"https://x.vault.azure.net:8443/secrets/K",
			"https://a_b.vault.azure.net/secrets/K",
			"@Microsoft.KeyVault(SecretUri=https://evil.example/secrets/K)",
		} {
			if _, err := p.Resolve(context.Background(), in); !errors.Is(err, ErrHostNotAllowed) {
				t.Errorf("Resolve(%q) = %v, want ErrHostNotAllowed", in, err)
			}
		}
		for _, host := range []string{"myvault.vault.azure.net", "my-vault.vault.usgovcloudapi.net", "x01.vault.azure.cn",
			"hsm01.managedhsm.azure.net", "127.0.0.1:8443", "VAULT.internal.example"} {
			if !hostAllowed(strings.ToLower(host), p.cfg.allowedHosts) {
				t.Errorf("hostAllowed(%q) = false", host)
			}
		}
		if n := v.requests.Load(); n != 0 {
			t.Fatalf("refused references reached the network: %d requests", n)
		}
		// The Provider's own vault, by URI or VaultName, is the Provider itself.
		for _, in := range []string{"K", fakeVaultURL + "secrets/K", "@Microsoft.KeyVault(VaultName=fake;SecretName=K)"} {
			if got, err := p.Resolve(context.Background(), in); err != nil || got != "x" {
				t.Errorf("Resolve(%q) = %q, %v", in, got, err)
			}
		}
		if n := v.requests.Load(); n != 1 {
			t.Fatalf("requests = %d, want one read of K shared by every form", n)
		}
	})
}

func TestResolveAcrossTwoLocalVaults(t *testing.T) {
	tenant := kvtest.NewTenant("", 0)
	a := kvtest.NewTestServer(t, &kvtest.Options{VaultName: "vault-a", Tenant: tenant})
	b := kvtest.NewTestServer(t, &kvtest.Options{VaultName: "vault-b", Tenant: tenant})
	a.Seed(map[string]string{"Local": "from-a"})
	b1, _ := b.SetSecret("Remote", "from-b-1", nil)
	b.SetSecret("Remote", "from-b-2", nil)
	p, err := NewProvider(a.URL(), tenant.Credential(), &Options{ClientOptions: kvtest.ClientOptionsFor(a, b)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx := context.Background()
	for in, want := range map[string]string{
		"Local": "from-a",
		"https://vault-b.vault.azure.net/secrets/Remote":                                    "from-b-2",
		"https://vault-b.vault.azure.net/secrets/Remote/" + b1:                              "from-b-1",
		"@Microsoft.KeyVault(SecretUri=https://vault-b.vault.azure.net/secrets/Remote/)":    "from-b-2",
		"@Microsoft.KeyVault(VaultName=vault-b;SecretName=Remote;SecretVersion=" + b1 + ")": "from-b-1",
		"@Microsoft.KeyVault(VaultName=vault-a;SecretName=Local)":                           "from-a",
	} {
		if got, err := p.Resolve(ctx, in); err != nil || got != want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if n := b.SecretRequests("Remote"); n != 2 {
		t.Fatalf("reads of vault-b = %d, want 2 (latest and the pinned version, each cached)", n)
	}
	if _, err := p.Resolve(ctx, "https://vault-b.vault.azure.net/secrets/Missing"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing in the other vault: %v", err)
	}
}

// loadConfig exercises every field kind of the tag grammar.
type loadConfig struct {
	APIKey  string        `keyvault:"ApiKey"`
	Raw     []byte        `keyvault:"ApiKey"`
	Meta    Secret        `keyvault:"ApiKey"`
	Named   apiKeyString  `keyvault:"ApiKey"`
	Addr    netip.Addr    `keyvault:"BindAddr"`
	When    *time.Time    `keyvault:"Launch"`
	URL     *url.URL      `keyvault:"ServiceUrl"` // BinaryUnmarshaler only
	URLVal  url.URL       `keyvault:"ServiceUrl"`
	DB      dbConfig      `keyvault:"DbConfig,json"`
	Hosts   []string      `keyvault:"Hosts,json"`
	Missing string        `keyvault:"NotThere,optional"`
	Nested  nestedConfig  // walked
	Ptr     *nestedConfig // walked and made
	Skip    string        `keyvault:"-"`
	plain   string
	Other   int
}

type apiKeyString string

type dbConfig struct {
	Host string `json:"host"`
	Port int    `json:"port"`
}

type nestedConfig struct {
	Token string `keyvault:"Token"`
}

func seedLoad(v *fakeVault) {
	v.set("ApiKey", "k-123")
	v.set("BindAddr", "127.0.0.1")
	v.set("Launch", "2030-01-02T03:04:05Z")
	v.set("DbConfig", `{"host":"db.internal","port":5432}`)
	v.set("Hosts", `["a","b"]`)
	v.set("Token", "t-456")
	v.set("ServiceUrl", "https://partner.example/api?x=1")
}

func TestLoadFillsEveryKindOfField(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		seedLoad(v)
		p := v.newProvider(t, nil)
		cfg := loadConfig{Missing: "default", Skip: "kept", plain: "p", Other: 7}
		if err := p.Load(context.Background(), &cfg); err != nil {
			t.Fatal(err)
		}
		want := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
		if cfg.APIKey != "k-123" || string(cfg.Raw) != "k-123" || cfg.Meta.Value() != "k-123" || cfg.Meta.Name != "ApiKey" ||
			cfg.Named != "k-123" || cfg.Addr != netip.MustParseAddr("127.0.0.1") || cfg.When == nil || !cfg.When.Equal(want) ||
			cfg.DB != (dbConfig{"db.internal", 5432}) || !reflect.DeepEqual(cfg.Hosts, []string{"a", "b"}) ||
			cfg.Missing != "default" || cfg.Nested.Token != "t-456" || cfg.Ptr == nil || cfg.Ptr.Token != "t-456" ||
			cfg.Skip != "kept" || cfg.plain != "p" || cfg.Other != 7 ||
			cfg.URL == nil || cfg.URL.String() != "https://partner.example/api?x=1" || cfg.URLVal.Host != "partner.example" {
			t.Fatalf("cfg = %+v", cfg)
		}
		if n := v.requests.Load(); n != 8 {
			t.Fatalf("vault reads = %d, want 8 (one per distinct secret)", n)
		}
		mustGet(t, p, "ApiKey", "k-123") // the values are cached
		if v.requests.Load() != 8 {
			t.Fatal("Load did not cache")
		}
	})
}

func TestLoadMisuseIsReportedBeforeAnyRequest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		seedLoad(v)
		p := v.newProvider(t, nil)
		var s struct {
			A string `keyvault:"ApiKey"`
		}
		cases := map[string]any{
			"nil":            nil,
			"not a pointer":  s,
			"nil pointer":    (*loadConfig)(nil),
			"pointer to int": new(int),
			"unsupported type": &struct {
				N int `keyvault:"ApiKey"`
			}{},
			"unexported": &struct {
				a string `keyvault:"ApiKey"`
			}{},
			"invalid name": &struct {
				A string `keyvault:"bad_name"`
			}{},
			"empty tag": &struct {
				A string `keyvault:""`
			}{},
			"unknown option": &struct {
				A string `keyvault:"ApiKey,omitempty"`
			}{},
			"host not allowed": &struct {
				A string `keyvault:"https://evil.example/secrets/ApiKey"`
			}{},
			"one bad among good": &struct {
				A string `keyvault:"ApiKey"`
				B int    `keyvault:"Token"`
			}{},
		}
		for name, dst := range cases {
			err := p.Load(context.Background(), dst)
			if !errors.Is(err, ErrLoadMisuse) && !(name == "host not allowed" && errors.Is(err, ErrHostNotAllowed)) {
				t.Errorf("%s: %v", name, err)
			}
		}
		if n := v.requests.Load(); n != 0 {
			t.Fatalf("misuse reached the network: %d requests", n)
		}
	})
}

func TestLoadFailureNamesEveryFieldAndChangesNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("ApiKey", "k-123")
		v.set("BadJSON", `{"host": "secret-db-host", "port": "not-a-number"}`)
		v.set("Broken", `{not json: secret-db-host`)
		v.set("BadAddr", "secret-not-an-address")
		v.set("BadURL", "secret-%zz")
		p := v.newProvider(t, nil)
		type cfg struct {
			A   string     `keyvault:"ApiKey"`
			B   string     `keyvault:"MissingOne"`
			C   string     `keyvault:"MissingTwo"`
			D   dbConfig   `keyvault:"BadJSON,json"`
			E   dbConfig   `keyvault:"Broken,json"`
			F   netip.Addr `keyvault:"BadAddr"`
			G   *url.URL   `keyvault:"BadURL"`
			Opt string     `keyvault:"MissingThree,optional"`
		}
		c := cfg{A: "before"}
		err := p.Load(context.Background(), &c)
		if err == nil {
			t.Fatal("Load succeeded")
		}
		msg := err.Error()
		for _, want := range []string{`cfg.B (secret "MissingOne" in vault fake.vault.azure.net)`, `cfg.C (secret "MissingTwo" in vault fake.vault.azure.net)`, `cfg.D (secret "BadJSON")`,
			`cfg.E (secret "Broken")`, `cfg.F (secret "BadAddr")`, `cfg.G (secret "BadURL"): (*url.URL).UnmarshalBinary failed`, "not valid JSON (at byte 2)", "JSON string at port cannot be decoded into int"} {
			if !strings.Contains(msg, want) {
				t.Errorf("error lacks %q:\n%s", want, msg)
			}
		}
		if strings.Contains(msg, "secret-") || strings.Contains(msg, "MissingThree") {
			t.Fatalf("error reveals a value or names an optional field:\n%s", msg)
		}
		if !errors.Is(err, ErrNotFound) || c.A != "before" {
			t.Fatalf("errors.Is(ErrNotFound) = %v; dst changed: %+v", errors.Is(err, ErrNotFound), c)
		}
	})
}

func TestResolveEnv(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("DbPassword", "pw")
		v.set("ApiKey", "k")
		p := v.newProvider(t, nil)
		env := []string{
			"PATH=/usr/bin",
			"DB_PASSWORD=@Microsoft.KeyVault(SecretUri=" + fakeVaultURL + "secrets/DbPassword/)",
			"API_KEY=@Microsoft.KeyVault(VaultName=fake;SecretName=ApiKey)",
			"NOT_A_REF=https://fake.vault.azure.net/secrets/ApiKey",
			"NOEQUALS",
		}
		out, err := p.ResolveEnv(context.Background(), env)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"PATH=/usr/bin", "DB_PASSWORD=pw", "API_KEY=k", "NOT_A_REF=https://fake.vault.azure.net/secrets/ApiKey", "NOEQUALS"}
		if !reflect.DeepEqual(out, want) || !strings.HasPrefix(env[1], "DB_PASSWORD=@") {
			t.Fatalf("ResolveEnv = %q (input %q)", out, env)
		}
		_, err = p.ResolveEnv(context.Background(), []string{
			"A=@Microsoft.KeyVault(VaultName=fake;SecretName=Nope)",
			"B=@Microsoft.KeyVault(SecretName=x)",
		})
		if err == nil || !strings.Contains(err.Error(), "variable B") {
			t.Fatalf("malformed: %v", err)
		}
		before := v.requests.Load()
		_, err = p.ResolveEnv(context.Background(), []string{
			"A=@Microsoft.KeyVault(VaultName=fake;SecretName=Nope)",
			"C=@Microsoft.KeyVault(VaultName=fake;SecretName=AlsoNope)",
			"D=@Microsoft.KeyVault(VaultName=fake;SecretName=ApiKey)",
		})
		if err == nil || !strings.Contains(err.Error(), "variable A (vault fake.vault.azure.net):") || !strings.Contains(err.Error(), "variable C (vault fake.vault.azure.net):") || strings.Contains(err.Error(), "variable D") {
			t.Fatalf("failures: %v", err)
		}
		if v.requests.Load() != before+2 {
			t.Fatalf("reads = %d", v.requests.Load()-before)
		}
	})
}

// BenchmarkLoad50At100ms loads 50 secrets at 100 ms per vault read, against
// reading them one after the other, in the same run.
func BenchmarkLoad50At100ms(b *testing.B) {
	fields := make([]reflect.StructField, 50)
	for i := range fields {
		fields[i] = reflect.StructField{Name: fmt.Sprintf("K%d", i), Type: reflect.TypeFor[string](), Tag: reflect.StructTag(`keyvault:"key-` + strconv.Itoa(i) + `"`)}
	}
	st := reflect.StructOf(fields)
	setup := func() *fakeVault {
		v := newFakeVault()
		for i := range 50 {
			v.set("key-"+strconv.Itoa(i), "v")
		}
		v.latency = 100 * time.Millisecond
		return v
	}
	b.Run("sequential-get", func(b *testing.B) {
		for b.Loop() {
			p := setup().newProvider(b, nil)
			for i := range 50 {
				if _, err := p.Get(context.Background(), "key-"+strconv.Itoa(i)); err != nil {
					b.Fatal(err)
				}
			}
			p.Close()
		}
	})
	b.Run("load", func(b *testing.B) {
		for b.Loop() {
			p := setup().newProvider(b, nil)
			if err := p.Load(context.Background(), reflect.New(st).Interface()); err != nil {
				b.Fatal(err)
			}
			p.Close()
		}
	})
}

// TestLoadJSONErrorsQuoteNoInput decodes hostile JSON secrets into typed
// fields: every error names the field, the secret, the JSON kind, the target
// type and a path made of the type's own names, and holds no part of the
// input (numbers, strings, map keys) nor the decoder's message.
func TestLoadJSONErrorsQuoteNoInput(t *testing.T) {
	type inner struct {
		Limit int8 `json:"limit"`
	}
	type embedded struct {
		Region string `json:"region"`
	}
	type target struct {
		embedded
		Port    int32            `json:"port"`
		Hosts   []string         `json:"hosts"`
		Keys    map[string]int   `json:"keys"`
		Nested  map[string]inner `json:"nested"`
		Retries uint             `json:"retries"`
	}
	cases := []struct {
		json      string
		want      string   // in the error
		forbidden []string // never in the error
	}{
		{`31415926535897932384626`, "JSON number at the value cannot be decoded into kvsecrets.target", []string{"31415926535897932384626"}},
		{`{"port": 99999999999}`, "JSON number at port cannot be decoded into int32", []string{"99999999999"}},
		{`{"keys": {"sk_live_SECRETKEY": "sk_live_OTHER"}}`, "JSON string at keys cannot be decoded into int", []string{"sk_live"}},
		{`{"nested": {"sk_live_SECRETKEY": {"limit": 4096}}}`, "JSON number at nested.[key] cannot be decoded into int8", []string{"sk_live", "4096"}},
		{`{"hosts": [1234567]}`, "JSON number at hosts cannot be decoded into string", []string{"1234567"}},
		{`{"retries": -271828}`, "JSON number at retries cannot be decoded into uint", []string{"271828"}},
		{`{"region": true}`, "JSON bool at embedded.region cannot be decoded into string", nil},
		{`{"unknownField_sk_live_X": 1, "port": "sk_live_Y"}`, "JSON string at port cannot be decoded into int32", []string{"sk_live"}},
		{`{"port": 1, "sk_live_trailing": `, "not valid JSON", []string{"sk_live"}},
		{`{"sk_live_SECRET" 1}`, "not valid JSON", []string{"sk_live"}},
		{`"\u00e9sk_live_\x"`, "not valid JSON", []string{"sk_live"}},
	}
	for _, c := range cases {
		synctest.Test(t, func(t *testing.T) {
			v := newFakeVault()
			v.set("Config", c.json)
			p := v.newProvider(t, nil)
			var dst struct {
				Config target `keyvault:"Config,json"`
			}
			err := p.Load(context.Background(), &dst)
			if err == nil {
				t.Fatalf("%s: Load succeeded", c.json)
			}
			msg := err.Error()
			if !strings.Contains(msg, `Config (secret "Config")`) || !strings.Contains(msg, c.want) {
				t.Errorf("%s: error %q lacks %q", c.json, msg, c.want)
			}
			for _, f := range append(c.forbidden, "json:", "invalid character", "Go value", "Go struct field") {
				if strings.Contains(msg, f) {
					t.Errorf("%s: error quotes %q: %s", c.json, f, msg)
				}
			}
		})
	}
	// Unknown fields are ignored, as encoding/json does: no error to leak.
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("Config", `{"sk_live_unknown": "x", "port": 5432}`)
		p := v.newProvider(t, nil)
		var dst struct {
			Config target `keyvault:"Config,json"`
		}
		if err := p.Load(context.Background(), &dst); err != nil || dst.Config.Port != 5432 {
			t.Fatalf("Load = %v, port %d", err, dst.Config.Port)
		}
	})
}

// TestVaultNameTakesTheProvidersSuffix: a VaultName reference gets the DNS
// suffix of the Provider's own vault, whatever its port.
func TestVaultNameTakesTheProvidersSuffix(t *testing.T) {
	for own, want := range map[string]string{
		"kv.vault.azure.cn": "other.vault.azure.cn", "kv.vault.azure.cn:9443": "other.vault.azure.cn",
		"kv.vault.usgovcloudapi.net": "other.vault.usgovcloudapi.net", "127.0.0.1:8443": "other.vault.azure.net",
	} {
		p := &Provider{host: own}
		r, err := p.parseRef("@Microsoft.KeyVault(VaultName=other;SecretName=K)")
		if err != nil || r.host != want {
			t.Errorf("Provider at %s: VaultName=other names %q (%v), want %q", own, r.host, err, want)
		}
	}
}

// echoingDecoder is a hostile custom decoder: its error's type is made at
// run time from its input.
type echoingDecoder struct{}

func (*echoingDecoder) UnmarshalJSON(b []byte) error {
	return &json.UnmarshalTypeError{Value: "string " + string(b), Type: reflect.StructOf([]reflect.StructField{
		{Name: strings.Trim(string(b), `"`), Type: reflect.TypeFor[int]()}}), Field: string(b)}
}

// TestLoadJSONErrorsTrustNoDecoder: a custom decoder's error names a type
// and a path built from its input; Load's error names only dst's types.
func TestLoadJSONErrorsTrustNoDecoder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("Config", `{"Inner":"SUPERSECRETzz"}`)
		p := v.newProvider(t, nil)
		var dst struct {
			Config struct{ Inner echoingDecoder } `keyvault:"Config,json"`
		}
		err := p.Load(context.Background(), &dst)
		if err == nil || strings.Contains(err.Error(), "SUPERSECRET") || strings.Contains(fmt.Sprintf("%+v", err), "SUPERSECRET") {
			t.Fatalf("Load: %v", err)
		}
	})
}

// TestLoadErrorsHoldNoValueAnywhereInTheChain: a decoder's error may quote
// the value (json.UnmarshalTypeError.Value, netip's ParseAddr("…")); Load's
// error must not hold it in its message, nor anywhere errors.Unwrap or
// errors.As can reach.
func TestLoadErrorsHoldNoValueAnywhereInTheChain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		v := newFakeVault()
		v.set("DbConfig", `{"Pin": 98765432101234}`)
		v.set("BindAddr", "not-an-ip-TOPSECRET")
		p := v.newProvider(t, nil)
		var cfg struct {
			DB   struct{ Pin int8 } `keyvault:"DbConfig,json"`
			Bind netip.Addr         `keyvault:"BindAddr"`
		}
		err := p.Load(t.Context(), &cfg)
		if err == nil {
			t.Fatal("Load succeeded")
		}
		var walk func(e error, depth int)
		walk = func(e error, depth int) {
			if e == nil || depth > 20 {
				return
			}
			for _, s := range []string{e.Error(), fmt.Sprintf("%#v", e), fmt.Sprintf("%+v", e)} {
				for _, secret := range []string{"98765432101234", "TOPSECRET"} {
					if strings.Contains(s, secret) {
						t.Errorf("an error in the chain (%T, depth %d) holds the value: %s", e, depth, s)
					}
				}
			}
			if j, ok := e.(interface{ Unwrap() []error }); ok {
				for _, c := range j.Unwrap() {
					walk(c, depth+1)
				}
			}
			walk(errors.Unwrap(e), depth+1)
		}
		walk(err, 0)
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) {
			t.Errorf("errors.As finds the decoder's %T, whose Value is %q", ute, ute.Value)
		}
	})
}
