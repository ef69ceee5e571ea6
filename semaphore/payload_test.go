package semaphore

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCheckPayloadNumbers(t *testing.T) {
	big := "1" + strings.Repeat("0", 308)  // 1e308: fits
	huge := "1" + strings.Repeat("0", 309) // 1e309: does not
	for _, ok := range []string{
		`1`, `-0.5`, `1e308`, `-1.7976931348623157e308`, `1e-999`, `{"a":[1,2.5e10,"1e999"]}`,
		`"\"1e999"`, `{"k\\":1e3}`, big, `[true,null,-12]`,
	} {
		require.True(t, json.Valid([]byte(ok)), ok)
		require.NoError(t, checkPayloadNumbers([]byte(ok)), ok)
	}
	for _, bad := range []string{`1e999`, `-1e400`, `{"a":[1,{"b":1E+309}]}`, huge, `["x\"",2e308]`} {
		require.True(t, json.Valid([]byte(bad)), bad)
		err := checkPayloadNumbers([]byte(bad))
		var ve *ValidationError
		require.ErrorAs(t, err, &ve, bad)
		require.Equal(t, CodeInvalidJSON, ve.Code)
		require.Equal(t, "payload", ve.Field)
	}
}

// FuzzCheckPayloadNumbers: on any valid JSON the check agrees with what a
// float64 decoder makes of it.
func FuzzCheckPayloadNumbers(f *testing.F) {
	for _, s := range []string{`1e999`, `{"a":"1e999","b":1e308}`, `[1,-2e-400,"\\\""]`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !json.Valid([]byte(s)) {
			return
		}
		var v any
		decodeErr := json.Unmarshal([]byte(s), &v)
		checkErr := checkPayloadNumbers([]byte(s))
		if (decodeErr == nil) != (checkErr == nil) {
			t.Fatalf("%q: decoder says %v, check says %v", s, decodeErr, checkErr)
		}
	})
}
