package tests

import (
	"net/http"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/internal/testredis"
)

// TestFixedAdminKey_ReRegisteredAfterRedisLostData: a Redis restarted
// without persistence loses every key; the fixed --admin-key works again
// without restarting semaphored. A bootstrap key revoked by an operator
// stays revoked.
func TestFixedAdminKey_ReRegisteredAfterRedisLostData(t *testing.T) {
	t.Parallel()
	rs := testredis.StartServer(t)
	inst := start(t, "A", []string{"--redis-url", rs.URL(), "--redis-prefix", "e2e-boot", "--admin-key", adminKey})
	api := newAPI(t)
	var keys struct {
		Keys []struct {
			ID   string `json:"id"`
			Name string `json:"name"`
		} `json:"keys"`
	}
	code, err := api.do(t.Context(), http.MethodGet, inst.base+"/v1/keys", nil, &keys)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code)

	// What a restart without persistence leaves: no data. (SHUTDOWN
	// SAVE would write an RDB even with persistence off.)
	rc := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rc.Close()
	require.NoError(t, rc.FlushAll(t.Context()).Err())
	// Instances cache keys for up to 10 s; then the key is found missing
	// and registered again.
	require.Eventually(t, func() bool {
		code, err := api.do(t.Context(), http.MethodGet, inst.base+"/v1/keys", nil, &keys)
		return err == nil && code == http.StatusOK && len(keys.Keys) == 1
	}, 30*time.Second, 100*time.Millisecond, "the admin key answers again, registered, after Redis lost it")
	require.Equal(t, "bootstrap", keys.Keys[0].Name)

	// Revoked by an operator (itself): not brought back.
	var del map[string]any
	code, err = api.do(t.Context(), http.MethodDelete, inst.base+"/v1/keys/"+keys.Keys[0].ID, nil, &del)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code)
	for range 3 {
		code, err = api.do(t.Context(), http.MethodGet, inst.base+"/v1/keys", nil, &keys)
		require.ErrorContains(t, err, "unknown or revoked API key")
		require.Equal(t, http.StatusUnauthorized, code)
	}
}
