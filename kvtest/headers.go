package kvtest

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/http"
	"time"
)

// The headers every Key Vault answer carries. The real recordings —
// testdata/realdata/recordings (JavaScript SDK, February 2025) and
// azsecrets v0.12.0's testdata/recordings (Go SDK, March 2023) — show on
// every response, the 401 challenge included: Cache-Control: no-cache,
// Pragma: no-cache, Expires: -1, Strict-Transport-Security,
// X-Content-Type-Options: nosniff, x-ms-request-id,
// x-ms-keyvault-service-version, x-ms-keyvault-region and
// x-ms-keyvault-network-info; and, on every answer to an authenticated
// request, x-ms-keyvault-rbac-assignment-id. Where the client sent
// x-ms-client-request-id (the JavaScript SDK does, with no
// x-ms-return-client-request-id), the answer echoes it; the Go SDK's 2023
// recordings sent none and got none back.
const (
	// serviceVersion and region are the newest recording's (2025).
	serviceVersion = "1.9.2103.1"
	region         = "westus"
	hsts           = "max-age=31536000;includeSubDomains"
)

// setResponseHeaders sets the headers every answer carries and returns the
// request id it chose.
func setResponseHeaders(h http.Header, r *http.Request) string {
	id := newUUID()
	h.Set("Cache-Control", "no-cache")
	h.Set("Pragma", "no-cache")
	h.Set("Expires", "-1")
	h.Set("Strict-Transport-Security", hsts)
	h.Set("X-Content-Type-Options", "nosniff")
	// net/http adds Date itself; an in-process answer has none otherwise.
	h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	if cid := r.Header.Get("x-ms-client-request-id"); cid != "" {
		h.Set("x-ms-client-request-id", cid)
	}
	h.Set("x-ms-keyvault-network-info", networkInfo(r.RemoteAddr))
	h.Set("x-ms-keyvault-region", region)
	h.Set("x-ms-keyvault-service-version", serviceVersion)
	h.Set("x-ms-request-id", id)
	return id
}

// networkInfo describes the client's address as Key Vault does:
// "conn_type=Ipv4;addr=4.155.25.73;act_addr_fam=InterNetwork;". An
// in-process request has no address: it is reported as 127.0.0.1. (The
// recordings show only IPv4; the IPv6 names are .NET's AddressFamily ones.)
func networkInfo(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	ip := net.ParseIP(host)
	if err != nil || ip == nil {
		ip = net.IPv4(127, 0, 0, 1)
	}
	if ip4 := ip.To4(); ip4 != nil {
		return "conn_type=Ipv4;addr=" + ip4.String() + ";act_addr_fam=InterNetwork;"
	}
	return "conn_type=Ipv6;addr=" + ip.String() + ";act_addr_fam=InterNetworkV6;"
}

// newUUID returns a random (version 4) UUID, the form of Key Vault's
// x-ms-request-id and of Event Grid's event and validation ids.
func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// newAssignmentID returns a value for x-ms-keyvault-rbac-assignment-id:
// 32 hex digits, as the 2025 recording shows (the 2023 one shows a UUID).
func newAssignmentID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
