package console

import (
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func get(t *testing.T, h http.Handler, method, path string, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestHandler_ServesTheApp(t *testing.T) {
	h := New()
	page := get(t, h, http.MethodGet, "/console/")
	require.Equal(t, http.StatusOK, page.Code)
	require.Equal(t, "text/html; charset=utf-8", page.Header().Get("Content-Type"))
	require.Contains(t, page.Body.String(), `<div id="app">`)

	// Every file the page names is served, with its type.
	types := map[string]string{".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
	refs := regexp.MustCompile(`(?:src|href)="([^"]+)"`).FindAllStringSubmatch(page.Body.String(), -1)
	require.GreaterOrEqual(t, len(refs), 3, "script, style and icon")
	for _, m := range refs {
		r := get(t, h, http.MethodGet, "/console/"+m[1])
		require.Equal(t, http.StatusOK, r.Code, m[1])
		require.Equal(t, types[m[1][strings.LastIndex(m[1], "."):]], r.Header().Get("Content-Type"), m[1])
		require.NotEmpty(t, r.Body.Bytes(), m[1])
	}

	// Every answer forbids other origins, framing and sniffing.
	for _, p := range []string{"/console/", "/console/app.js"} {
		hd := get(t, h, http.MethodGet, p).Header()
		csp := hd.Get("Content-Security-Policy")
		require.Contains(t, csp, "default-src 'none'", p)
		require.Contains(t, csp, "script-src 'self'", p)
		require.Contains(t, csp, "connect-src 'self'", p)
		require.Contains(t, csp, "frame-ancestors 'none'", p)
		require.NotContains(t, csp, "unsafe", p)
		require.Equal(t, "nosniff", hd.Get("X-Content-Type-Options"), p)
		require.Equal(t, "DENY", hd.Get("X-Frame-Options"), p)
		require.Equal(t, "no-referrer", hd.Get("Referrer-Policy"), p)
		require.Equal(t, "no-cache", hd.Get("Cache-Control"), p)
	}
}

func TestHandler_Revalidation(t *testing.T) {
	h := New()
	first := get(t, h, http.MethodGet, "/console/app.js")
	etag := first.Header().Get("ETag")
	require.Regexp(t, `^"[0-9a-f]{16}"$`, etag)
	again := get(t, h, http.MethodGet, "/console/app.js", "If-None-Match", etag)
	require.Equal(t, http.StatusNotModified, again.Code)
	require.Empty(t, again.Body.Bytes())
	other := get(t, h, http.MethodGet, "/console/app.js", "If-None-Match", `"0000000000000000"`)
	require.Equal(t, http.StatusOK, other.Code)
	require.NotEqual(t, etag, get(t, h, http.MethodGet, "/console/app.css").Header().Get("ETag"), "one tag per file")
}

func TestHandler_Paths(t *testing.T) {
	h := New()
	r := get(t, h, http.MethodGet, "/console")
	require.Equal(t, http.StatusMovedPermanently, r.Code)
	require.Equal(t, "/console/", r.Header().Get("Location"))

	head := get(t, h, http.MethodHead, "/console/")
	require.Equal(t, http.StatusOK, head.Code)
	require.Empty(t, head.Body.Bytes())

	for _, p := range []string{"/console/nope.js", "/console/../go.mod", "/console/dist/app.js", "/console/index.html/", "/console/index.html", "/consolex", "/"} {
		require.Equal(t, http.StatusNotFound, get(t, h, http.MethodGet, p).Code, p)
	}
	for _, p := range []string{"/console", "/console/", "/console/app.js"} {
		require.True(t, h.Has(p), p)
	}
	require.False(t, h.Has("/console/nope.js"))
	post := get(t, h, http.MethodPost, "/console/")
	require.Equal(t, http.StatusMethodNotAllowed, post.Code)
	require.Equal(t, "GET, HEAD", post.Header().Get("Allow"))
}
