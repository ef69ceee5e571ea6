package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/sdk"
)

// The console tests drive GET /console/ in headless Chromium (Debian's
// chromium package; scripts/test.sh installs it) against a real semaphored,
// on the memory store and on Redis. Every step acts through the page and
// checks the result through the API, or acts through the API and waits for
// the page to show it without a reload.
//
// SEMAPHORED_CONSOLE_SCREENSHOTS=dir also writes the screenshots of the
// README (desktop and phone widths) into dir.

// chromiumPath finds the browser: $CHROMIUM, else chromium on the PATH.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("no Chromium found: install Debian's chromium package (scripts/test.sh does) or set CHROMIUM")
	return ""
}

// page is one browser tab on the console, with what its console reported.
type page struct {
	t    *testing.T
	ctx  context.Context
	base string

	mu       sync.Mutex
	problems []string // uncaught exceptions, console.error calls, CSP violations
}

func newPage(t *testing.T, base string) *page {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.NoSandbox, // root in CI
		chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	done := make(chan struct{})
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
		<-done
	})
	p := &page{t: t, ctx: ctx, base: base}
	// Start the browser, then listen to the tab's console before the app loads.
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate("about:blank")))
	messages := chromedp.Console(ctx)
	go func() {
		defer close(done)
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.IsException() || (m.Type == chromedp.ConsoleError && (m.Source == "" || m.Source == "security")) {
				p.mu.Lock()
				p.problems = append(p.problems, fmt.Sprintf("%s (%s:%d)", m.String(), m.URL, m.Line))
				p.mu.Unlock()
			}
		}
	}()
	return p
}

// do runs actions, each bounded.
func (p *page) do(actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 20*time.Second)
	defer cancel()
	require.NoError(p.t, chromedp.Do(ctx, actions...))
}

// waitFor polls a JavaScript predicate until it is true (at most 10 s: the
// page refreshes every second).
func (p *page) waitFor(what, expr string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 15*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(10*time.Second), chromedp.WithPollingInterval(50*time.Millisecond))); err != nil {
		body, _ := chromedp.Run(context.WithoutCancel(p.ctx), chromedp.Evaluate[string](`document.body.innerText`))
		p.t.Fatalf("waiting for %s: %v\npage text:\n%s", what, err, body)
	}
}

// text is the text of the first element sel matches, "" when none does.
func (p *page) text(sel string) string {
	p.t.Helper()
	s, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](fmt.Sprintf(`document.querySelector(%q)?.textContent ?? ""`, sel)))
	require.NoError(p.t, err)
	return s
}

// exists says whether sel matches a displayed element.
func (p *page) exists(sel string) bool {
	p.t.Helper()
	ok, err := chromedp.Run(p.ctx, chromedp.Evaluate[bool](fmt.Sprintf(`(() => { const e = document.querySelector(%q); return !!e && e.offsetParent !== null })()`, sel)))
	require.NoError(p.t, err)
	return ok
}

// click clicks the first element sel matches, once visible.
func (p *page) click(sel string) {
	p.t.Helper()
	p.do(chromedp.Click(chromedp.CSS(sel)))
}

// confirm clicks a button that asks for a second click.
func (p *page) confirm(sel string) {
	p.t.Helper()
	p.click(sel)
	p.waitFor(sel+" armed", fmt.Sprintf(`document.querySelector(%q)?.dataset.armed === "true"`, sel))
	p.click(sel)
}

// submit submits a form as a user does, firing its submit event (unlike
// chromedp.Submit, which calls form.submit()).
func submit(sel string) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`document.querySelector(%q).requestSubmit()`, sel))
}

func (p *page) signIn(key string) {
	p.t.Helper()
	p.do(
		chromedp.Navigate(p.base+"/console/"),
		chromedp.WaitVisible(chromedp.CSS("#api-key")),
		chromedp.SendKeys(chromedp.CSS("#api-key"), key),
		submit("#login"),
		chromedp.WaitVisible(chromedp.CSS("#who")),
	)
}

func (p *page) signOut() {
	p.t.Helper()
	p.click("#sign-out")
	p.do(chromedp.WaitVisible(chromedp.CSS("#api-key")))
}

func (p *page) goTo(hash string) {
	p.t.Helper()
	p.do(chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`location.hash = %q`, hash)))
}

// noProblems requires that the page reported no problem and fetched
// nothing from another origin.
func (p *page) noProblems() {
	p.t.Helper()
	foreign, err := chromedp.Run(p.ctx, chromedp.Evaluate[[]string](
		`performance.getEntriesByType("resource").map((e) => e.name).filter((u) => !u.startsWith(location.origin + "/"))`))
	require.NoError(p.t, err)
	require.Empty(p.t, foreign, "requests to another origin")
	p.mu.Lock()
	defer p.mu.Unlock()
	require.Empty(p.t, p.problems, "uncaught exceptions or console errors in the page")
}

func TestConsole(t *testing.T) {
	for _, storeName := range []string{"memory", "redis"} {
		t.Run(storeName, func(t *testing.T) {
			// --webhook-allow-private: a webhook to a closed loopback port
			// fails at once (the dead-letter step)
			args := []string{"--admin-key", adminKey, "--webhook-allow-private"}
			if storeName == "redis" {
				args = append(args, "--redis-url", testredis.URL(t), "--redis-prefix", "console-"+strings.TrimSuffix(testredis.Prefix(t), ":"))
			}
			inst := start(t, "console-"+storeName, args)
			testConsole(t, inst, storeName == "memory" && os.Getenv("SEMAPHORED_CONSOLE_SCREENSHOTS") != "")
		})
	}
}

func testConsole(t *testing.T, inst *instance, screenshots bool) {
	ctx := t.Context()
	op := inst.admin // the bootstrap operator key of the default tenant
	_, err := op.PutSemaphore(ctx, "orders", sdk.SemaphoreConfig{MaxValue: 3, Routes: json.RawMessage(`[{"type":"websocket","channel":"gpu"}]`)})
	require.NoError(t, err)
	p := newPage(t, inst.base)

	step := func(name string, f func(t *testing.T)) {
		if t.Failed() {
			return // a later step needs the earlier ones
		}
		parent := t
		t.Run(name, func(t *testing.T) {
			p.t = t
			defer func() { p.t = parent }()
			f(t)
		})
	}

	step("sign in", func(t *testing.T) {
		p.t = t
		// A refused key stays on the sign-in form with a readable message.
		p.do(
			chromedp.Navigate(p.base+"/console/"),
			chromedp.WaitVisible(chromedp.CSS("#api-key")),
			chromedp.SendKeys(chromedp.CSS("#api-key"), "sk_not_a_key_0123456789abcdef0123456789abcd"),
			submit("#login"),
		)
		p.waitFor("the refusal", `!document.querySelector("#login-error").hidden`)
		require.Contains(t, p.text("#login-error"), "This key was refused")

		p.signIn(adminKey)
		require.Contains(t, p.text("#who"), "operator · default")
		stored, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](`sessionStorage.getItem("semaphored.console.key") + "|" + localStorage.length`))
		require.NoError(t, err)
		require.Equal(t, adminKey+"|0", stored, "the key is in sessionStorage, nothing in localStorage")
		for _, nav := range []string{"#nav-semaphores", "#nav-keys", "#nav-tenants"} {
			require.True(t, p.exists(nav), nav)
		}
		p.waitFor("the orders row", `document.querySelector('tr.semaphore[data-name="orders"] .usage-text')?.textContent === "0 / 3"`)
	})

	step("usage changes live after an acquire elsewhere", func(t *testing.T) {
		// A marker that a reload would lose.
		p.do(chromedp.Evaluate[chromedp.Void](`window.__noReload = true`))
		began := time.Now()
		lease, err := op.Acquire(ctx, "orders", sdk.AcquireOptions{Weight: 2, Channel: "gpu", TTL: time.Minute})
		require.NoError(t, err)
		p.waitFor("2 / 3 in use", `document.querySelector('tr.semaphore[data-name="orders"] .usage-text')?.textContent === "2 / 3"`)
		t.Logf("the page showed the acquire %v after it was made", time.Since(began).Round(10*time.Millisecond))
		p.waitFor("the gpu channel row", `document.querySelector('tr.channel[data-name="orders"][data-channel="gpu"] .usage-text')?.textContent === "2 / 3"`)
		noReload, err := chromedp.Run(p.ctx, chromedp.Evaluate[bool](`window.__noReload === true`))
		require.NoError(t, err)
		require.True(t, noReload, "the page was not reloaded")

		_, err = op.Release(ctx, lease.ID)
		require.NoError(t, err)
		p.waitFor("0 / 3 again", `document.querySelector('tr.semaphore[data-name="orders"] .usage-text')?.textContent === "0 / 3"`)
	})

	step("suspend, resume and maxValue", func(t *testing.T) {
		p.click(`tr.semaphore[data-name="orders"] a`)
		p.waitFor("the orders screen", `document.querySelector("#usage-text")?.textContent === "0 / 3 in use"`)
		p.click("#suspend")
		p.waitFor("suspended", `document.querySelector("#semaphore-state")?.textContent === "suspended"`)
		sem, err := op.GetSemaphore(ctx, "orders")
		require.NoError(t, err)
		require.True(t, sem.Suspended)
		p.click("#resume")
		p.waitFor("active", `document.querySelector("#semaphore-state")?.textContent === "active"`)
		sem, err = op.GetSemaphore(ctx, "orders")
		require.NoError(t, err)
		require.False(t, sem.Suspended)

		// A suspend made elsewhere shows too.
		_, err = op.Suspend(ctx, "orders")
		require.NoError(t, err)
		p.waitFor("suspended from elsewhere", `document.querySelector("#semaphore-state")?.textContent === "suspended"`)
		_, err = op.Resume(ctx, "orders")
		require.NoError(t, err)

		// A config change made elsewhere just before the save is kept: the
		// save starts from the config as it is then, not as last shown.
		_, err = op.PutSemaphore(ctx, "orders", sdk.SemaphoreConfig{MaxValue: 3, MaxAttempts: 7, Routes: json.RawMessage(`[{"type":"websocket","channel":"gpu"}]`)})
		require.NoError(t, err)
		p.do(
			chromedp.SetValue(chromedp.CSS("#max-value"), "5"),
			submit("#max-value-form"),
		)
		p.waitFor("maxValue 5", `document.querySelector("#usage-text")?.textContent === "0 / 5 in use"`)
		sem, err = op.GetSemaphore(ctx, "orders")
		require.NoError(t, err)
		require.EqualValues(t, 5, sem.MaxValue)
		require.Equal(t, 7, sem.MaxAttempts, "the change made elsewhere is kept")
		require.JSONEq(t, `[{"type":"websocket","channel":"gpu"}]`, string(sem.Routes), "the rest of the config is kept")

		// Bad input is refused by the form and changes nothing, also after
		// the next refresh (the live line shows its time).
		p.do(chromedp.SetValue(chromedp.CSS("#max-value"), "0"))
		valid, err := chromedp.Run(p.ctx, chromedp.Evaluate[bool](`document.querySelector("#max-value").validity.valid`))
		require.NoError(t, err)
		require.False(t, valid, "0 is not a valid maxValue")
		before := p.text("#live")
		p.do(submit("#max-value-form"))
		p.waitFor("a refresh after the submit", fmt.Sprintf(`document.querySelector("#live").textContent !== %q`, before))
		sem, err = op.GetSemaphore(ctx, "orders")
		require.NoError(t, err)
		require.EqualValues(t, 5, sem.MaxValue)
	})

	step("release a lease", func(t *testing.T) {
		lease, err := op.Acquire(ctx, "orders", sdk.AcquireOptions{TTL: time.Minute})
		require.NoError(t, err)
		row := fmt.Sprintf(`#leases tr[data-id=%q]`, lease.ID)
		p.waitFor("the lease", fmt.Sprintf(`!!document.querySelector(%q)`, row))
		p.confirm(row + " button")
		p.waitFor("the lease gone", fmt.Sprintf(`!document.querySelector(%q)`, row))
		leases, err := op.ListLeases(ctx, "orders", sdk.ListLeasesOptions{})
		require.NoError(t, err)
		require.Empty(t, leases.Leases)
	})

	step("requeue a dead-lettered job, cancel one, purge", func(t *testing.T) {
		// A webhook on a closed port is the one route: the job ends in error.
		sem, err := op.GetSemaphore(ctx, "orders")
		require.NoError(t, err)
		cfg := sem.SemaphoreConfig
		cfg.Routes = json.RawMessage(`[{"type":"https","url":"http://127.0.0.1:1/hook","attempts":1}]`)
		cfg.MaxAttempts = 1 // its first failure is its last
		_, err = op.PutSemaphore(ctx, "orders", cfg)
		require.NoError(t, err)
		job, err := op.Enqueue(ctx, "orders", map[string]any{"n": 1}, sdk.EnqueueOptions{Channel: "gpu"})
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			j, err := op.GetJob(ctx, job.ID)
			return err == nil && j.Status == sdk.JobError
		}, 10*time.Second, 20*time.Millisecond)
		_, err = op.Suspend(ctx, "orders") // so that the requeued job stays scheduled
		require.NoError(t, err)

		p.do(chromedp.SetValue(chromedp.CSS("#job-status"), "error"),
			chromedp.Evaluate[chromedp.Void](`document.querySelector("#job-status").dispatchEvent(new Event("change"))`))
		row := fmt.Sprintf(`#jobs tr[data-id=%q]`, job.ID)
		p.waitFor("the failed job", fmt.Sprintf(`document.querySelector(%q)?.dataset.status === "error"`, row))
		require.NotEmpty(t, p.text(row+" .error-text"), "its error is shown")
		p.click(row + " button.primary") // Requeue
		require.Eventually(t, func() bool {
			j, err := op.GetJob(ctx, job.ID)
			return err == nil && j.Status == sdk.JobScheduled
		}, 10*time.Second, 20*time.Millisecond)
		p.waitFor("the job gone from the error filter", fmt.Sprintf(`!document.querySelector(%q)`, row))

		p.do(chromedp.SetValue(chromedp.CSS("#job-status"), "scheduled"),
			chromedp.Evaluate[chromedp.Void](`document.querySelector("#job-status").dispatchEvent(new Event("change"))`))
		p.waitFor("the requeued job", fmt.Sprintf(`document.querySelector(%q)?.dataset.status === "scheduled"`, row))
		p.confirm(row + " button.warn") // Cancel
		require.Eventually(t, func() bool {
			j, err := op.GetJob(ctx, job.ID)
			return err == nil && j.Status == sdk.JobCancelled
		}, 10*time.Second, 20*time.Millisecond)

		for i := range 3 {
			opts := sdk.EnqueueOptions{}
			if i == 0 {
				opts.Delay = 2 * time.Hour // shown with when it runs
			}
			_, err := op.Enqueue(ctx, "orders", map[string]any{"n": i}, opts)
			require.NoError(t, err)
		}
		p.waitFor("3 scheduled jobs", `document.querySelectorAll("#jobs tr").length === 3`)
		p.waitFor("the delayed job's time", `[...document.querySelectorAll("#jobs tr .run-at")].some((e) => e.textContent.startsWith("in 1h 59m") || e.textContent.startsWith("in 2h"))`)
		p.confirm("#purge")
		p.waitFor("no scheduled job", `document.querySelectorAll("#jobs tr").length === 0`)
		page, err := op.ListJobs(ctx, "orders", sdk.ListJobsOptions{Status: sdk.JobScheduled})
		require.NoError(t, err)
		require.Empty(t, page.Jobs)
		_, err = op.Resume(ctx, "orders")
		require.NoError(t, err)
	})

	if screenshots {
		step("screenshots", func(t *testing.T) {
			takeScreenshots(t, p, op)
		})
	}

	var tenantAdmin, worker string
	step("keys and tenants", func(t *testing.T) {
		p.goTo("#/tenants")
		p.do(chromedp.SendKeys(chromedp.CSS("#tenant-name"), "acme"), submit("#tenant-form"))
		p.waitFor("the new admin key", `document.querySelector("#new-secret")?.textContent.startsWith("sk_")`)
		tenantAdmin = p.text("#new-secret")
		p.waitFor("acme listed", `!!document.querySelector('#tenants tr[data-id="acme"]')`)

		// The tenant's admin key works through the API.
		acme := inst.client(t, tenantAdmin)
		me, err := acme.Whoami(ctx)
		require.NoError(t, err)
		require.Equal(t, "acme", me.Tenant)
		require.Equal(t, sdk.RoleAdmin, me.Role)
		_, err = acme.PutSemaphore(ctx, "acme-jobs", sdk.SemaphoreConfig{MaxValue: 2})
		require.NoError(t, err)

		// Sign in as it: no tenants screen; create a worker key, revoke another.
		p.signOut()
		p.signIn(tenantAdmin)
		require.True(t, p.exists("#nav-keys"))
		require.False(t, p.exists("#nav-tenants"), "an admin key has no tenants screen")
		p.goTo("#/keys")
		p.do(chromedp.SendKeys(chromedp.CSS("#key-name"), "workers"), submit("#key-form"))
		p.waitFor("the worker secret", `document.querySelector("#new-secret")?.textContent.startsWith("sk_")`)
		worker = p.text("#new-secret")
		doomed, err := acme.CreateKey(ctx, sdk.RoleWorker, "doomed")
		require.NoError(t, err)
		row := fmt.Sprintf(`#keys tr[data-id=%q]`, doomed.ID)
		p.waitFor("the doomed key", fmt.Sprintf(`!!document.querySelector(%q)`, row))
		p.confirm(row + " button")
		p.waitFor("the doomed key gone", fmt.Sprintf(`!document.querySelector(%q)`, row))
		_, err = inst.client(t, doomed.Secret).Whoami(ctx)
		require.True(t, sdk.IsUnauthorized(err), "revoked: %v", err)

		// A 403 reads as a sentence: an admin of the default tenant may not
		// revoke the operator key.
		p.signOut()
		dadmin, err := op.CreateKey(ctx, sdk.RoleAdmin, "default admin")
		require.NoError(t, err)
		p.signIn(dadmin.Secret)
		p.goTo("#/keys")
		keys, err := op.ListKeys(ctx)
		require.NoError(t, err)
		var opID string
		for _, k := range keys {
			if k.Role == sdk.RoleOperator {
				opID = k.ID
			}
		}
		require.NotEmpty(t, opID)
		p.confirm(fmt.Sprintf(`#keys tr[data-id=%q] button`, opID))
		p.waitFor("the 403 notice", `!!document.querySelector(".notices .notice.error")`)
		require.Contains(t, p.text(".notices .notice.error"), "Not allowed with this key")
		_, err = op.Whoami(ctx)
		require.NoError(t, err, "the operator key still works")
	})

	step("a worker key sees no admin screens", func(t *testing.T) {
		_, err := inst.client(t, tenantAdmin).Enqueue(ctx, "acme-jobs", map[string]any{"x": 1}, sdk.EnqueueOptions{})
		require.NoError(t, err)
		p.signOut()
		p.signIn(worker)
		require.Contains(t, p.text("#who"), "worker · acme")
		for _, nav := range []string{"#nav-semaphores", "#nav-keys", "#nav-tenants"} {
			require.False(t, p.exists(nav), nav)
		}
		for _, hash := range []string{"#/semaphores", "#/keys", "#/tenants"} {
			p.goTo(hash)
			p.waitFor(hash+" denied", `!!document.querySelector("#denied")`)
			require.False(t, p.exists("table"), "%s: no data", hash)
		}
		// A malformed address is a readable "not found", not an exception
		// (noProblems checks at the end).
		p.goTo("#/semaphores/%E0%A4%A/x")
		p.waitFor("not found", `document.querySelector("#message")?.textContent.includes("There is no screen")`)
		// It may look at a semaphore's jobs, not at its usage or settings.
		p.goTo("#/")
		p.do(chromedp.SendKeys(chromedp.CSS("#lookup-name"), "acme-jobs"), submit("#lookup-form"))
		p.waitFor("its job", `document.querySelectorAll("#jobs tr").length === 1`)
		require.False(t, p.exists("#usage-text"))
		require.False(t, p.exists("#suspend"))
		require.False(t, p.exists("#max-value"))
		require.False(t, p.exists(".view-error"), "no error shown: %s", p.text(".view-error"))
	})

	step("a revoked key is signed out", func(t *testing.T) {
		acme := inst.client(t, tenantAdmin)
		me, err := inst.client(t, worker).Whoami(ctx)
		require.NoError(t, err)
		_, err = acme.DeleteKey(ctx, me.ID)
		require.NoError(t, err)
		p.waitFor("the sign-in form", `!!document.querySelector("#api-key")`)
		require.Contains(t, p.text("#login-error"), "refused")
		stored, err := chromedp.Run(p.ctx, chromedp.Evaluate[bool](`sessionStorage.getItem("semaphored.console.key") === null`))
		require.NoError(t, err)
		require.True(t, stored, "the key is forgotten")
	})

	p.t = t
	p.noProblems()
}

// takeScreenshots fills the default tenant with a few busy semaphores and
// writes the list and one semaphore at a desktop's and a phone's width.
func takeScreenshots(t *testing.T, p *page, op *sdk.Client) {
	ctx := t.Context()
	dir := os.Getenv("SEMAPHORED_CONSOLE_SCREENSHOTS")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	put := func(name string, cfg sdk.SemaphoreConfig) {
		_, err := op.PutSemaphore(ctx, name, cfg)
		require.NoError(t, err)
	}
	put("openai-api", sdk.SemaphoreConfig{MaxValue: 12, Rate: &sdk.RateLimit{Limit: 500, Period: time.Minute}})
	put("render-farm", sdk.SemaphoreConfig{MaxValue: 4})
	put("billing-db", sdk.SemaphoreConfig{MaxValue: 20})
	for ch, n := range map[string]int{"gpt-4o": 6, "embeddings": 3} {
		for range n {
			_, err := op.Acquire(ctx, "openai-api", sdk.AcquireOptions{Channel: ch, TTL: 10 * time.Minute})
			require.NoError(t, err)
		}
	}
	for range 4 {
		_, err := op.Acquire(ctx, "render-farm", sdk.AcquireOptions{TTL: 10 * time.Minute})
		require.NoError(t, err)
	}
	for range 7 {
		_, err := op.Acquire(ctx, "billing-db", sdk.AcquireOptions{Weight: 1, TTL: 10 * time.Minute})
		require.NoError(t, err)
	}
	_, err := op.Suspend(ctx, "render-farm")
	require.NoError(t, err)
	for i := range 12 {
		_, err := op.Enqueue(ctx, "render-farm", map[string]any{"frame": i}, sdk.EnqueueOptions{})
		require.NoError(t, err)
	}

	// shoot writes a PNG of the whole page, or of the first screen only.
	shoot := func(name string, width, height int64, mobile, whole bool) {
		opts := []chromedp.EmulateViewportOption{chromedp.EmulateScale(1)}
		if mobile {
			opts = []chromedp.EmulateViewportOption{chromedp.EmulateScale(2), chromedp.EmulateMobile}
		}
		p.do(chromedp.EmulateViewport(width, height, opts...), chromedp.Sleep(300*time.Millisecond))
		shot := chromedp.CaptureScreenshot()
		if whole {
			shot = chromedp.FullScreenshot(100)
		}
		png, err := chromedp.Run(p.ctx, shot)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), png, 0o644))
	}
	p.goTo("#/semaphores")
	p.waitFor("the busy list", `document.querySelector('tr.semaphore[data-name="render-farm"] .usage-text')?.textContent === "4 / 4"`)
	shoot("console-desktop.png", 1280, 720, false, true)
	shoot("console-phone.png", 390, 844, true, true)
	p.goTo("#/semaphores/openai-api")
	p.waitFor("openai-api", `document.querySelector("#usage-text")?.textContent === "9 / 12 in use"`)
	shoot("console-semaphore-desktop.png", 1280, 900, false, true)
	shoot("console-semaphore-phone.png", 390, 844, true, false)
	p.do(chromedp.EmulateReset())
}

// A key over its rate limit reads "Too many requests" and the console
// goes on, waiting as long as Retry-After says, once the window allows.
func TestConsole_RateLimited(t *testing.T) {
	// One request every 4 s, burst 1: long enough that the browser's
	// sign-in always comes before the bucket refills.
	inst := start(t, "console-limited", []string{"--admin-key", adminKey, "--key-rate-limit", "0.25"})
	acme, err := inst.admin.CreateTenant(t.Context(), "acme")
	require.NoError(t, err)
	admin := inst.client(t, acme.Key.Secret)
	_, err = admin.PutSemaphore(t.Context(), "orders", sdk.SemaphoreConfig{MaxValue: 2})
	require.NoError(t, err)
	p := newPage(t, inst.base)
	p.do(
		chromedp.Navigate(p.base+"/console/"),
		chromedp.WaitVisible(chromedp.CSS("#api-key")),
		chromedp.SendKeys(chromedp.CSS("#api-key"), acme.Key.Secret),
	)
	// Empty the key's bucket however long the browser took to start: this
	// call takes the one token, or is refused because there is none.
	if _, err := admin.Whoami(t.Context()); err != nil {
		require.Equal(t, http.StatusTooManyRequests, sdk.StatusCode(err), "%v", err)
	}
	p.do(submit("#login"))
	// whoami is refused: sign-in says so, waits for Retry-After and tries again.
	p.waitFor("sign-in waiting out the 429", `document.querySelector("#login-error")?.textContent.startsWith("Too many requests")`)
	p.do(chromedp.WaitVisible(chromedp.CSS("#who")))
	// whoami took the token again, so the list is refused, then shown.
	p.waitFor("the 429 shown", `document.querySelector(".view-error")?.textContent.startsWith("Too many requests")`)
	p.waitFor("the list once allowed", `document.querySelector('tr.semaphore[data-name="orders"] .usage-text')?.textContent === "0 / 2"`)
	p.noProblems()
}
