package redisstore

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/semaphored/semaphored/store"
)

type tenantJSON struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"createdAt"`
}

// CreateTenant stores a tenant under its name (HSETNX: atomic). An empty
// ID becomes the name; a zero CreatedAt becomes now.
func (s *Store) CreateTenant(ctx context.Context, t store.Tenant) (store.Tenant, error) {
	if err := t.Check(); err != nil {
		return store.Tenant{}, err
	}
	t.ID = t.Name
	if t.CreatedAt.IsZero() {
		t.CreatedAt = time.Now().UTC()
	}
	b, err := json.Marshal(tenantJSON(t))
	if err != nil {
		return store.Tenant{}, err
	}
	ok, err := s.client.HSetNX(ctx, s.keys.tenants(), t.Name, b).Result()
	if err != nil {
		return store.Tenant{}, translate(err, nil)
	}
	if !ok {
		return store.Tenant{}, store.ErrTenantExists
	}
	return t, nil
}

// ListTenants returns every tenant, ordered by name.
func (s *Store) ListTenants(ctx context.Context) ([]store.Tenant, error) {
	vals, err := s.client.HVals(ctx, s.keys.tenants()).Result()
	if err != nil {
		return nil, translate(err, nil)
	}
	out := make([]store.Tenant, 0, len(vals))
	for _, v := range vals {
		var t tenantJSON
		if err := json.Unmarshal([]byte(v), &t); err != nil {
			return nil, fmt.Errorf("redisstore: bad tenant record: %w", err)
		}
		out = append(out, store.Tenant(t))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

type keyJSON struct {
	ID        string     `json:"id"`
	Tenant    string     `json:"tenant"`
	Name      string     `json:"name"`
	Role      store.Role `json:"role"`
	Prefix    string     `json:"prefix"`
	Hash      string     `json:"hash"`
	CreatedAt time.Time  `json:"createdAt"`
}

// CreateKey stores a key record and indexes it under its tenant, in one
// script.
func (s *Store) CreateKey(ctx context.Context, k store.APIKey) error {
	if k.ID == "" || k.Hash == "" {
		return fmt.Errorf("%w: key without id or hash", store.ErrInvalidParams)
	}
	if k.CreatedAt.IsZero() {
		k.CreatedAt = time.Now().UTC()
	}
	b, err := json.Marshal(keyJSON(k))
	if err != nil {
		return err
	}
	n, err := s.runOnce(ctx, scriptCreateKey, []string{s.keys.keyRecords(), s.keys.tenantKeys(k.Tenant)},
		k.ID, k.Hash, b).Int64()
	if err != nil {
		return translate(err, nil)
	}
	if n == 0 {
		return fmt.Errorf("%w: id %q or a key with this secret", store.ErrKeyExists, k.ID)
	}
	return nil
}

// KeyByHash finds a key by the hash of its secret.
// Keys found are cached (see keyCache): a revoke on any instance evicts
// them by pub/sub.
func (s *Store) KeyByHash(ctx context.Context, hash string) (store.APIKey, error) {
	k, ok, gen := s.authKeys.get(hash, time.Now())
	if ok {
		return k, nil
	}
	v, err := s.client.HGet(ctx, s.keys.keyRecords(), hash).Result()
	if err != nil {
		return store.APIKey{}, translate(err, store.ErrKeyNotFound)
	}
	k, err = decodeKey(v)
	if err != nil {
		return store.APIKey{}, err
	}
	s.authKeys.put(hash, k, gen, time.Now())
	return k, nil
}

// ListKeys returns a tenant's keys, oldest first.
func (s *Store) ListKeys(ctx context.Context, tenant string) ([]store.APIKey, error) {
	vals, err := scriptListKeys.Run(ctx, s.client, []string{s.keys.keyRecords(), s.keys.tenantKeys(tenant)}).StringSlice()
	if err != nil {
		return nil, translate(err, nil)
	}
	out := make([]store.APIKey, 0, len(vals))
	for _, v := range vals {
		k, err := decodeKey(v)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// DeleteKey revokes a key of the tenant at once.
func (s *Store) DeleteKey(ctx context.Context, tenant, id string) error {
	hash, err := s.runOnce(ctx, scriptDeleteKey, []string{s.keys.keyRecords(), s.keys.tenantKeys(tenant)}, id).Text()
	if err != nil {
		return translate(err, nil)
	}
	if hash == "" {
		return store.ErrKeyNotFound
	}
	s.authKeys.evict(hash)
	// Every instance evicts it from its key cache (this one included).
	if err := s.client.Publish(ctx, s.keys.keysRevokedChannel(), hash).Err(); err != nil {
		s.log.Warn("publishing a key revoke failed; other instances forget the key within the cache ttl", "err", err)
	}
	return nil
}

func decodeKey(v string) (store.APIKey, error) {
	var k keyJSON
	if err := json.Unmarshal([]byte(v), &k); err != nil {
		return store.APIKey{}, fmt.Errorf("redisstore: bad key record: %w", err)
	}
	return store.APIKey(k), nil
}
