package api

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	gojson "github.com/goccy/go-json"
	"github.com/stretchr/testify/require"
)

// The response encoder must write what encoding/json writes.
func TestSerializer_SameBytesAsEncodingJSON(t *testing.T) {
	route, errText := "https", "<b>&\u2028 \"quoted\""
	at := time.Date(2030, 1, 2, 3, 4, 5, 123456789, time.UTC)
	values := []any{
		JobResponse{Job: JobJSON{ID: "id<&>", Semaphore: "s", Channel: "c", Status: "done", Attempts: 3,
			Payload: json.RawMessage(` {"a" : [1, 2.50, "x<y>\u00e9"], "b":null} `), Route: &route, Error: &errText,
			CreatedAt: at, UpdatedAt: at}},
		EnqueueBatchResponse{Jobs: []JobJSON{{ID: "1", Payload: json.RawMessage(`1e3`)}, {ID: "2", Payload: json.RawMessage(`"\u0000\ud83d\ude00"`)}}},
		ErrorBody{Error: ErrorDetail{Code: "c", Message: "m <script>", Index: new(int)}},
		map[string]any{"z": 1, "a": []string{"é", "\x7f"}, "m": map[string]int{"b": 2, "a": 1}, "big": int64(1) << 60},
		LeaseJSON{ID: "l", Weight: 3, FencingToken: 1 << 53, AcquiredAt: at, ExpiresAt: at.Add(time.Second)},
		map[string]Duration{"d": Duration(1500 * time.Millisecond)},
	}
	for _, v := range values {
		var want, got bytes.Buffer
		require.NoError(t, json.NewEncoder(&want).Encode(v))
		require.NoError(t, gojson.NewEncoder(&got).Encode(v))
		require.Equal(t, want.String(), got.String())
	}
}
