package api

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/routing"
	"github.com/semaphored/semaphored/semaphore"
	"github.com/semaphored/semaphored/store"
)

// FuzzDecodeAcquire feeds arbitrary bodies to the acquire decoding and
// validation: nothing panics, and whatever is accepted is within the limits.
func FuzzDecodeAcquire(f *testing.F) {
	for _, s := range []string{
		``, `{}`, `null`, `{"weight":2}`, `{"channel":"eu","weight":1,"ttl":"30s","wait":"1500ms","idempotencyKey":"k"}`,
		`{"wait":"61s"}`, `{"ttl":"0s"}`, `{"ttl":"-1h"}`, `{"weight":-1}`, `{"weight":1e3}`, `{"weight":"1"}`,
		`{"channel":""}`, `{"channel":"-x"}`, `{"Weight":1}`, `{"weight":1,"weight":2}`, `{"ttl":"9223372036854775807ns"}`,
		`{"x":1}`, `[]`, `{"ttl":null}`, `{} {}`, `{"channel":"\u00e9"}`, "{\"idempotencyKey\":\"\xff\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req AcquireRequest
		if len(data) > 0 {
			if err := decodeJSON(data, &req); err != nil {
				var ae *apiError
				require.ErrorAs(t, err, &ae)
				require.Equal(t, CodeInvalidJSON, ae.Code)
				return
			}
		}
		p, err := semaphore.ValidateAcquire("t", "s", req.input())
		if err != nil {
			var ve *semaphore.ValidationError
			require.ErrorAs(t, err, &ve)
			require.Contains(t, []string{semaphore.CodeInvalidRequest, semaphore.CodeInvalidName}, ve.Code)
			require.Contains(t, ve.Message, ve.Field)
			return
		}
		require.True(t, semaphore.ValidName(p.Channel), "channel %q", p.Channel)
		require.GreaterOrEqual(t, p.Weight, int64(1))
		require.LessOrEqual(t, p.Weight, int64(semaphore.MaxMaxValue))
		if req.TTL == nil {
			require.Zero(t, p.TTL)
		} else {
			require.GreaterOrEqual(t, p.TTL, time.Second)
			require.LessOrEqual(t, p.TTL, 24*time.Hour)
		}
		require.GreaterOrEqual(t, p.Wait, time.Duration(0))
		require.LessOrEqual(t, p.Wait, 60*time.Second)
		require.LessOrEqual(t, len(p.IdempotencyKey), 256)
	})
}

// FuzzDecodeSemaphoreConfig does the same for PUT /v1/semaphores/{name}.
func FuzzDecodeSemaphoreConfig(f *testing.F) {
	for _, s := range []string{
		`{"maxValue":1}`, `{}`, `null`, `{"maxValue":0}`, `{"maxValue":1000000000}`, `{"maxValue":1000000001}`,
		`{"maxValue":3,"maxValueScope":"channel","leaseTimeout":"90s","maxAttempts":5,"onSessionLost":"wait","onDeliveryError":"suspend"}`,
		`{"maxValue":1,"routes":[{"type":"https","url":"https://x"}],"mapping":{"expr":"payload","canOverrideRouting":true}}`,
		`{"maxValue":1,"routes":[{"type":"x"}]}`, `{"maxValue":1,"routes":{}}`, `{"maxValue":1,"routes":null,"mapping":null}`,
		`{"maxValue":1,"mapping":{"expr":""}}`, `{"maxValue":1,"leaseTimeout":"24h0m0.000000001s"}`, `{"maxValue":1,"routes":[]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req SemaphoreConfigJSON
		if err := decodeJSON(data, &req); err != nil {
			var ae *apiError
			require.ErrorAs(t, err, &ae)
			require.Equal(t, CodeInvalidJSON, ae.Code)
			return
		}
		cfg, _, err := semaphore.ValidateConfig("s", req.input(), routing.Options{})
		if err != nil {
			var ve *semaphore.ValidationError
			require.ErrorAs(t, err, &ve)
			require.Equal(t, semaphore.CodeInvalidConfig, ve.Code)
			return
		}
		require.GreaterOrEqual(t, cfg.MaxValue, int64(1))
		require.LessOrEqual(t, cfg.MaxValue, int64(1e9))
		require.Contains(t, []string{store.ScopeTotal, store.ScopeChannel}, cfg.MaxValueScope)
		require.GreaterOrEqual(t, cfg.LeaseTimeout, time.Second)
		require.LessOrEqual(t, cfg.LeaseTimeout, 24*time.Hour)
		require.GreaterOrEqual(t, cfg.MaxAttempts, 1)
		require.LessOrEqual(t, cfg.MaxAttempts, 100)
		require.Contains(t, []string{"release", "redeliver", "wait"}, cfg.OnSessionLost)
		require.Contains(t, []string{"fail", "suspend"}, cfg.OnDeliveryError)
		// What is stored reads back: routes an array, mapping an object or null.
		sem := semaphoreJSON(store.Semaphore{Name: "s", Config: cfg}, nil)
		require.Equal(t, byte('['), sem.Routes[0])
		require.Contains(t, []byte{'{', 'n'}, sem.Mapping[0])
	})
}
