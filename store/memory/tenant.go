package memory

import (
	"context"
	"fmt"
	"sort"

	"github.com/semaphored/semaphored/store"
)

// CreateTenant implements store.Store. The tenant's ID is its name; a zero
// CreatedAt is set to the store's clock.
func (s *Store) CreateTenant(ctx context.Context, t store.Tenant) (store.Tenant, error) {
	if err := s.lock(ctx); err != nil {
		return store.Tenant{}, err
	}
	defer s.mu.Unlock()
	if err := t.Check(); err != nil {
		return store.Tenant{}, err
	}
	t.ID = t.Name
	if _, ok := s.tenants[t.Name]; ok {
		return store.Tenant{}, store.ErrTenantExists
	}
	if t.CreatedAt.IsZero() {
		t.CreatedAt = s.now()
	}
	s.tenants[t.Name] = t
	return t, nil
}

// ListTenants implements store.Store, sorted by name.
func (s *Store) ListTenants(ctx context.Context) ([]store.Tenant, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	ts := make([]store.Tenant, 0, len(s.tenants))
	for _, t := range s.tenants {
		ts = append(ts, t)
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].Name < ts[j].Name })
	return ts, nil
}

// keyRef names a key: ids are unique per tenant, as in the Redis store.
type keyRef struct{ tenant, id string }

// CreateKey implements store.Store. A zero CreatedAt is set to the store's
// clock; an id taken in the tenant, or a secret hash taken anywhere, is
// ErrKeyExists.
func (s *Store) CreateKey(ctx context.Context, k store.APIKey) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if k.CreatedAt.IsZero() {
		k.CreatedAt = s.now()
	}
	if k.ID == "" || k.Hash == "" {
		return fmt.Errorf("%w: key without id or hash", store.ErrInvalidParams)
	}
	ref := keyRef{k.Tenant, k.ID}
	if _, ok := s.keys[ref]; ok {
		return fmt.Errorf("%w: id %q", store.ErrKeyExists, k.ID)
	}
	if _, ok := s.keyIDByHash[k.Hash]; ok {
		return fmt.Errorf("%w: a key with this secret", store.ErrKeyExists)
	}
	s.keys[ref] = k
	s.keyIDByHash[k.Hash] = ref
	return nil
}

// KeyByHash implements store.Store.
func (s *Store) KeyByHash(ctx context.Context, hash string) (store.APIKey, error) {
	if err := s.lock(ctx); err != nil {
		return store.APIKey{}, err
	}
	defer s.mu.Unlock()
	ref, ok := s.keyIDByHash[hash]
	if !ok {
		return store.APIKey{}, store.ErrKeyNotFound
	}
	return s.keys[ref], nil
}

// ListKeys implements store.Store: the tenant's keys by CreatedAt, then ID.
func (s *Store) ListKeys(ctx context.Context, tenant string) ([]store.APIKey, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	ks := []store.APIKey{}
	for _, k := range s.keys {
		if k.Tenant == tenant {
			ks = append(ks, k)
		}
	}
	sort.Slice(ks, func(i, j int) bool {
		if !ks[i].CreatedAt.Equal(ks[j].CreatedAt) {
			return ks[i].CreatedAt.Before(ks[j].CreatedAt)
		}
		return ks[i].ID < ks[j].ID
	})
	return ks, nil
}

// DeleteKey implements store.Store; a key of another tenant is not found.
func (s *Store) DeleteKey(ctx context.Context, tenant, id string) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	ref := keyRef{tenant, id}
	k, ok := s.keys[ref]
	if !ok {
		return store.ErrKeyNotFound
	}
	delete(s.keys, ref)
	if s.keyIDByHash[k.Hash] == ref {
		delete(s.keyIDByHash, k.Hash)
	}
	return nil
}
