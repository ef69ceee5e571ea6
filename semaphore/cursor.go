package semaphore

import (
	"encoding/base64"
	"strconv"
	"strings"
)

// Cursors of the paged lists are opaque to clients: base64url of
// "<kind>:<the store's cursor>". The kind tells one list's cursor from
// another's, so that a cursor is checked before the store sees it: a bad
// one is a 400 naming "cursor", never an empty or first page.
const (
	cursorSemaphores = "s" // store cursor: the last semaphore name of the page
	cursorJobs       = "j" // store cursor: the last job seq walked (decimal)
	cursorLeases     = "l" // store cursor: the fencing token of the last lease (decimal)
)

func encodeCursor(kind, inner string) string {
	if inner == "" {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString([]byte(kind + ":" + inner))
}

// decodeCursor returns the store cursor in c ("" for ""), checked by valid.
func decodeCursor(kind, c string, valid func(string) bool) (string, error) {
	if c == "" {
		return "", nil
	}
	bad := invalid(CodeInvalidRequest, "cursor", "cursor is not one this list returned (use the nextCursor of the previous page), got %q", truncate(c, 64))
	if len(c) > 512 {
		return "", bad
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return "", bad
	}
	k, inner, ok := strings.Cut(string(b), ":")
	if !ok || k != kind || inner == "" || !valid(inner) {
		return "", bad
	}
	return inner, nil
}

func validSeq(s string) bool {
	n, err := strconv.ParseInt(s, 10, 64)
	return err == nil && n >= 0
}
