package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/url"
	"strings"
	"time"
)

// envPrefix prefixes the environment variable of every flag:
// --redis-url ↔ SEMAPHORED_REDIS_URL.
const envPrefix = "SEMAPHORED_"

// config is the parsed and validated command line.
type config struct {
	Addr                string
	RedisURL            string
	RedisPrefix         string
	AdminKey            string
	WebhookAllowPrivate bool
	AllowedOrigins      []string // parsed; used by the websocket endpoint
	KeyRateLimit        float64  // requests per second per key, 0 = off
	LogLevel            slog.Level
	LogFormat           string // text | json
	ShutdownTimeout     time.Duration
	MaxBody             int64
	MaxQueue            int64  // scheduled jobs per semaphore
	MaxPayload          int    // bytes of a job's payload
	MetricsAddr         string // "" = /metrics on Addr, for operator keys
	TLSCert, TLSKey     string // both or neither: serve HTTPS and WSS
}

// errHelp is returned by parseConfig for -h/--help after printing usage.
var errHelp = flag.ErrHelp

// parseConfig parses args (without the program name), taking each unset
// flag from its SEMAPHORED_<FLAG> environment variable; a flag on the
// command line wins over the environment. Usage and errors go to out.
func parseConfig(args []string, getenv func(string) string, out io.Writer) (config, error) {
	var (
		cfg            config
		allowedOrigins string
		logLevel       string
		maxBody        int64
	)
	fs := flag.NewFlagSet("semaphored", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&cfg.Addr, "addr", ":8080", "listen address (host:port)")
	fs.StringVar(&cfg.RedisURL, "redis-url", "", "Redis to share state through: empty = embedded in-memory store (one instance); redis://[user:pass@]host:port[/db] or rediss://… = one Redis; a comma-separated list of host:port or URLs = Redis Cluster seed nodes (a single seed node: end it with a comma)")
	fs.StringVar(&cfg.RedisPrefix, "redis-prefix", "sd", "prefix of every Redis key, to share one Redis between deployments")
	fs.StringVar(&cfg.AdminKey, "admin-key", "", "fixed bootstrap operator key (sk_…, at least 32 characters); empty = a random key is created and printed once")
	fs.BoolVar(&cfg.WebhookAllowPrivate, "webhook-allow-private", false, "allow webhook targets on loopback/private addresses and plain http://")
	fs.StringVar(&allowedOrigins, "allowed-origins", "", "comma-separated browser origins (https://app.example.com) allowed on the websocket besides the server's own; * = any")
	fs.Float64Var(&cfg.KeyRateLimit, "key-rate-limit", 0, "requests per second allowed per API key (burst: twice that); 0 = unlimited")
	fs.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&cfg.LogFormat, "log-format", "text", "log format: text or json")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGTERM, how long in-flight requests may take to finish")
	fs.Int64Var(&maxBody, "max-body", 1<<20, "maximum request body size in bytes")
	fs.Int64Var(&cfg.MaxQueue, "max-queue", 1_000_000, "maximum scheduled jobs per semaphore (more: 429 queue_full)")
	fs.IntVar(&cfg.MaxPayload, "max-payload", 256<<10, "maximum size of a job's payload in bytes (more: 413 payload_too_large)")
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", "", "serve /metrics on this separate address (host:port) without auth, for a private scrape network; empty = on --addr, for operator keys only")
	fs.StringVar(&cfg.TLSCert, "tls-cert", "", "PEM certificate (chain) file: serve HTTPS and WSS directly; reloaded on SIGHUP (needs --tls-key)")
	fs.StringVar(&cfg.TLSKey, "tls-key", "", "PEM private key file of --tls-cert")
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: semaphored [flags]\n\nEvery flag can also be set by an environment variable SEMAPHORED_<FLAG>\n(upper case, - → _), e.g. SEMAPHORED_REDIS_URL. A flag wins over its variable.\n\nFlags:\n")
		fs.PrintDefaults()
	}

	// Environment first, so that flags given on the command line override.
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		name := envName(f.Name)
		v := getenv(name)
		if v == "" || envErr != nil {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			envErr = fmt.Errorf("%s=%q: %v", name, v, err)
		}
	})
	if envErr != nil {
		return config{}, envErr
	}
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q (semaphored takes flags only)", fs.Arg(0))
	}

	var err error
	if cfg.LogLevel, err = parseLevel(logLevel); err != nil {
		return config{}, err
	}
	cfg.AllowedOrigins, err = parseOrigins(allowedOrigins)
	if err != nil {
		return config{}, err
	}
	cfg.MaxBody = maxBody
	if err := cfg.validate(); err != nil {
		return config{}, err
	}
	return cfg, nil
}

func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func (c *config) validate() error {
	if c.Addr == "" {
		return errors.New("--addr: must not be empty")
	}
	if c.AdminKey != "" {
		if !strings.HasPrefix(c.AdminKey, "sk_") {
			return errors.New(`--admin-key: must start with "sk_"`)
		}
		if len(c.AdminKey) < 32 {
			return fmt.Errorf("--admin-key: must be at least 32 characters long (got %d)", len(c.AdminKey))
		}
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("--tls-cert and --tls-key: give both or neither")
	}
	if c.MetricsAddr != "" && c.MetricsAddr == c.Addr {
		return errors.New("--metrics-addr: must differ from --addr")
	}
	if c.RedisPrefix == "" {
		return errors.New("--redis-prefix: must not be empty")
	}
	if c.MaxQueue < 1 {
		return fmt.Errorf("--max-queue: must be at least 1 (got %d)", c.MaxQueue)
	}
	if c.MaxPayload < 1 {
		return fmt.Errorf("--max-payload: must be at least 1 byte (got %d)", c.MaxPayload)
	}
	if strings.ContainsAny(c.RedisPrefix, "{} \t\r\n") {
		return errors.New("--redis-prefix: must not contain braces or white space")
	}
	if c.RedisURL != "" {
		if _, err := parseRedisURL(c.RedisURL); err != nil {
			return fmt.Errorf("--redis-url: %w", err)
		}
	}
	if math.IsNaN(c.KeyRateLimit) || math.IsInf(c.KeyRateLimit, 0) || c.KeyRateLimit < 0 {
		return fmt.Errorf("--key-rate-limit: must be a number ≥ 0 (got %v)", c.KeyRateLimit)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("--log-format: must be text or json (got %q)", c.LogFormat)
	}
	if c.ShutdownTimeout <= 0 {
		return fmt.Errorf("--shutdown-timeout: must be positive (got %v)", c.ShutdownTimeout)
	}
	if c.MaxBody < 1024 {
		return fmt.Errorf("--max-body: must be at least 1024 bytes (got %d)", c.MaxBody)
	}
	return nil
}

// keyRateBurst is the burst allowed per key: twice the rate, at least 1.
func (c *config) keyRateBurst() int {
	if c.KeyRateLimit <= 0 {
		return 0
	}
	return int(math.Max(1, math.Ceil(2*c.KeyRateLimit)))
}

func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("--log-level: must be debug, info, warn or error (got %q)", s)
}

// parseOrigins parses a comma-separated list of origins: "*" or
// scheme://host[:port], without path.
func parseOrigins(s string) ([]string, error) {
	var out []string
	for _, o := range strings.Split(s, ",") {
		o = strings.TrimSpace(o)
		if o == "" {
			continue
		}
		if o == "*" {
			out = append(out, o)
			continue
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return nil, fmt.Errorf("--allowed-origins: %q is not an origin (want scheme://host[:port], e.g. https://app.example.com)", o)
		}
		out = append(out, strings.ToLower(u.Scheme+"://"+u.Host))
	}
	return out, nil
}
