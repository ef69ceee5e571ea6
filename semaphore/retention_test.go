package semaphore_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/routing"
	"github.com/semaphored/semaphored/semaphore"
	"github.com/semaphored/semaphored/store"
)

func TestValidateConfig_Retention(t *testing.T) {
	t.Parallel()
	day := 24 * time.Hour
	for in, want := range map[string]store.Retention{
		``:                                    store.DefaultRetention,
		`null`:                                store.DefaultRetention,
		`{}`:                                  store.DefaultRetention,
		`{"done": null, "failed": null}`:      store.DefaultRetention,
		`{"done": "24h", "failed": "7d"}`:     {Done: day, Failed: 7 * day},
		`{"done": "0s"}`:                      {Done: 0, Failed: store.DefaultRetentionFailed},
		`{"failed": "0s"}`:                    {Done: store.DefaultRetentionDone, Failed: 0},
		`{"done": "1500ms", "failed": "30d"}`: {Done: 1500 * time.Millisecond, Failed: 30 * day},
		`{"done": "1d12h", "failed": "720h"}`: {Done: 36 * time.Hour, Failed: 30 * day},
		`{"done": "0d", "failed": "2d"}`:      {Done: 0, Failed: 2 * day},
	} {
		cfg, _, err := semaphore.ValidateConfig("s", semaphore.ConfigInput{MaxValue: ptr[int64](10), Retention: json.RawMessage(in)}, routing.Options{})
		require.NoError(t, err, in)
		require.Equal(t, want, cfg.Retention, in)
		require.NoError(t, cfg.Check(), "a valid retention is one every store accepts")
	}

	for in, field := range map[string]string{
		`1`:                         "retention",
		`"24h"`:                     "retention",
		`[]`:                        "retention",
		`{`:                         "retention",
		`{"done": "1h", "x": "1h"}`: "retention",
		`{"Done": "1h"}`:            "retention",
		`{"done": 60}`:              "retention.done",
		`{"done": "soon"}`:          "retention.done",
		`{"done": "-1s"}`:           "retention.done",
		`{"done": "30d1ms"}`:        "retention.done",
		`{"done": "721h"}`:          "retention.done",
		`{"done": "1500us"}`:        "retention.done",
		`{"done": "d"}`:             "retention.done",
		`{"done": "1.5d"}`:          "retention.done",
		`{"done": "-1d"}`:           "retention.done",
		`{"done": "1d-1h"}`:         "retention.done",
		`{"failed": "8760h"}`:       "retention.failed",
		`{"failed": true}`:          "retention.failed",
		`{"failed": "99999d"}`:      "retention.failed",
	} {
		_, _, err := semaphore.ValidateConfig("s", semaphore.ConfigInput{MaxValue: ptr[int64](10), Retention: json.RawMessage(in)}, routing.Options{})
		var ve *semaphore.ValidationError
		require.ErrorAs(t, err, &ve, in)
		require.Equal(t, semaphore.CodeInvalidConfig, ve.Code, in)
		require.Equal(t, field, ve.Field, in)
		require.True(t, strings.HasPrefix(ve.Message, field+" "), "%s: %q names %s", in, ve.Message, field)
	}
}

// TestService_PurgeJobsChannel: a bad channel is a 400 naming channel and
// purges nothing; a good one purges that channel's jobs only.
func TestService_PurgeJobsChannel(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx, svc, st := context.Background(), e.svc, e.store
	_, _, err := svc.PutSemaphore(ctx, "t", "s", semaphore.ConfigInput{MaxValue: ptr[int64](1)})
	require.NoError(t, err)
	_, err = svc.SetSuspended(ctx, "t", "s", true)
	require.NoError(t, err)
	for _, ch := range []string{"a", "a", "b"} {
		_, _, err := st.EnqueueJob(ctx, store.EnqueueParams{Tenant: "t", Semaphore: "s", Channel: ch, Payload: []byte(`1`)})
		require.NoError(t, err)
	}
	for _, ch := range []string{"-a", "a/b", strings.Repeat("x", 129), " a"} {
		_, err := svc.PurgeJobs(ctx, "t", "s", semaphore.PurgeJobsInput{Status: "scheduled", Channel: ch})
		var ve *semaphore.ValidationError
		require.ErrorAs(t, err, &ve, ch)
		require.Equal(t, semaphore.CodeInvalidRequest, ve.Code)
		require.Equal(t, "channel", ve.Field)
	}
	n, err := svc.PurgeJobs(ctx, "t", "s", semaphore.PurgeJobsInput{Status: "scheduled", Channel: "a"})
	require.NoError(t, err)
	require.Equal(t, 2, n)
	state, err := st.State(ctx, "t", "s")
	require.NoError(t, err)
	require.Equal(t, int64(1), state.Queued)
	require.Equal(t, int64(1), state.Channels["b"].Queued)
}
