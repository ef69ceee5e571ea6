// Command receiver is an example webhook receiver for semaphored's https
// routes. For each delivery it verifies the Standard Webhooks signature with
// the route's secret (401 if it does not match), answers at once, does the
// "work" and then releases the job (POST /v1/jobs/{id}/release), which frees
// the job's permit for the next queued job.
//
//	WEBHOOK_SECRET=whsec_… SEMAPHORED_KEY=sk_… go run ./examples/receiver
//
// Flags (the environment variable in brackets is the default):
//
//	--addr    listen address, loopback only by default (127.0.0.1:9090)
//	--secret  the route's signing secret, whsec_… [WEBHOOK_SECRET]
//	--server  semaphored's base URL [SEMAPHORED_URL, else http://127.0.0.1:8080]
//	--key     an API key (worker or admin) to release jobs with [SEMAPHORED_KEY]
//	--work    how long the pretend work takes (1s)
//
// It serves GET /healthz for scripts that wait for it, and stops on SIGINT or
// SIGTERM after the jobs it holds are released. The README's async walkthrough
// runs it.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stdout, nil))
	if err := run(ctx, os.Args[1:], os.Getenv, log); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "receiver:", err)
		os.Exit(1)
	}
}

// config is the parsed command line.
type config struct {
	addr   string
	secret string
	server string
	key    string
	work   time.Duration
}

// parseConfig parses args; the secret, server URL and key not given as
// flags come from the environment (not used as flag defaults, which -h
// would print).
func parseConfig(args []string, getenv func(string) string) (config, error) {
	var c config
	fs := flag.NewFlagSet("receiver", flag.ContinueOnError)
	fs.StringVar(&c.addr, "addr", "127.0.0.1:9090", "listen address")
	fs.StringVar(&c.secret, "secret", "", "the route's signing secret, whsec_… (default $WEBHOOK_SECRET)")
	fs.StringVar(&c.server, "server", "", "semaphored's base URL (default $SEMAPHORED_URL, else http://127.0.0.1:8080)")
	fs.StringVar(&c.key, "key", "", "API key that releases the jobs (default $SEMAPHORED_KEY)")
	fs.DurationVar(&c.work, "work", time.Second, "how long the pretend work on each job takes")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	c.secret = cmp.Or(c.secret, getenv("WEBHOOK_SECRET"))
	c.server = cmp.Or(c.server, getenv("SEMAPHORED_URL"), "http://127.0.0.1:8080")
	c.key = cmp.Or(c.key, getenv("SEMAPHORED_KEY"))
	switch {
	case !strings.HasPrefix(c.secret, "whsec_") || len(c.secret) == len("whsec_"):
		// NewWebhook would accept "" (an empty key), so check it here.
		return config{}, errors.New(`--secret (or WEBHOOK_SECRET): the route's "secret", whsec_…, is required`)
	case c.key == "":
		return config{}, errors.New("--key (or SEMAPHORED_KEY): an API key is required to release jobs")
	case c.work < 0:
		return config{}, errors.New("--work: must not be negative")
	}
	c.server = strings.TrimSuffix(c.server, "/")
	if u, err := url.Parse(c.server); err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return config{}, fmt.Errorf("--server: %q is not an http(s):// URL", c.server)
	}
	return c, nil
}

// run serves webhooks until ctx ends, then shuts down gracefully.
func run(ctx context.Context, args []string, getenv func(string) string, log *slog.Logger) error {
	cfg, err := parseConfig(args, getenv)
	if err != nil {
		return err
	}
	rc, err := newReceiver(cfg, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: rc.handler(), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("listening", "addr", ln.Addr().String(), "server", cfg.server)

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing the jobs in hand")
	sctx, cancel := context.WithTimeout(context.Background(), cfg.work+15*time.Second)
	defer cancel()
	err = srv.Shutdown(sctx) // no new deliveries; the requests in flight end
	rc.wait()                // the jobs accepted are worked on and released
	return err
}

// delivery is the JSON body of a webhook (README, "The webhook").
type delivery struct {
	ID        string `json:"id"` // the job id, also the webhook-id header
	Semaphore string `json:"semaphore"`
	Channel   string `json:"channel"`
	Attempt   int    `json:"attempt"`
	Lease     struct {
		ID           string    `json:"id"`
		FencingToken int64     `json:"fencingToken"`
		ExpiresAt    time.Time `json:"expiresAt"`
	} `json:"lease"`
	Payload json.RawMessage `json:"payload"`
}

// maxBody bounds a delivery's size: well above semaphored's default job
// payload limit of 256 KiB.
const maxBody = 2 << 20

// receiver verifies deliveries and works on them, one goroutine per job.
type receiver struct {
	cfg    config
	wh     *standardwebhooks.Webhook
	log    *slog.Logger
	client *http.Client

	wg     sync.WaitGroup
	mu     sync.Mutex
	inHand map[string]bool // ids of the jobs being worked on
}

func newReceiver(cfg config, log *slog.Logger) (*receiver, error) {
	wh, err := standardwebhooks.NewWebhook(cfg.secret)
	if err != nil {
		return nil, errors.New("the secret is not whsec_ followed by base64")
	}
	return &receiver{
		cfg:    cfg,
		wh:     wh,
		log:    log,
		client: &http.Client{Timeout: 10 * time.Second},
		inHand: make(map[string]bool),
	}, nil
}

func (rc *receiver) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("POST /", rc.serveWebhook) // any path: the route's URL chooses it
	return mux
}

// serveWebhook accepts one delivery: verify, answer 202 at once, work later.
func (rc *receiver) serveWebhook(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
		} else {
			http.Error(w, "cannot read the body", http.StatusBadRequest)
		}
		return
	}
	// The signature covers webhook-id, webhook-timestamp and the raw body;
	// Verify also refuses timestamps more than 5 minutes off (replays).
	if err := rc.wh.Verify(body, r.Header); err != nil {
		rc.log.Warn("refused a delivery", "error", err, "remote", r.RemoteAddr)
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	var d delivery
	if err := json.Unmarshal(body, &d); err != nil || d.ID == "" {
		http.Error(w, "not a semaphored delivery", http.StatusBadRequest)
		return
	}

	// Delivery is at least once: the same job (same id) may come again, e.g.
	// when our answer was lost. Work on each job once at a time.
	rc.mu.Lock()
	dup := rc.inHand[d.ID]
	rc.inHand[d.ID] = true
	rc.mu.Unlock()
	if dup {
		rc.log.Info("already working on this job", "job", d.ID)
		w.WriteHeader(http.StatusAccepted)
		return
	}

	rc.log.Info("job received", "job", d.ID, "semaphore", d.Semaphore, "channel", d.Channel,
		"attempt", d.Attempt, "fencingToken", d.Lease.FencingToken, "payload", string(d.Payload))
	rc.wg.Add(1)
	go rc.work(d)
	// Any 2xx accepts the delivery; the job stays inflight, holding its
	// permit, until it is released below (or its lease expires).
	w.WriteHeader(http.StatusAccepted)
}

// work does the job and releases it. Not tied to the request: the webhook
// has been answered already.
func (rc *receiver) work(d delivery) {
	defer rc.wg.Done()
	defer func() {
		rc.mu.Lock()
		delete(rc.inHand, d.ID)
		rc.mu.Unlock()
	}()

	// The "work". A real worker would use d.Payload here, pass
	// d.Lease.FencingToken to the resource it protects, and extend the lease
	// (POST /v1/leases/{lease.id}/extend) if it may outlast d.Lease.ExpiresAt.
	time.Sleep(rc.cfg.work)

	if err := rc.release(d.ID); err != nil {
		// The job comes back by itself when its lease expires.
		rc.log.Error("release failed", "job", d.ID, "error", err)
		return
	}
	rc.log.Info("job released", "job", d.ID)
}

// release calls POST {server}/v1/jobs/{id}/release: the job ends done and its
// permit goes to the next queued job.
func (rc *receiver) release(id string) error {
	req, err := http.NewRequest(http.MethodPost, rc.cfg.server+"/v1/jobs/"+url.PathEscape(id)+"/release", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+rc.cfg.key)
	resp, err := rc.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	// Errors are {"error": {"code", "message"}}; 409 invalid_state means the
	// job is no longer inflight (its lease expired, or it was cancelled).
	var e struct {
		Error struct{ Code, Message string }
	}
	_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&e)
	return fmt.Errorf("%s: %s (%s)", resp.Status, e.Error.Code, e.Error.Message)
}

// wait waits until every job accepted so far has been released (or failed
// to be).
func (rc *receiver) wait() { rc.wg.Wait() }
