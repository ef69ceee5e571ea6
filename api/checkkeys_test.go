package api

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/stretchr/testify/require"
)

// scanKeys must agree with the token decoder (checkKeysSlow) on every
// valid JSON body it handles.
func FuzzCheckKeys(f *testing.F) {
	for _, s := range []string{
		`{"channel":"a","payload":{"channel":1,"x":"}"},"idempotencyKey":"k"}`,
		`{"payload":[1,{"a":[2,3]},"]\"}"] , "channel" : "c"}`,
		`{"payload":1,"payload":2}`,
		`{"PAYLOAD":1}`,
		`{"jobs":[{"payload":1},{"payload":2}]}`,
		`{"payload":"\"","channel":"x","idempotencyKey":"y","jobs":null}`,
		`{"pay\u006coad":1}`,
		`null`, `{}`, ` { } `, `[1]`, `"s"`,
		`{"payload":true,"channel":"a","jobs":[],"idempotencyKey":"b","payload":false}`,
	} {
		f.Add([]byte(s))
	}
	fields := jsonFields(typeOf[EnqueueRequest]())
	f.Fuzz(func(t *testing.T, data []byte) {
		if !json.Valid(data) {
			return
		}
		ok, got := scanKeys(data, fields)
		if !ok {
			return
		}
		want := checkKeysSlow(data, fields)
		require.Equal(t, want == nil, got == nil, "%s: scan %v, tokens %v", data, got, want)
		if want != nil {
			require.Equal(t, want.Error(), got.Error())
		}
	})
}

func TestScanKeys(t *testing.T) {
	fields := jsonFields(typeOf[EnqueueRequest]())
	many := `{"payload":1,"channel":"a","idempotencyKey":"b","jobs":[]`
	for range 6 {
		many += `,"channel":"again"`
	}
	many += `}`
	for body, want := range map[string]string{
		`{"payload":{"unknown":1,"payload":2}}`: "",
		`{"payload":"}{\"x\":1","channel":"c"}`: "",
		`{"payload":1,"Channel":"c"}`:           `unknown field "Channel"`,
		`{"payload":1,"payload":2}`:             `field "payload" appears twice`,
		many:                                    `field "channel" appears twice`,
	} {
		ok, err := scanKeys([]byte(body), fields)
		require.True(t, ok, body)
		if want == "" {
			require.NoError(t, err, body)
		} else {
			require.ErrorContains(t, err, want, body)
		}
	}
	ok, _ := scanKeys([]byte(`{"pay\u006coad":1}`), fields)
	require.False(t, ok, "an escaped key goes to the token decoder")
}

func typeOf[T any]() reflect.Type { return reflect.TypeFor[T]() }
