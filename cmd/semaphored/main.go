// Command semaphored serves the semaphored HTTP API: a distributed
// semaphore, with an embedded in-memory store or shared state in Redis.
//
// Run `semaphored -h` for the flags; each is also an environment variable
// SEMAPHORED_<FLAG>.
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"

	"github.com/semaphored/semaphored/api"
	"github.com/semaphored/semaphored/delivery"
	"github.com/semaphored/semaphored/hub"
	"github.com/semaphored/semaphored/routing"
	"github.com/semaphored/semaphored/semaphore"
	"github.com/semaphored/semaphored/store"
	"github.com/semaphored/semaphored/store/memory"
	redisstore "github.com/semaphored/semaphored/store/redis"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "semaphored:", err)
		os.Exit(1)
	}
}

// run serves until ctx ends (SIGTERM, SIGINT), then shuts down gracefully
// and returns nil. Logs go to stderr; the bootstrap admin key, when one is
// created, is printed once to stdout.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	return runIO(ctx, args, getenv, stdout, os.Stderr)
}

func runIO(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, getenv, stderr)
	if errors.Is(err, errHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr)

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)

	node := nodeID()
	st, closeStore, err := openStore(ctx, cfg, node, log, reg)
	if err != nil {
		return err
	}
	defer closeStore()

	webhooks, err := delivery.NewWebhookSender(delivery.WebhookConfig{
		AllowPrivate: cfg.WebhookAllowPrivate,
		Logger:       log.With("component", "webhook"),
	})
	if err != nil {
		return fmt.Errorf("webhooks: %w", err)
	}
	defer webhooks.Close()

	// The websocket hub of this instance (node); sessions of every
	// instance sharing the store get jobs through it.
	wsHub, err := hub.New(hub.Config{
		Store:  st,
		Node:   node,
		Logger: log.With("component", "websocket"),
	})
	if err != nil {
		return fmt.Errorf("websocket: %w", err)
	}

	svc, err := semaphore.New(semaphore.Config{
		Store:           st,
		Logger:          log.With("component", "semaphore"),
		Registerer:      reg,
		Webhooks:        webhooks,
		Websocket:       wsHub,
		Routing:         routing.Options{AllowPrivate: cfg.WebhookAllowPrivate, MaxPayloadBytes: cfg.MaxPayload},
		MaxQueued:       cfg.MaxQueue,
		MaxPayloadBytes: cfg.MaxPayload,
	})
	if err != nil {
		return fmt.Errorf("service: %w", err)
	}
	// Listen before anything is created in the store: a taken address
	// fails here, before a bootstrap key is made and printed.
	ln, err := listen(cfg)
	if err != nil {
		return err
	}
	defer ln.Close()
	var metricsLn net.Listener
	if cfg.MetricsAddr != "" {
		if metricsLn, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
			return fmt.Errorf("listen --metrics-addr: %w", err)
		}
		defer metricsLn.Close()
	}
	var certs *certReloader
	if cfg.TLSCert != "" {
		if certs, err = newCertReloader(cfg.TLSCert, cfg.TLSKey); err != nil {
			return err
		}
	}

	secret, err := svc.Bootstrap(ctx, cfg.AdminKey)
	if err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	// The sweeper outlives ctx: in-flight requests still need expiries
	// during the graceful shutdown; svc.Stop ends it.
	if err := svc.Start(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("service: %w", err)
	}
	defer svc.Stop()
	if err := wsHub.Start(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("websocket: %w", err)
	}
	defer wsHub.Stop()

	srvAPI, err := api.New(api.Config{
		Service:          svc,
		Logger:           log.With("component", "api"),
		Registerer:       reg,
		Gatherer:         reg,
		KeyRateLimit:     cfg.KeyRateLimit,
		KeyRateBurst:     cfg.keyRateBurst(),
		MaxBodyBytes:     cfg.MaxBody,
		Hub:              wsHub,
		AllowedOrigins:   cfg.AllowedOrigins,
		MetricsElsewhere: cfg.MetricsAddr != "",
	})
	if err != nil {
		return fmt.Errorf("api: %w", err)
	}

	hs := &http.Server{
		Handler:           srvAPI.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.With("component", "http").Handler(), slog.LevelWarn),
	}
	fresh := newFreshConns()
	hs.ConnState = fresh.track
	hs.RegisterOnShutdown(fresh.closeAll)
	// Printed only now that the address is bound, so a failed start prints
	// no key that would then be lost; and before the first request is
	// served, so a client that sees the server healthy has the key too.
	if secret != "" {
		fmt.Fprintf(stdout, "admin key (shown once): %s\n", secret)
	}
	serveErr := make(chan error, 2)
	scheme := "http"
	if certs != nil {
		scheme = "https"
		hs.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.get}
		stopHUP := certs.reloadOnSIGHUP(log)
		defer stopHUP()
		go func() { serveErr <- hs.ServeTLS(ln, "", "") }()
	} else {
		go func() { serveErr <- hs.Serve(ln) }()
	}
	log.Info("listening", "addr", ln.Addr().String(), "scheme", scheme)
	var ms *http.Server
	if metricsLn != nil {
		ms = &http.Server{Handler: api.MetricsHandler(reg, log.With("component", "metrics")), ReadHeaderTimeout: 10 * time.Second}
		go func() { serveErr <- ms.Serve(metricsLn) }()
		log.Info("serving /metrics without auth", "addr", metricsLn.Addr().String())
	}
	if cfg.WebhookAllowPrivate {
		log.Warn("--webhook-allow-private is on: webhooks may target loopback, private and link-local addresses and plain http:// URLs; use it only on a trusted network")
	}
	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down", "timeout", cfg.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		log.Warn("in-flight requests did not finish in time; closing them", "err", err)
		_ = hs.Close()
	}
	<-serveErr // http.ErrServerClosed
	if ms != nil {
		_ = ms.Close()
	}
	// Websocket connections were hijacked, so Shutdown left them: close
	// them (1001) and hand their sessions the grace period, to resume on
	// another instance.
	wsHub.Stop()
	svc.Stop()
	log.Info("stopped")
	return nil
}

func newLogger(cfg config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// openStore opens the configured store and returns a function closing it
// (and the Redis client, which the store does not own).
func openStore(ctx context.Context, cfg config, node string, log *slog.Logger, reg prometheus.Registerer) (store.Store, func(), error) {
	if cfg.RedisURL == "" {
		log.Info("using the embedded in-memory store (state is lost on exit; use --redis-url to share it between instances)")
		st := memory.New(memory.Options{})
		return st, func() { _ = st.Close() }, nil
	}
	target, err := parseRedisURL(cfg.RedisURL)
	if err != nil {
		return nil, nil, fmt.Errorf("--redis-url: %w", err)
	}
	redis.SetLogger(redisLogger{log.With("component", "go-redis")})
	client := target.newClient()
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = client.Ping(pctx).Err()
	cancel()
	if err != nil {
		_ = client.Close()
		return nil, nil, fmt.Errorf("redis %s: %w", target.describe(), err)
	}
	if err := reg.Register(newPoolCollector(client)); err != nil {
		_ = client.Close()
		return nil, nil, fmt.Errorf("metrics: %w", err)
	}
	st, err := redisstore.New(client, redisstore.Options{
		Prefix: cfg.RedisPrefix,
		NodeID: node,
		Logger: log.With("component", "redis"),
	})
	if err != nil {
		_ = client.Close()
		return nil, nil, fmt.Errorf("redis store: %w", err)
	}
	if err := reg.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "semaphored_redis_layout_refused_total",
		Help: "Calls refused because their semaphore's data was written by a newer release of semaphored (upgrade this instance).",
	}, func() float64 { return float64(st.LayoutRefusals()) })); err != nil {
		_ = st.Close()
		_ = client.Close()
		return nil, nil, fmt.Errorf("metrics: %w", err)
	}
	log.Info("using Redis", "redis", target.describe(), "prefix", cfg.RedisPrefix)
	return st, func() {
		_ = st.Close()
		_ = client.Close()
	}, nil
}

// nodeID names this instance among those sharing a Redis: host name and a
// random suffix, so two processes on one host differ.
func nodeID() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "node"
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return host + "-" + hex.EncodeToString(b[:])
}
