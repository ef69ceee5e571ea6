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
	"unicode/utf8"

	"github.com/labstack/echo/v4"
)

// apiError is an error with its wire code, rendered by errorHandler.
type apiError struct {
	Code    string
	Message string
	Index   *int // the refused job of a batch enqueue (ErrorDetail.Index)
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
	if ok, err := scanKeys(data, fields); ok {
		return err
	}
	return checkKeysSlow(data, fields)
}

// scanKeys is checkKeys over the bytes of valid JSON, without the
// allocations of a token decoder (it runs on every request body). ok is
// false when a key holds an escape or invalid UTF-8: checkKeysSlow decodes
// it then.
func scanKeys(data []byte, fields map[string]bool) (ok bool, err error) {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return true, nil // null: nothing was set
	}
	var seen [8]string // request objects have a few keys
	n := 0
	var more map[string]bool
	i = skipSpace(data, i+1)
	for i < len(data) && data[i] == '"' {
		end := i + 1
		for end < len(data) && data[end] != '"' {
			if data[end] == '\\' {
				return false, nil
			}
			end++
		}
		key := data[i+1 : end]
		if !utf8.Valid(key) {
			return false, nil // encoding/json would read U+FFFD
		}
		if !fields[string(key)] {
			return true, errorf(CodeInvalidJSON, "unknown field %q", shorten(string(key), 140))
		}
		dup := more[string(key)]
		for _, k := range seen[:n] {
			dup = dup || k == string(key)
		}
		if dup {
			return true, errorf(CodeInvalidJSON, "field %q appears twice", key)
		}
		if n < len(seen) {
			seen[n] = string(key)
			n++
		} else {
			if more == nil {
				more = make(map[string]bool)
			}
			more[string(key)] = true
		}
		i = skipSpace(data, end+1) // at ':'
		i = skipValue(data, skipSpace(data, i+1))
		i = skipSpace(data, i)
		if i < len(data) && data[i] == ',' {
			i = skipSpace(data, i+1)
		}
	}
	return true, nil
}

func skipSpace(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r') {
		i++
	}
	return i
}

// skipValue returns the index just past the JSON value that starts at i.
func skipValue(data []byte, i int) int {
	depth := 0
	for ; i < len(data); i++ {
		switch c := data[i]; c {
		case '"':
			for i++; i < len(data) && data[i] != '"'; i++ {
				if data[i] == '\\' {
					i++
				}
			}
			if depth == 0 {
				return i + 1
			}
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return i // the end of the enclosing object
			}
			depth--
			if depth == 0 {
				return i + 1
			}
		case ',':
			if depth == 0 {
				return i
			}
		case ' ', '\t', '\n', '\r':
			if depth == 0 {
				return i
			}
		}
	}
	return i
}

// checkKeysSlow is checkKeys with encoding/json's tokenizer, for keys that
// hold escapes.
func checkKeysSlow(data []byte, fields map[string]bool) error {
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
