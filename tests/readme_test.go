package tests

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/internal/testredis"
)

// readmeMarker precedes, on a line of its own, each fenced shell block of the
// README's walkthroughs. TestReadme_Walkthrough runs those blocks in order,
// in one bash, as a reader pasting them into one shell would.
const readmeMarker = "<!-- walkthrough -->"

// readmeSubstitutions are what the walkthrough must contain and what the
// test runs instead: the binaries already built rather than go run
// ($README_SEMAPHORED and $README_RECEIVER are set by the test), and free
// loopback ports rather than the fixed ones (literally: they also occur in
// single-quoted JSON).
func readmeSubstitutions(serverPort, receiverPort int) []struct{ old, new string } {
	return []struct{ old, new string }{
		{"go run ./cmd/semaphored", `"$README_SEMAPHORED"`},
		{"go run ./examples/receiver", `"$README_RECEIVER"`},
		{"127.0.0.1:8080", "127.0.0.1:" + strconv.Itoa(serverPort)},
		{"127.0.0.1:9090", "127.0.0.1:" + strconv.Itoa(receiverPort)},
	}
}

// readmePrelude runs before the walkthrough: stop at the first failing
// command or unset variable (the bug this test was written for), and have
// every curl report its HTTP status on stderr (README_HTTP lines).
const readmePrelude = `set -euo pipefail
curl() { command curl -w '%{stderr}README_HTTP %{http_code} %{method} %{url_effective}\n' "$@"; }
`

// readmeEpilogue reports the values the walkthrough captured.
const readmeEpilogue = `
printf 'README_VAR %s=%s\n' LEASE "$LEASE" JOB "$JOB" STATUS "$STATUS"
`

func TestReadme_Walkthrough(t *testing.T) {
	t.Parallel()
	readmeNeedTools(t, "bash", "curl", "jq")
	serverPort, err := testredis.FreePort()
	require.NoError(t, err)
	receiverPort, err := testredis.FreePort()
	require.NoError(t, err)
	script := readmeScript(t, serverPort, receiverPort)
	receiver := readmeBuildReceiver(t)

	dir := t.TempDir() // the script's working directory: semaphored.log goes there
	require.NoError(t, os.WriteFile(filepath.Join(dir, "walkthrough.sh"), []byte(script), 0o600))
	stdout, err := os.Create(filepath.Join(dir, "stdout"))
	require.NoError(t, err)
	defer stdout.Close()
	stderr, err := os.Create(filepath.Join(dir, "stderr"))
	require.NoError(t, err)
	defer stderr.Close()

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "walkthrough.sh")
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(),
		"README_SEMAPHORED="+binary,
		"README_RECEIVER="+receiver,
	)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// Its own process group, with the processes it starts in the
	// background: killed together on timeout or failure.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	require.NoError(t, cmd.Start())
	runErr := cmd.Wait()
	if runErr != nil {
		// It stopped before its last block (kill and wait): end what it
		// left running in its group.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}

	out := readmeRead(t, dir, "stdout")
	errOut := readmeRead(t, dir, "stderr")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- the script run (README.md's walkthrough blocks, substituted) ---\n%s", script)
		}
	})
	t.Logf("--- stdout ---\n%s\n--- stderr ---\n%s\n--- semaphored.log ---\n%s",
		out, errOut, readmeRead(t, dir, "semaphored.log"))
	if ctx.Err() != nil {
		t.Fatalf("the walkthrough did not finish within 30s")
	}
	require.NoError(t, runErr, "the walkthrough failed (bash -e: the last command run failed)")

	// The values it captured with jq.
	vars := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if kv, ok := strings.CutPrefix(line, "README_VAR "); ok {
			k, v, _ := strings.Cut(kv, "=")
			vars[k] = v
		}
	}
	for _, k := range []string{"LEASE", "JOB"} {
		require.NotEmpty(t, vars[k], "$%s captured", k)
		require.NotEqual(t, "null", vars[k], "$%s captured", k)
	}
	require.Equal(t, "done", vars["STATUS"], "the job's final status")

	// Every API call succeeded, these among them.
	calls := readmeHTTPCalls(t, errOut)
	lease, job := vars["LEASE"], vars["JOB"]
	for _, want := range []string{
		"200 PUT /v1/semaphores/payments-api",
		"201 POST /v1/keys",
		"200 POST /v1/semaphores/payments-api/acquire",
		"200 POST /v1/leases/" + lease + "/extend",
		"200 POST /v1/leases/" + lease + "/release",
		"200 GET /v1/semaphores/payments-api",
		"200 PUT /v1/semaphores/orders",
		"202 POST /v1/semaphores/orders/jobs",
		"200 GET /v1/jobs/" + job,
	} {
		require.Contains(t, calls, want)
	}
	for _, c := range calls {
		require.Regexp(t, `^2\d\d `, c, "every API call of the walkthrough succeeds")
	}

	// The receiver got the job, verified, and released it.
	require.Contains(t, out, `msg="job received" job=`+job)
	require.Contains(t, out, `msg="job released" job=`+job)
	require.NotContains(t, out, "refused a delivery")
}

// readmeScript extracts the walkthrough blocks of README.md and returns
// them, substituted, between readmePrelude and readmeEpilogue.
func readmeScript(t *testing.T, serverPort, receiverPort int) string {
	t.Helper()
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	require.NoError(t, err)
	blocks, err := readmeBlocks(string(readme))
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(blocks), 2, "README.md: want the sync and async walkthroughs marked %q", readmeMarker)
	body := strings.Join(blocks, "\n")
	for _, s := range readmeSubstitutions(serverPort, receiverPort) {
		require.Contains(t, body, s.old, "README.md's walkthrough no longer contains %q: update readmeSubstitutions", s.old)
		body = strings.ReplaceAll(body, s.old, s.new)
	}
	return readmePrelude + body + readmeEpilogue
}

// readmeBlocks returns the content of each fenced sh/bash block preceded by
// readmeMarker (blank lines between them allowed).
func readmeBlocks(md string) ([]string, error) {
	var (
		blocks []string
		cur    []string
		state  int // 0: text, 1: after a marker, 2: in a marked block
	)
	sc := bufio.NewScanner(strings.NewReader(md))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch state {
		case 0:
			if trimmed == readmeMarker {
				state = 1
			}
		case 1:
			switch trimmed {
			case "":
			case "```sh", "```bash":
				state, cur = 2, nil
			default:
				return nil, fmt.Errorf("README.md:%d: %s must be followed by a ```sh block, got %q", n, readmeMarker, line)
			}
		case 2:
			if trimmed == "```" {
				blocks = append(blocks, strings.Join(cur, "\n")+"\n")
				state = 0
				continue
			}
			cur = append(cur, line)
		}
	}
	if state != 0 {
		return nil, errors.New("README.md: a walkthrough block is not closed")
	}
	return blocks, sc.Err()
}

// readmeHTTPCalls returns the API calls the script's curl made, from the
// README_HTTP lines of its stderr, as "status METHOD path" (healthz polls
// left out: they fail until the server is up).
func readmeHTTPCalls(t *testing.T, stderr string) []string {
	t.Helper()
	re := regexp.MustCompile(`^README_HTTP (\d{3}) ([A-Z]+) https?://[^/]+(/\S*)$`)
	var calls []string
	for _, line := range strings.Split(stderr, "\n") {
		if !strings.HasPrefix(line, "README_HTTP ") {
			continue
		}
		m := re.FindStringSubmatch(line)
		require.NotNil(t, m, "unexpected curl report %q", line)
		if m[3] == "/healthz" {
			continue
		}
		calls = append(calls, m[1]+" "+m[2]+" "+m[3])
	}
	return calls
}

// readmeBuildReceiver builds examples/receiver into a temporary directory.
func readmeBuildReceiver(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "receiver")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "build", "-buildvcs=false", "-o", path,
		"github.com/semaphored/semaphored/examples/receiver").CombinedOutput()
	require.NoError(t, err, "go build examples/receiver: %s", out)
	return path
}

// readmeNeedTools fails the test, saying what to install, when a tool the
// walkthrough uses is missing.
func readmeNeedTools(t *testing.T, tools ...string) {
	t.Helper()
	var missing []string
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("the README walkthrough needs %s on PATH: install with `sudo apt-get install -y %s` (scripts/test.sh does, together with redis-server)",
			strings.Join(missing, ", "), strings.Join(missing, " "))
	}
}

// readmeRead returns a file of dir, or a note that it is missing.
func readmeRead(t *testing.T, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	return string(b)
}
