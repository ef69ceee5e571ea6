// Package console serves the web console (SPEC §8) from files embedded in
// the binary: a single-page app, built from console/src by esbuild into
// console/dist (committed, so that building the server needs no Node).
// The app calls the HTTP API with the key the user pastes; it holds no
// privilege of its own.
package console

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed dist
var dist embed.FS

// Prefix is the path the console is served under.
const Prefix = "/console/"

// csp allows the page nothing from another origin: its script, style and
// icon come from this server, and it talks to this server's API only.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

type file struct {
	body  []byte
	ctype string
	etag  string
}

// Handler serves the console's files.
type Handler struct {
	files map[string]file // by name under Prefix; "" is the page
}

// New reads the embedded files.
func New() *Handler {
	files := map[string]file{}
	err := fs.WalkDir(dist, "dist", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := dist.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		ctype := mime.TypeByExtension(path.Ext(p))
		if ctype == "" {
			ctype = http.DetectContentType(b)
		}
		name := strings.TrimPrefix(p, "dist/")
		if name == "index.html" {
			name = ""
		}
		files[name] = file{body: b, ctype: ctype, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		return nil
	})
	if err != nil {
		panic("console: reading the embedded files: " + err.Error()) // cannot happen: embed.FS
	}
	return &Handler{files: files}
}

// Has reports whether urlPath is served: "/console" (a redirect to
// "/console/"), "/console/" (the page) or "/console/<file>" of a file the
// console has. A server answers other paths its own way (404).
func (h *Handler) Has(urlPath string) bool {
	if urlPath == strings.TrimSuffix(Prefix, "/") {
		return true
	}
	name, ok := strings.CutPrefix(urlPath, Prefix)
	if !ok || name == "index.html" {
		return false
	}
	_, ok = h.files[name]
	return ok
}

// ServeHTTP serves GET and HEAD of the paths Has reports; others are 404
// (http.NotFound) or 405.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.Has(r.URL.Path) {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if r.URL.Path == strings.TrimSuffix(Prefix, "/") {
		http.Redirect(w, r, Prefix, http.StatusMovedPermanently)
		return
	}
	f := h.files[strings.TrimPrefix(r.URL.Path, Prefix)]
	hd := w.Header()
	hd.Set("Content-Type", f.ctype)
	hd.Set("Content-Security-Policy", csp)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Cache-Control", "no-cache") // revalidated by ETag: a new binary may serve new files
	hd.Set("ETag", f.etag)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(f.body))
}
