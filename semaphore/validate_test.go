package semaphore

import (
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

var nameRE = regexp.MustCompile(NamePattern)

var nameSamples = []string{
	"", "a", "A", "0", "_", ".", "-", "a_b.c-d", "-a", "a-", "a b", "a/b", "é", "aé", "a\x00", "a\n", "orders",
	strings.Repeat("a", 127), strings.Repeat("a", 128), strings.Repeat("a", 129), "Z" + strings.Repeat(".", 127),
}

// ValidName checks bytes by hand; it must agree with NamePattern.
func TestValidName_MatchesPattern(t *testing.T) {
	for _, s := range nameSamples {
		require.Equal(t, nameRE.MatchString(s), ValidName(s), "%q", s)
	}
}

func FuzzValidName(f *testing.F) {
	for _, s := range nameSamples {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		require.Equal(t, nameRE.MatchString(s), ValidName(s), "%q", s)
	})
}

// HashSecret is the hex SHA-256 of the secret, however long.
func TestHashSecret(t *testing.T) {
	require.Equal(t, "40e0f376a4e1d0ef104a9cfedfbeb16bc700f5fd2a208630724cfef2c511a657",
		HashSecret("sk_0123456789012345678901234567890123456789abc"))
	require.Equal(t, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", HashSecret(""))
	require.Equal(t, "aa20c23e3201834050679e1d88941b9a6fed0557c9a705cb2c315e2e63fd486d", HashSecret(strings.Repeat("x", 200)))
}
