package routing

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind (a CEL
// evaluation cut by its timeout must not leak one).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
