package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"strings"
	"sync"

	"github.com/labstack/echo/v4"
)

// apiError is an error with its wire code, rendered by errorHandler.
type apiError struct {
	Code    string
	Message string
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

func errorf(code, format string, args ...any) *apiError {
	return &apiError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// decodeBody decodes the request body into v strictly: unknown fields,
// wrong types, trailing data and malformed JSON are invalid_json; a body over
// maxBytes is payload_too_large; a body that is not JSON is
// unsupported_media_type. An empty body (only white space) is allowed when
// allowEmpty, and leaves v untouched; otherwise it is invalid_json.
func decodeBody(c echo.Context, maxBytes int64, v any, allowEmpty bool) error {
	buf := getBuffer()
	defer putBuffer(buf)
	if err := readBody(c, maxBytes, buf); err != nil {
		return err
	}
	data := buf.Bytes()
	if len(bytes.TrimSpace(data)) == 0 {
		if allowEmpty {
			return nil
		}
		return errorf(CodeInvalidJSON, "request body is empty, want a JSON object")
	}
	if ct := c.Request().Header.Get(echo.HeaderContentType); ct != "" && ct != echo.MIMEApplicationJSON {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != echo.MIMEApplicationJSON && !strings.HasSuffix(mt, "+json")) {
			return errorf(CodeUnsupportedMedia, "Content-Type %q is not supported, send application/json", shorten(ct, 64))
		}
	}
	// decodeJSON keeps no reference to data: encoding/json copies strings
	// and raw messages out of it.
	return decodeJSON(data, v)
}

// readBody reads the whole request body into buf: payload_too_large over
// maxBytes.
func readBody(c echo.Context, maxBytes int64, buf *bytes.Buffer) error {
	r := c.Request()
	var body io.Reader = r.Body
	if r.ContentLength < 0 || r.ContentLength > maxBytes {
		// Length unknown or too large: MaxBytesReader stops reading past the
		// limit (and has the server close the connection). A body of a known
		// length within the limit cannot reach it.
		body = http.MaxBytesReader(c.Response(), r.Body, maxBytes)
	} else {
		buf.Grow(int(r.ContentLength) + 1) // +1: room for the EOF read
	}
	if _, err := buf.ReadFrom(body); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errorf(CodePayloadTooLarge, "request body is larger than %d bytes", maxBytes)
		}
		return errorf(CodeInvalidJSON, "reading the request body: %v", err)
	}
	if int64(buf.Len()) > maxBytes { // a body longer than its Content-Length
		return errorf(CodePayloadTooLarge, "request body is larger than %d bytes", maxBytes)
	}
	return nil
}

// bufferPool holds the buffers request bodies are read into and replies
// written from.
var bufferPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledBuffer bounds the buffers kept in bufferPool, so a rare large
// body does not stay in memory.
const maxPooledBuffer = 64 << 10

func getBuffer() *bytes.Buffer { return bufferPool.Get().(*bytes.Buffer) }

func putBuffer(b *bytes.Buffer) {
	if b.Cap() > maxPooledBuffer {
		return
	}
	b.Reset()
	bufferPool.Put(b)
}

// decodeJSON decodes exactly one JSON value from data into v, rejecting
// unknown fields, with a message that names the field when known.
func decodeJSON(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errorf(CodeInvalidJSON, "request body must hold a single JSON value")
	}
	return checkKeys(data, v)
}

// checkKeys closes two holes of encoding/json for a struct target: it
// matches field names case-insensitively ({"MAXVALUE": 1} would set
// maxValue) and lets a repeated key win silently. data is known to be valid.
func checkKeys(data []byte, v any) error {
	t := reflect.TypeOf(v)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	fields := jsonFields(t)
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil // null: nothing was set
	}
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return jsonError(err)
		}
		key, _ := tok.(string)
		if !fields[key] {
			return errorf(CodeInvalidJSON, "unknown field %q", shorten(key, 140))
		}
		if seen[key] {
			return errorf(CodeInvalidJSON, "field %q appears twice", key)
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return jsonError(err)
		}
	}
	return nil
}

var fieldCache sync.Map // reflect.Type → map[string]bool

// jsonFields returns the JSON names of a struct's fields.
func jsonFields(t reflect.Type) map[string]bool {
	if f, ok := fieldCache.Load(t); ok {
		return f.(map[string]bool)
	}
	f := make(map[string]bool)
	for i := range t.NumField() {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(sf.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = sf.Name
		}
		f[name] = true
	}
	fieldCache.Store(t, f)
	return f
}

func jsonError(err error) error {
	var (
		syn *json.SyntaxError
		typ *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &syn):
		return errorf(CodeInvalidJSON, "malformed JSON at byte %d: %s", syn.Offset, strings.TrimPrefix(syn.Error(), "json: "))
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return errorf(CodeInvalidJSON, "malformed JSON: unexpected end of the body")
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			return errorf(CodeInvalidJSON, "request body must be a JSON object, got %s", typ.Value)
		}
		return errorf(CodeInvalidJSON, "field %q must be %s, got %s", field, describeType(typ.Type), typ.Value)
	}
	if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return errorf(CodeInvalidJSON, "unknown field %s", shorten(f, 140))
	}
	return errorf(CodeInvalidJSON, "invalid JSON: %s", shorten(strings.TrimPrefix(err.Error(), "json: "), 200))
}

// describeType names a Go type in JSON terms for error messages.
func describeType(t reflect.Type) string {
	if t == nil {
		return "a valid value"
	}
	if t == durationType {
		return `a Go duration string such as "30s" or "1500ms"`
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer in range"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Struct, reflect.Map:
		return "an object"
	}
	return "a valid value"
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
