package semaphore

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/semaphored/semaphored/store"
)

const namespace = "semaphored"

// Bounds of the scrape-time collector: how many semaphores of one tenant
// (and in all) it reports, and how long it may take.
const (
	collectPerTenant = 1000
	collectTotal     = 10000
	collectTimeout   = 5 * time.Second
)

// Results of acquire_total.
const (
	resultGranted        = "granted"
	resultNoPermit       = "no_permit"
	resultWeightTooLarge = "weight_too_large"
	resultError          = "error"
)

// metrics are the domain metrics. Labels are bounded: never a lease id.
type metrics struct {
	acquireTotal    *prometheus.CounterVec
	acquireResults  [len(acquireResultNames)]prometheus.Counter // acquireTotal's children, by index
	acquireDuration prometheus.Histogram
	leasesExpired   prometheus.Counter
	rateLimited     prometheus.Counter

	jobsEnqueued     prometheus.Counter
	jobsFinished     *prometheus.CounterVec
	deliveryAttempts *prometheus.CounterVec
	deliveryDuration *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer, s *Service) (*metrics, error) {
	m := &metrics{
		acquireTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "acquire_total",
			Help:      "Acquire calls that reached the store, by result (granted, no_permit, weight_too_large, error).",
		}, []string{"result"}),
		acquireDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "acquire_duration_seconds",
			Help:      "Duration of acquire calls, waiting included.",
			Buckets:   []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		leasesExpired: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "leases_expired_total",
			Help:      "Leases dropped by the sweeper because they expired before release.",
		}),
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "rate_limited_total",
			Help: "Acquires without wait refused because the semaphore's rate window was full while a permit was free " +
				"(409 no_permit with Retry-After; also counted in acquire_total as no_permit). " +
				"Waiting acquires and queued jobs that the rate delays are not counted.",
		}),
		jobsEnqueued: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "jobs_enqueued_total",
			Help:      "Jobs accepted (202), idempotent repeats not counted.",
		}),
		jobsFinished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "jobs_finished_total",
			Help:      "Jobs that reached a terminal state seen by this instance, by status (done, error, timeout, cancelled).",
		}, []string{"status"}),
		deliveryAttempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "delivery_attempts_total",
			Help:      "Offers of a job to a route, by route type (websocket, https, semaphore) and result (accepted, failed).",
		}, []string{"route", "result"}),
		deliveryDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "delivery_duration_seconds",
			Help:      "Time to offer a job to one route, retries included, by route type.",
			Buckets:   []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"route"}),
	}
	for i, r := range acquireResultNames {
		m.acquireResults[i] = m.acquireTotal.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{
		m.acquireTotal, m.acquireDuration, m.leasesExpired, m.rateLimited,
		m.jobsEnqueued, m.jobsFinished, m.deliveryAttempts, m.deliveryDuration, newStateCollector(s),
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Indexes of metrics.acquireResults.
const (
	acquireGranted = iota
	acquireNoPermit
	acquireWeightTooLarge
	acquireError
)

// acquireResultNames are the results of acquire_total, indexed as
// metrics.acquireResults.
var acquireResultNames = [...]string{
	acquireGranted:        resultGranted,
	acquireNoPermit:       resultNoPermit,
	acquireWeightTooLarge: resultWeightTooLarge,
	acquireError:          resultError,
}

func (m *metrics) observeAcquire(start time.Time, err error) {
	m.acquireDuration.Observe(time.Since(start).Seconds())
	r := acquireGranted
	switch {
	case err == nil:
	case errors.Is(err, store.ErrNoPermit):
		r = acquireNoPermit
	case errors.Is(err, store.ErrWeightTooLarge):
		r = acquireWeightTooLarge
	default:
		r = acquireError
	}
	m.acquireResults[r].Inc()
}

// stateCollector lists semaphores at scrape time and exports their usage.
type stateCollector struct {
	s                   *Service
	inUse, max, waiters *prometheus.Desc
	queued, inflight    *prometheus.Desc
	rateUsed, rateLimit *prometheus.Desc
}

func newStateCollector(s *Service) *stateCollector {
	labels := []string{"tenant", "semaphore"}
	return &stateCollector{
		s:        s,
		inUse:    prometheus.NewDesc(namespace+"_permits_in_use", "Sum of the weights of live leases.", labels, nil),
		max:      prometheus.NewDesc(namespace+"_permits_max", "maxValue of the semaphore (per channel when scoped by channel).", labels, nil),
		waiters:  prometheus.NewDesc(namespace+"_waiters", "Acquire calls waiting for a permit.", labels, nil),
		queued:   prometheus.NewDesc(namespace+"_jobs_queued", "Scheduled jobs waiting for a permit (queue depth).", labels, nil),
		inflight: prometheus.NewDesc(namespace+"_jobs_inflight", "Jobs holding a permit.", labels, nil),
		rateUsed: prometheus.NewDesc(namespace+"_rate_used",
			"Weight units granted in the current rate window (with maxValueScope channel: the default channel's); semaphores with a rate only.", labels, nil),
		rateLimit: prometheus.NewDesc(namespace+"_rate_limit",
			"rate.limit of the semaphore (per channel when scoped by channel); semaphores with a rate only.", labels, nil),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.inUse
	ch <- c.max
	ch <- c.waiters
	ch <- c.queued
	ch <- c.inflight
	ch <- c.rateUsed
	ch <- c.rateLimit
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), collectTimeout)
	defer cancel()
	st := c.s.store
	tenants, err := st.ListTenants(ctx)
	if err != nil {
		c.s.log.Warn("metrics: list tenants", "err", err)
		return
	}
	total := 0
	for _, t := range tenants {
		cursor, n := "", 0
		for n < collectPerTenant && total < collectTotal {
			sems, next, err := st.ListSemaphores(ctx, store.ListParams{Tenant: t.ID, Cursor: cursor, Limit: min(MaxListLimit, collectPerTenant-n)})
			if err != nil {
				c.s.log.Warn("metrics: list semaphores", "tenant", t.ID, "err", err)
				break
			}
			for _, sem := range sems {
				if n >= collectPerTenant || total >= collectTotal {
					break
				}
				n++
				total++
				state, err := st.State(ctx, t.ID, sem.Name)
				if err != nil {
					continue // deleted meanwhile, or the store is failing
				}
				ch <- prometheus.MustNewConstMetric(c.inUse, prometheus.GaugeValue, float64(state.InUse), t.ID, sem.Name)
				ch <- prometheus.MustNewConstMetric(c.max, prometheus.GaugeValue, float64(sem.Config.MaxValue), t.ID, sem.Name)
				ch <- prometheus.MustNewConstMetric(c.waiters, prometheus.GaugeValue, float64(state.Waiting), t.ID, sem.Name)
				ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(state.Queued), t.ID, sem.Name)
				ch <- prometheus.MustNewConstMetric(c.inflight, prometheus.GaugeValue, float64(state.Inflight), t.ID, sem.Name)
				if r := sem.Config.Rate; r != nil {
					ch <- prometheus.MustNewConstMetric(c.rateUsed, prometheus.GaugeValue, float64(state.RateUsed), t.ID, sem.Name)
					ch <- prometheus.MustNewConstMetric(c.rateLimit, prometheus.GaugeValue, float64(r.Limit), t.ID, sem.Name)
				}
			}
			if next == "" || len(sems) == 0 {
				break
			}
			cursor = next
		}
	}
}
