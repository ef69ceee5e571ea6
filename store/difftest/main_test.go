package difftest

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"testing"

	"go.uber.org/goleak"

	"github.com/semaphored/semaphored/internal/testredis"
)

func TestMain(m *testing.M) {
	flag.Parse()
	// No rapid fail files in the source tree by default: a failure prints
	// the seed that reproduces it (-rapid.seed=N).
	if !flagSet("rapid.nofailfile") && os.Getenv("RAPID_NOFAILFILE") == "" {
		_ = flag.Set("rapid.nofailfile", "true")
	}
	code := m.Run()
	testredis.Stop()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// flagSet reports whether the command line set the flag.
func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func itoa(n int) string { return strconv.Itoa(n) }
