package semaphore

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/semaphored/semaphored/store"
)

// Key format: "sk_" + 43 characters of base64url (32 random bytes). Only the
// hex SHA-256 of the secret is stored; Prefix keeps its first PrefixLen
// characters so humans can tell keys apart.
const (
	SecretPrefix      = "sk_"
	PrefixLen         = 11
	MinAdminKeyLen    = 32
	maxSecretLen      = 512
	bootstrapKeyName  = "bootstrap"
	firstAdminKeyName = "admin"
)

// HashSecret returns the hex SHA-256 of a key's secret, as stored.
func HashSecret(secret string) string {
	// It runs on every request: the secret is copied to, and the hash
	// written in, arrays on the stack, so the string is the one allocation.
	var in [128]byte
	var sum [sha256.Size]byte
	if len(secret) <= len(in) {
		sum = sha256.Sum256(append(in[:0], secret...))
	} else {
		sum = sha256.Sum256([]byte(secret))
	}
	var out [2 * sha256.Size]byte
	hex.Encode(out[:], sum[:])
	return string(out[:])
}

func newSecret() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("semaphore: random secret: %w", err)
	}
	return SecretPrefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

func newKeyID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("semaphore: random key id: %w", err)
	}
	return "key_" + hex.EncodeToString(b[:]), nil
}

// newKey creates and stores a key with a fresh random secret, returned once.
// A random id or secret that happens to be taken (store.ErrKeyExists) is
// drawn again.
func (s *Service) newKey(ctx context.Context, tenant string, role store.Role, name string) (store.APIKey, string, error) {
	for attempt := 0; ; attempt++ {
		secret, err := newSecret()
		if err != nil {
			return store.APIKey{}, "", err
		}
		k, err := s.storeKey(ctx, tenant, role, name, secret)
		if errors.Is(err, store.ErrKeyExists) && attempt < 3 {
			continue
		}
		return k, secret, err
	}
}

func (s *Service) storeKey(ctx context.Context, tenant string, role store.Role, name, secret string) (store.APIKey, error) {
	id, err := newKeyID()
	if err != nil {
		return store.APIKey{}, err
	}
	k := store.APIKey{
		ID:     id,
		Tenant: tenant,
		Name:   name,
		Role:   role,
		Prefix: secret[:PrefixLen],
		Hash:   HashSecret(secret),
	}
	if err := s.store.CreateKey(ctx, k); err != nil {
		return store.APIKey{}, err
	}
	// Return the key as stored (CreatedAt is set by the store).
	if stored, err := s.store.KeyByHash(ctx, k.Hash); err == nil {
		return stored, nil
	}
	return k, nil
}

// Authenticate returns the key whose secret this is, or store.ErrKeyNotFound.
// A revoked key fails at once. The fixed bootstrap key (Bootstrap with an
// adminKey) that the store no longer knows because the store lost its data
// (a Redis restarted without persistence: the default tenant is gone too)
// is registered again; one that an operator revoked stays revoked.
func (s *Service) Authenticate(ctx context.Context, secret string) (store.APIKey, error) {
	if !strings.HasPrefix(secret, SecretPrefix) || len(secret) > maxSecretLen {
		return store.APIKey{}, store.ErrKeyNotFound
	}
	hash := HashSecret(secret)
	k, err := s.store.KeyByHash(ctx, hash)
	if errors.Is(err, store.ErrKeyNotFound) {
		if fixed := s.adminKeyHash.Load(); fixed != nil && subtle.ConstantTimeCompare([]byte(*fixed), []byte(hash)) == 1 {
			return s.reregisterAdminKey(ctx, secret)
		}
	}
	return k, err
}

// reregisterAdminKey registers the fixed bootstrap key again if the store
// lost its data (no default tenant), and returns it.
func (s *Service) reregisterAdminKey(ctx context.Context, secret string) (store.APIKey, error) {
	tenants, err := s.store.ListTenants(ctx)
	if err != nil {
		return store.APIKey{}, err
	}
	for _, t := range tenants {
		if t.ID == store.DefaultTenant {
			return store.APIKey{}, store.ErrKeyNotFound // revoked, not lost
		}
	}
	s.log.WarnContext(ctx, "the store lost its data (no default tenant): registering the fixed admin key again")
	if _, err := s.Bootstrap(ctx, secret); err != nil {
		return store.APIKey{}, err
	}
	return s.store.KeyByHash(ctx, HashSecret(secret))
}

// Bootstrap ensures the default tenant exists. With adminKey != "" (it must
// start with "sk_" and be at least 32 characters) it registers that secret
// as an operator key of the default tenant unless it already is one, and
// returns "". Otherwise, when the default tenant has no key yet (it was just
// created), it creates a random operator key and returns its secret, to be
// shown once; "" when nothing was created.
func (s *Service) Bootstrap(ctx context.Context, adminKey string) (string, error) {
	if adminKey != "" && (!strings.HasPrefix(adminKey, SecretPrefix) || len(adminKey) < MinAdminKeyLen || len(adminKey) > maxSecretLen) {
		return "", fmt.Errorf("semaphore: admin key must start with %q and be %d to %d characters long", SecretPrefix, MinAdminKeyLen, maxSecretLen)
	}
	created := true
	_, err := s.store.CreateTenant(ctx, store.Tenant{ID: store.DefaultTenant, Name: store.DefaultTenant})
	if errors.Is(err, store.ErrTenantExists) {
		created = false
	} else if err != nil {
		return "", fmt.Errorf("semaphore: bootstrap default tenant: %w", err)
	}

	if adminKey != "" {
		hash := HashSecret(adminKey)
		s.adminKeyHash.Store(&hash)
		k, err := s.store.KeyByHash(ctx, hash)
		switch {
		case err == nil && k.Tenant == store.DefaultTenant && k.Role == store.RoleOperator:
			return "", nil
		case err == nil:
			return "", errors.New("semaphore: admin key is already registered with another tenant or role")
		case !errors.Is(err, store.ErrKeyNotFound):
			return "", fmt.Errorf("semaphore: bootstrap: %w", err)
		}
		if _, err := s.storeKey(ctx, store.DefaultTenant, store.RoleOperator, bootstrapKeyName, adminKey); errors.Is(err, store.ErrKeyExists) {
			return "", nil // another instance registered it meanwhile
		} else if err != nil {
			return "", fmt.Errorf("semaphore: bootstrap admin key: %w", err)
		}
		s.log.InfoContext(ctx, "registered the admin key as an operator key of the default tenant")
		return "", nil
	}

	if !created {
		// A crash between creating the tenant and its key must not leave it
		// without any key.
		keys, err := s.store.ListKeys(ctx, store.DefaultTenant)
		if err != nil {
			return "", fmt.Errorf("semaphore: bootstrap: %w", err)
		}
		if len(keys) > 0 {
			return "", nil
		}
	}
	_, secret, err := s.newKey(ctx, store.DefaultTenant, store.RoleOperator, bootstrapKeyName)
	if err != nil {
		return "", fmt.Errorf("semaphore: bootstrap operator key: %w", err)
	}
	return secret, nil
}

// ---- tenants (operator) ----

// CreateTenant creates a tenant (its id is its name) and its first admin
// key, whose secret is returned once.
func (s *Service) CreateTenant(ctx context.Context, caller store.APIKey, name string) (store.Tenant, store.APIKey, string, error) {
	if caller.Role != store.RoleOperator {
		return store.Tenant{}, store.APIKey{}, "", ErrForbidden
	}
	if err := checkName("name", name); err != nil {
		return store.Tenant{}, store.APIKey{}, "", err
	}
	t, err := s.store.CreateTenant(ctx, store.Tenant{ID: name, Name: name})
	if err != nil {
		return store.Tenant{}, store.APIKey{}, "", err
	}
	k, secret, err := s.newKey(ctx, t.ID, store.RoleAdmin, firstAdminKeyName)
	if err != nil {
		return store.Tenant{}, store.APIKey{}, "", err
	}
	return t, k, secret, nil
}

// ListTenants lists every tenant.
func (s *Service) ListTenants(ctx context.Context, caller store.APIKey) ([]store.Tenant, error) {
	if caller.Role != store.RoleOperator {
		return nil, ErrForbidden
	}
	return s.store.ListTenants(ctx)
}

// ---- keys (admin) ----

func isAdmin(r store.Role) bool { return r == store.RoleAdmin || r == store.RoleOperator }

// CreateKey creates a key in the caller's tenant. An admin may create worker
// and admin keys; only an operator may create operator keys.
func (s *Service) CreateKey(ctx context.Context, caller store.APIKey, role store.Role, name string) (store.APIKey, string, error) {
	if !isAdmin(caller.Role) {
		return store.APIKey{}, "", ErrForbidden
	}
	switch role {
	case store.RoleWorker, store.RoleAdmin:
	case store.RoleOperator:
		if caller.Role != store.RoleOperator {
			return store.APIKey{}, "", ErrForbidden
		}
	default:
		return store.APIKey{}, "", invalid(CodeInvalidRequest, "role", `role must be "worker", "admin" or "operator", got %q`, truncate(string(role), 64))
	}
	if err := checkKeyName(name); err != nil {
		return store.APIKey{}, "", err
	}
	return s.newKey(ctx, caller.Tenant, role, name)
}

// ListKeys lists the keys of the caller's tenant.
func (s *Service) ListKeys(ctx context.Context, caller store.APIKey) ([]store.APIKey, error) {
	if !isAdmin(caller.Role) {
		return nil, ErrForbidden
	}
	return s.store.ListKeys(ctx, caller.Tenant)
}

// DeleteKey revokes a key of the caller's tenant at once and returns it.
// Only an operator may revoke an operator key.
func (s *Service) DeleteKey(ctx context.Context, caller store.APIKey, id string) (store.APIKey, error) {
	if !isAdmin(caller.Role) {
		return store.APIKey{}, ErrForbidden
	}
	keys, err := s.store.ListKeys(ctx, caller.Tenant)
	if err != nil {
		return store.APIKey{}, err
	}
	for _, k := range keys {
		if k.ID != id {
			continue
		}
		if k.Role == store.RoleOperator && caller.Role != store.RoleOperator {
			return store.APIKey{}, ErrForbidden
		}
		if err := s.store.DeleteKey(ctx, caller.Tenant, id); err != nil {
			return store.APIKey{}, err
		}
		return k, nil
	}
	return store.APIKey{}, store.ErrKeyNotFound
}
