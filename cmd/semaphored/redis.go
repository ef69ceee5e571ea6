package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// redisTarget is a parsed --redis-url: exactly one of single and cluster.
type redisTarget struct {
	single  *redis.Options
	cluster *redis.ClusterOptions
}

// parseRedisURL parses --redis-url. One entry is a standalone Redis
// (redis://, rediss://, or a bare host:port); two or more comma-separated
// entries, or one followed by a comma, are Redis Cluster seed nodes, each a
// host:port or a URL (credentials and TLS are taken from the first URL).
func parseRedisURL(s string) (redisTarget, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return redisTarget{}, errors.New("empty")
	}
	if !strings.Contains(s, ",") {
		opt, err := parseNode(s)
		if err != nil {
			return redisTarget{}, err
		}
		return redisTarget{single: opt}, nil
	}
	co := &redis.ClusterOptions{}
	first := true
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		opt, err := parseNode(part)
		if err != nil {
			return redisTarget{}, err
		}
		if opt.DB != 0 {
			return redisTarget{}, fmt.Errorf("%q: Redis Cluster has no database %d", part, opt.DB)
		}
		co.Addrs = append(co.Addrs, opt.Addr)
		if first && strings.Contains(part, "://") {
			co.Username, co.Password, co.TLSConfig = opt.Username, opt.Password, opt.TLSConfig
			first = false
		}
	}
	if len(co.Addrs) == 0 {
		return redisTarget{}, errors.New("no cluster node given")
	}
	return redisTarget{cluster: co}, nil
}

// parseNode parses one redis:// or rediss:// URL, or a bare host:port.
func parseNode(s string) (*redis.Options, error) {
	if strings.Contains(s, "://") {
		opt, err := redis.ParseURL(s)
		if err != nil {
			// url.Error repeats the URL, password included.
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			return nil, fmt.Errorf("%q: %w", redactURL(s), err)
		}
		return opt, nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil || port == "" {
		return nil, fmt.Errorf("%q: want redis://host:port, rediss://host:port or host:port", s)
	}
	return &redis.Options{Addr: net.JoinHostPort(host, port)}, nil
}

// redactURL hides a password in a URL for messages.
func redactURL(s string) string {
	i := strings.Index(s, "://")
	if i < 0 {
		return s
	}
	rest := s[i+3:]
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return s
	}
	return s[:i+3] + "***@" + rest[at+1:]
}

// defaultPoolSize is the Redis connections per node unless the URL sets
// pool_size: a busy instance serves many concurrent requests, each needing
// a connection for its script call (go-redis's own default is 10 per CPU).
const defaultPoolSize = 64

// newClient returns the go-redis client of t.
// Context deadlines bound every command (ContextTimeoutEnabled): a caller
// whose deadline passes while Redis does not answer (a network that drops
// packets) is answered then, not after go-redis' own read timeout.
func (t redisTarget) newClient() redis.UniversalClient {
	if t.cluster != nil {
		if t.cluster.PoolSize == 0 {
			t.cluster.PoolSize = defaultPoolSize
		}
		t.cluster.ContextTimeoutEnabled = true
		return redis.NewClusterClient(t.cluster)
	}
	if t.single.PoolSize == 0 {
		t.single.PoolSize = defaultPoolSize
	}
	t.single.ContextTimeoutEnabled = true
	return redis.NewClient(t.single)
}

// describe names the target for logs, without secrets.
func (t redisTarget) describe() string {
	if t.cluster != nil {
		return "cluster " + strings.Join(t.cluster.Addrs, ",")
	}
	return t.single.Addr
}

// poolCollector exports a go-redis client's connection pool stats.
type poolCollector struct {
	client   redis.UniversalClient
	hits     *prometheus.Desc
	misses   *prometheus.Desc
	timeouts *prometheus.Desc
	conns    *prometheus.Desc
}

func newPoolCollector(c redis.UniversalClient) *poolCollector {
	return &poolCollector{
		client:   c,
		hits:     prometheus.NewDesc("semaphored_redis_pool_hits_total", "Times a free connection was found in the Redis pool.", nil, nil),
		misses:   prometheus.NewDesc("semaphored_redis_pool_misses_total", "Times no free connection was found in the Redis pool.", nil, nil),
		timeouts: prometheus.NewDesc("semaphored_redis_pool_timeouts_total", "Times waiting for a Redis pool connection timed out.", nil, nil),
		conns:    prometheus.NewDesc("semaphored_redis_pool_connections", "Redis pool connections by state (total, idle, stale: removed as stale since start).", []string{"state"}, nil),
	}
}

func (p *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- p.hits
	ch <- p.misses
	ch <- p.timeouts
	ch <- p.conns
}

func (p *poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := p.client.PoolStats()
	if s == nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(p.hits, prometheus.CounterValue, float64(s.Hits))
	ch <- prometheus.MustNewConstMetric(p.misses, prometheus.CounterValue, float64(s.Misses))
	ch <- prometheus.MustNewConstMetric(p.timeouts, prometheus.CounterValue, float64(s.Timeouts))
	ch <- prometheus.MustNewConstMetric(p.conns, prometheus.GaugeValue, float64(s.TotalConns), "total")
	ch <- prometheus.MustNewConstMetric(p.conns, prometheus.GaugeValue, float64(s.IdleConns), "idle")
	ch <- prometheus.MustNewConstMetric(p.conns, prometheus.GaugeValue, float64(s.StaleConns), "stale")
}

// redisLogger routes go-redis' internal messages (pool dial failures, ...)
// to slog. go-redis has only a process-wide logger; run sets it when Redis
// is used.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, fmt.Sprintf(format, v...))
}
