package kvsecrets

import (
	"context"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
)

// ErrLoadMisuse: Load was given something it cannot fill (not a pointer to
// a struct, an unsupported field type, an unexported tagged field, a bad
// tag). It is reported before any request.
var ErrLoadMisuse = errors.New("kvsecrets: Load misuse")

// Load fills the fields of the struct dst points to that carry a
// `keyvault` tag, reading every secret in parallel (at most
// Options.PreloadConcurrency at once) through the cache:
//
//	type Config struct {
//		StripeKey string          `keyvault:"StripeKey"`
//		TLSKey    []byte          `keyvault:"TlsKey"`
//		Partner   kvsecrets.Secret `keyvault:"PartnerApiKey"`
//		Bind      netip.Addr      `keyvault:"BindAddr"`             // any encoding.TextUnmarshaler
//		Endpoint  *url.URL        `keyvault:"ServiceUrl"`           // or encoding.BinaryUnmarshaler
//		DB        DBConfig        `keyvault:"DbConfig,json"`        // a JSON secret
//		Sentry    string          `keyvault:"SentryDsn,optional"`   // left as is if the secret does not exist
//		Legacy    string          `keyvault:"@Microsoft.KeyVault(VaultName=old-kv;SecretName=Key)"`
//		Cache     CacheConfig     // untagged structs and pointers to structs are walked
//	}
//
// A tag holds a secret name or any reference [Provider.Resolve] accepts,
// then options: "json" decodes the secret as JSON into the field (any
// type), "optional" leaves the field untouched when the secret does not
// exist (ErrNotFound; other failures still fail). Field types are string,
// []byte, Secret, any type that implements encoding.TextUnmarshaler
// (itself a pointer, or through its pointer), failing that
// encoding.BinaryUnmarshaler (url.URL), and with "json" anything JSON
// decodes into.
//
// Misuse — dst not a non-nil pointer to a struct, an unsupported field
// type, an unexported tagged field, a bad tag, a reference to a host not
// allowed — is reported (wrapping ErrLoadMisuse) before any request. Then
// every secret is read; if any read or decode fails, Load returns one
// error joining a line per failing field, naming the field and the secret
// (never a value), and leaves dst unchanged. Values read stay cached.
func (p *Provider) Load(ctx context.Context, dst any) error {
	if p.closed.Load() {
		return fmt.Errorf("kvsecrets: Load: %w", ErrClosed)
	}
	fields, err := p.loadPlan(dst)
	if err != nil {
		return err
	}
	_, err = p.fill(ctx, dst, fields)
	return err
}

// fill reads the secrets of fields (loadPlan's for dst) and, if every read
// and decode succeeds, sets the fields in dst. It returns the secrets read,
// by reference.
func (p *Provider) fill(ctx context.Context, dst any, fields []loadField) (map[ref]Secret, error) {
	// Read each distinct reference once, in parallel.
	var refs []ref
	index := map[ref]int{}
	for _, f := range fields {
		if _, ok := index[f.ref]; !ok {
			index[f.ref] = len(refs)
			refs = append(refs, f.ref)
		}
	}
	secs, readErrs := inParallel(ctx, p.cfg.preloadConcurrency, len(refs), func(i int) (Secret, error) {
		return p.resolve(ctx, refs[i])
	})

	// Decode everything before touching dst, so that a failure changes nothing.
	type assignment struct {
		f   *loadField
		val reflect.Value
	}
	var errs []error
	var assigns []assignment
	for i := range fields {
		f := &fields[i]
		j := index[f.ref]
		if err := readErrs[j]; err != nil {
			if f.optional && errors.Is(err, ErrNotFound) {
				continue
			}
			errs = append(errs, p.refErr(fmt.Sprintf("field %s", f.path), func(host string) string {
				return fmt.Sprintf("field %s (secret %q in vault %s)", f.path, f.ref.name, host)
			}, f.ref, err))
			continue
		}
		val, err := f.decode(secs[j])
		if err != nil {
			errs = append(errs, fmt.Errorf("field %s (secret %q): %w", f.path, f.ref.name, err))
			continue
		}
		assigns = append(assigns, assignment{f, val})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	root := reflect.ValueOf(dst).Elem()
	for _, a := range assigns {
		a.f.target(root).Set(a.val)
	}
	read := make(map[ref]Secret, len(refs))
	for i, r := range refs {
		if readErrs[i] == nil {
			read[r] = secs[i]
		}
	}
	return read, nil
}

// loadKind is how a field is filled.
type loadKind uint8

const (
	loadString loadKind = iota
	loadBytes
	loadSecret
	loadText   // encoding.TextUnmarshaler
	loadBinary // encoding.BinaryUnmarshaler (and not TextUnmarshaler)
	loadJSON
)

// loadField is one tagged field to fill.
type loadField struct {
	path     string // Config.DB.Password, for errors
	steps    []int  // field indexes from the root; pointers on the way are followed (and made)
	typ      reflect.Type
	kind     loadKind
	ref      ref
	optional bool
}

var (
	secretType          = reflect.TypeFor[Secret]()
	textUnmarshalType   = reflect.TypeFor[encoding.TextUnmarshaler]()
	binaryUnmarshalType = reflect.TypeFor[encoding.BinaryUnmarshaler]()
)

// decodes reports whether a field of type t can be decoded by iface's
// method: t is a pointer type with the method, or *t has it.
func decodes(t, iface reflect.Type) bool {
	return reflect.PointerTo(t).Implements(iface) || (t.Kind() == reflect.Pointer && t.Implements(iface))
}

// loadPlan walks dst's type and returns the fields to fill, or every misuse.
func (p *Provider) loadPlan(dst any) ([]loadField, error) {
	v := reflect.ValueOf(dst)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return nil, fmt.Errorf("%w: dst must be a non-nil pointer to a struct, got %T", ErrLoadMisuse, dst)
	}
	var fields []loadField
	var errs []error
	var walk func(t reflect.Type, path string, steps []int, seen map[reflect.Type]bool)
	walk = func(t reflect.Type, path string, steps []int, seen map[reflect.Type]bool) {
		if seen[t] {
			return // a recursive type: do not walk it again
		}
		seen[t] = true
		defer delete(seen, t)
		for i := range t.NumField() {
			sf := t.Field(i)
			fpath := path + "." + sf.Name
			fsteps := append(append([]int(nil), steps...), i)
			tag, tagged := sf.Tag.Lookup("keyvault")
			if !tagged || tag == "-" {
				ft := sf.Type
				if ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}
				if ft.Kind() == reflect.Struct && ft != secretType && !decodes(ft, textUnmarshalType) && !decodes(ft, binaryUnmarshalType) && (sf.IsExported() || sf.Anonymous) && tag != "-" {
					walk(ft, fpath, fsteps, seen)
				}
				continue
			}
			if !sf.IsExported() {
				errs = append(errs, fmt.Errorf("%w: field %s is tagged but unexported", ErrLoadMisuse, fpath))
				continue
			}
			f := loadField{path: fpath, steps: fsteps, typ: sf.Type}
			if err := p.parseTag(tag, &f); err != nil {
				errs = append(errs, fmt.Errorf("%w: field %s: %w", ErrLoadMisuse, fpath, err))
				continue
			}
			fields = append(fields, f)
		}
	}
	t := v.Elem().Type()
	root := t.Name()
	if root == "" {
		root = "dst" // an anonymous struct
	}
	walk(t, root, nil, map[reflect.Type]bool{})
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return fields, nil
}

// parseTag reads `keyvault:"REF[,json][,optional]"` into f and checks the
// field's type.
func (p *Provider) parseTag(tag string, f *loadField) error {
	refText, opts, _ := strings.Cut(tag, ",")
	isJSON := false
	for o := range strings.SplitSeq(opts, ",") {
		switch strings.TrimSpace(o) {
		case "":
			if opts != "" {
				return errors.New("empty option in the tag")
			}
		case "json":
			isJSON = true
		case "optional":
			f.optional = true
		default:
			return errors.New(`unknown tag option; the options are "json" and "optional"`)
		}
	}
	if strings.TrimSpace(refText) == "" {
		return errors.New("the tag names no secret")
	}
	r, err := p.parseRef(refText)
	if err != nil {
		return err
	}
	f.ref = r
	t := f.typ
	switch {
	case isJSON:
		f.kind = loadJSON
	case t == secretType:
		f.kind = loadSecret
	case decodes(t, textUnmarshalType):
		f.kind = loadText
	case decodes(t, binaryUnmarshalType):
		f.kind = loadBinary
	case t.Kind() == reflect.String:
		f.kind = loadString
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Uint8:
		f.kind = loadBytes
	default:
		return fmt.Errorf("type %v is not supported: use string, []byte, kvsecrets.Secret, an encoding.TextUnmarshaler or encoding.BinaryUnmarshaler, or the json option", t)
	}
	return nil
}

// decode turns a secret into a value of the field's type. Errors never
// quote the value: decoders' own messages may, so they are withheld.
func (f *loadField) decode(s Secret) (reflect.Value, error) {
	t := f.typ
	switch f.kind {
	case loadSecret:
		return reflect.ValueOf(s.clone()), nil
	case loadString:
		return reflect.ValueOf(s.Value()).Convert(t), nil
	case loadBytes:
		return reflect.ValueOf([]byte(s.Value())).Convert(t), nil
	case loadText, loadBinary:
		iface, method := textUnmarshalType, "UnmarshalText"
		if f.kind == loadBinary {
			iface, method = binaryUnmarshalType, "UnmarshalBinary"
		}
		ptr := t // the pointer type whose method decodes
		if t.Kind() != reflect.Pointer || !t.Implements(iface) {
			ptr = reflect.PointerTo(t)
		}
		v := reflect.New(ptr.Elem())
		var err error
		if f.kind == loadText {
			err = v.Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s.Value()))
		} else {
			err = v.Interface().(encoding.BinaryUnmarshaler).UnmarshalBinary([]byte(s.Value()))
		}
		if err != nil {
			return reflect.Value{}, newWithheld(fmt.Sprintf("(%v).%s failed", ptr, method), err)
		}
		if ptr == t {
			return v, nil
		}
		return v.Elem(), nil
	case loadJSON:
		v := reflect.New(t)
		if err := json.Unmarshal([]byte(s.Value()), v.Interface()); err != nil {
			return reflect.Value{}, jsonError(t, err)
		}
		return v.Elem(), nil
	}
	return reflect.Value{}, errors.New("kvsecrets: internal error: unknown field kind")
}

// jsonError describes a JSON decoding failure by position, JSON kind, target
// type and path only: never a part of the input (numbers, strings, map keys)
// nor of the decoder's message.
func jsonError(t reflect.Type, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return newWithheld(fmt.Sprintf("the secret is not valid JSON (at byte %d)", syn.Offset), err)
	case errors.As(err, &typ):
		// The path and the target type come from dst's own type: the
		// error's Type can be made by a custom decoder from its input.
		where, into := "the value", t
		if typ.Field != "" {
			where, into = jsonPath(t, typ.Field)
		}
		kind, _, _ := strings.Cut(typ.Value, " ") // "number 123" -> "number"
		switch kind {
		case "array", "bool", "null", "number", "object", "string":
		default:
			kind = "value"
		}
		if into == nil {
			return newWithheld(fmt.Sprintf("JSON %s at %s cannot be decoded", kind, where), err)
		}
		// The decoder's type is more precise (the element of a map, a
		// field of a struct): use it when it is part of the field's own
		// type.
		if typ.Type != nil && contains(into, typ.Type, 4) {
			into = typ.Type
		}
		return newWithheld(fmt.Sprintf("JSON %s at %s cannot be decoded into %v", kind, where, into), err)
	}
	return newWithheld(fmt.Sprintf("the secret cannot be decoded as JSON into %v", t), err)
}

// jsonPath rewrites the dotted path of a JSON decoding error
// ("DB.Keys.sk_live_1") with names from t alone: struct fields by their
// JSON names, map keys as "[key]", and anything else as "?", since the
// decoder's path holds map keys, which are input. It also returns the type
// the path leads to in t, nil where it leaves t's known shape.
func jsonPath(t reflect.Type, path string) (string, reflect.Type) {
	var out []string
	for part := range strings.SplitSeq(path, ".") {
		for t != nil && (t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			t = t.Elem()
		}
		switch {
		case t != nil && t.Kind() == reflect.Map:
			out = append(out, "[key]")
			t = t.Elem()
		case t != nil && t.Kind() == reflect.Struct:
			name, ft, ok := jsonField(t, part)
			if !ok {
				return strings.Join(append(out, "?"), "."), nil
			}
			out = append(out, name)
			t = ft
		default:
			return strings.Join(append(out, "?"), "."), nil
		}
	}
	return strings.Join(out, "."), t
}

// contains reports whether target is root or a type within it (elements,
// struct fields), looking depth levels down.
func contains(root, target reflect.Type, depth int) bool {
	if root == target {
		return true
	}
	if depth == 0 {
		return false
	}
	switch root.Kind() {
	case reflect.Pointer, reflect.Slice, reflect.Array, reflect.Map:
		return contains(root.Elem(), target, depth-1)
	case reflect.Struct:
		for i := range root.NumField() {
			if contains(root.Field(i).Type, target, depth-1) {
				return true
			}
		}
	}
	return false
}

// jsonField finds the field of struct t that encoding/json decodes the key
// name into (its tag's name, or its Go name, case-insensitively; embedded
// structs included) and returns that JSON name and the field's type.
func jsonField(t reflect.Type, name string) (string, reflect.Type, bool) {
	for i := range t.NumField() {
		sf := t.Field(i)
		tag := sf.Tag.Get("json")
		if tag == "-" {
			continue
		}
		jname, _, _ := strings.Cut(tag, ",")
		if jname == "" && sf.Anonymous {
			et := sf.Type
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() == reflect.Struct {
				if strings.EqualFold(sf.Name, name) {
					return sf.Name, et, true // the decoder names the embedded struct too
				}
				if n, ft, ok := jsonField(et, name); ok {
					return n, ft, true
				}
			}
			continue
		}
		if !sf.IsExported() {
			continue
		}
		if jname == "" {
			jname = sf.Name
		}
		if strings.EqualFold(jname, name) {
			return jname, sf.Type, true
		}
	}
	return "", nil, false
}

// withheldError describes a failure without the cause's message, which may
// quote the secret's value. It keeps nothing of the cause: the cause's fields and message
// (json.UnmarshalTypeError.Value, netip's ParseAddr("…")) may hold the
// value, and errors.As, Unwrap and error reporters that walk the chain
// would reach them. what names the field, the position and the type.
type withheldError struct {
	what string
}

func newWithheld(what string, _ error) *withheldError { return &withheldError{what: what} }

func (e *withheldError) Error() string {
	return e.what + " (the decoder's message is withheld: it may quote the value)"
}

// target returns the field's value in root, making nil pointers on the way.
func (f *loadField) target(root reflect.Value) reflect.Value {
	v := root
	for _, i := range f.steps {
		for v.Kind() == reflect.Pointer {
			if v.IsNil() {
				v.Set(reflect.New(v.Type().Elem()))
			}
			v = v.Elem()
		}
		v = v.Field(i)
	}
	return v
}

// ResolveEnv returns env (KEY=VALUE strings, as os.Environ gives) with every
// value written as an @Microsoft.KeyVault(...) reference replaced by the
// secret it names, resolved in parallel (at most Options.PreloadConcurrency
// at once) as [Provider.Resolve] does. Other values, and entries without
// '=', are returned unchanged. Malformed references and hosts not allowed
// are reported before any request; on any failure ResolveEnv returns nil and
// one error joining a line per failing variable, naming it, never a value.
func (p *Provider) ResolveEnv(ctx context.Context, env []string) ([]string, error) {
	if p.closed.Load() {
		return nil, fmt.Errorf("kvsecrets: ResolveEnv: %w", ErrClosed)
	}
	var vars []int // indexes in env of the references
	var refs []ref
	var errs []error
	for i, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !isReference(v) {
			continue
		}
		r, err := p.parseRef(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("variable %s: %w", k, err))
			continue
		}
		vars, refs = append(vars, i), append(refs, r)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	secs, readErrs := inParallel(ctx, p.cfg.preloadConcurrency, len(refs), func(i int) (Secret, error) {
		return p.resolve(ctx, refs[i])
	})
	out := append([]string(nil), env...)
	for j, i := range vars {
		k, _, _ := strings.Cut(env[i], "=")
		if readErrs[j] != nil {
			errs = append(errs, p.refErr("variable "+k, func(host string) string { return "variable " + k + " (vault " + host + ")" },
				refs[j], readErrs[j]))
			continue
		}
		out[i] = k + "=" + secs[j].Value()
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}
