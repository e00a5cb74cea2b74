// Package sim simulates a fleet of services, each with its own kvsecrets
// Provider, sharing one Key Vault that throttles as Key Vault does (4,000
// GETs per 10 seconds per vault). The vault is kvtest's in-process vault and
// the clock is testing/synctest's, so hours of fleet life run in seconds
// while every request goes through the real SDK pipeline: the challenge,
// tokens, retries on 429, JSON.
//
// Run it with
//
//	go test ./sim -run TestFleet -v -fleet.n 1000  # 1,000 instances × 20 secrets
//	go test ./sim -run TestFleet -v                # 10 × 20, the limit scaled to it
package sim

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/kvsecrets/kvsecrets/kvtest"
)

// Push is how news of a new version reaches the fleet.
type Push string

// The ways news of a new version reaches the fleet.
const (
	NoPush        Push = ""                   // each instance's refresh schedule alone
	Subscriptions Push = "per instance"       // an Event Grid subscription per instance (its own webhook URL)
	Balancer      Push = "balancer"           // one subscription, to a URL behind a load balancer: each delivery reaches one instance
	BalancerFan   Push = "balancer + fan-out" // as Balancer, and the instance that learns a version tells every other (FanOut)
)

// Config describes one simulation.
type Config struct {
	Instances int           // Providers in the fleet
	Secrets   int           // secrets each reads
	TTL       time.Duration // Options.TTL
	Jitter    bool          // false sets Options.DisableJitter
	Push      Push          // how news of a new version reaches the fleet
	Spread    time.Duration // Options.EventSpread (with BalancerFan, the fan-out chooses its own)
	Outage    time.Duration // a full vault outage (every request 503) after the rotation phase
	Limit     int           // throttle: requests per 10 s (4,000 for Key Vault)
	NoPacing  bool          // Options.DisablePacing: every instance reads at full concurrency
	Shared    bool          // Options.Limiter: the fleet shares one budget of Limit per 10 s (redisfanout.Limiter's rule, in process)
	ColdOnly  bool          // stop after the cold start
}

// Floor is the shortest possible cold start: every instance's every secret
// read once at the vault's rate.
func (c Config) Floor() time.Duration {
	return time.Duration(float64(c.Instances*c.Secrets) / (float64(c.Limit) / 10) * float64(time.Second))
}

// Result is what the simulation measured.
type Result struct {
	Config
	OneConverge     time.Duration // one secret rotated: until every instance served its new version
	OneRequests     int64         // requests reaching the vault in that time
	OnePeakPer10s   int64         // most requests in any 10-second window of it
	FanOutMessages  int64         // messages the fan-out published (BalancerFan)
	ColdStart       time.Duration // until every instance had every secret
	ColdErrors      int           // Preload failures seen by the instances during the cold start
	ColdRequests    int64         // requests during the cold start, challenges included
	ColdPeakPer10s  int64         // most requests in any 10-second window of the cold start
	Converge        time.Duration // from the rotation until every instance served every new version
	CallerErrors    int           // errors returned to callers of cached secrets (rotation, outage, recovery)
	OutageErrors    int           // of which during the outage
	Requests        int64         // requests reaching the vault, challenges included
	Throttled       int64         // of which answered 429
	ColdThrottled   int64         // 429s during the cold start
	RotateThrottled int64         // 429s from the rotation until convergence
	PeakPer10s      int64         // most requests in any 10-second window
	SteadyPerSecret float64       // background reads per secret per TTL in quiet hours
	Elapsed         time.Duration // fake time simulated
}

// Run simulates cfg. It must run inside a testing/synctest bubble.
func Run(cfg Config, log io.Writer) (Result, error) {
	res := Result{Config: cfg}
	start := time.Now()
	vault, err := kvtest.NewInProcess(&kvtest.Options{VaultName: "fleet"})
	if err != nil {
		return res, err
	}
	defer vault.Close()
	names := make([]string, cfg.Secrets)
	for i := range names {
		names[i] = fmt.Sprintf("secret-%02d", i)
		if _, err := vault.SetSecret(names[i], "v1", nil); err != nil {
			return res, err
		}
	}
	vault.SetThrottle(cfg.Limit, 10*time.Second)

	// A monitor samples the vault's counter every second.
	var perSecond []int64
	var perSecondMu sync.Mutex
	stopMon := make(chan struct{})
	monDone := make(chan struct{})
	go func() {
		defer close(monDone)
		last := int64(0)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				c := vault.Counts().Total
				perSecondMu.Lock()
				perSecond = append(perSecond, c-last)
				perSecondMu.Unlock()
				last = c
			case <-stopMon:
				return
			}
		}
	}()

	var rotations atomic.Int64
	var lastRotation atomic.Int64 // unix nanos of the last OnRotate
	var oneRotations, oneLast atomic.Int64
	var onePhase atomic.Bool
	providers := make([]*kvsecrets.Provider, cfg.Instances)
	handlers := make([]http.Handler, cfg.Instances)
	// The fan-out spreads the fleet's refreshes to three quarters of the
	// vault's rate: 300 reads a second for Key Vault's 4,000 per 10 s.
	fan := &fanOut{providers: providers, published: map[string]bool{}, rate: 0.75 * float64(cfg.Limit) / 10}
	var limiter kvsecrets.Limiter
	if cfg.Shared {
		limiter = newSharedLimiter(cfg.Limit, 10*time.Second)
	}
	for i := range providers {
		p, err := kvsecrets.NewProvider(vault.URL(), vault.Credential(), &kvsecrets.Options{
			ClientOptions: vault.ClientOptions(),
			TTL:           cfg.TTL,
			DisableJitter: !cfg.Jitter,
			EventSpread:   cfg.Spread,
			DisablePacing: cfg.NoPacing,
			Limiter:       limiter,
			OnRotate: func(ev kvsecrets.RotationEvent) {
				now := time.Now().UnixNano()
				if onePhase.Load() {
					oneRotations.Add(1)
					oneLast.Store(now)
					return
				}
				rotations.Add(1)
				lastRotation.Store(now)
			},
		})
		if err != nil {
			return res, err
		}
		defer p.Close()
		providers[i] = p
		handlers[i] = p.EventGridHandler(&kvsecrets.EventGridOptions{SharedSecret: "fleet-key"})
		if cfg.Push == BalancerFan {
			p.AddOnRotate(func(ev kvsecrets.RotationEvent) { fan.publish(i, ev) })
		}
	}
	// Event Grid delivers about a second after each new version.
	switch cfg.Push {
	case Subscriptions:
		for _, h := range handlers {
			if _, err := vault.SubscribeHandler("/events?key=fleet-key", h, &kvtest.SubscriptionOptions{Delay: time.Second}); err != nil {
				return res, err
			}
		}
	case Balancer, BalancerFan:
		var next atomic.Int64
		lb := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			handlers[int(next.Add(1)-1)%len(handlers)].ServeHTTP(w, r) // round robin
		})
		if _, err := vault.SubscribeHandler("/events?key=fleet-key", lb, &kvtest.SubscriptionOptions{Delay: time.Second}); err != nil {
			return res, err
		}
	}

	// Phase 1: the whole fleet starts at once. Each instance preloads its
	// secrets with a deadline of three times the floor (the issue's
	// target: such a start-up finishes) and, as a service's start-up
	// would, tries again every 5 s until it has them all.
	var coldErrors atomic.Int64
	var wg sync.WaitGroup
	for _, p := range providers {
		wg.Go(func() {
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 3*cfg.Floor())
				err := p.Preload(ctx, names...)
				cancel()
				if err == nil {
					return
				}
				coldErrors.Add(int64(strings.Count(err.Error(), "\n") + 1))
				time.Sleep(5 * time.Second)
			}
		})
	}
	wg.Wait()
	res.ColdStart = time.Since(start)
	res.ColdErrors = int(coldErrors.Load())
	res.ColdThrottled = vault.Counts().Throttled
	res.ColdRequests = vault.Counts().Total
	time.Sleep(time.Second) // the monitor's last second of it
	perSecondMu.Lock()
	res.ColdPeakPer10s = peak(perSecond)
	perSecondMu.Unlock()
	fmt.Fprintf(log, "  cold start: %v (floor %v), %d preload failures, %d requests, %d 429s, peak %d / 10 s\n",
		res.ColdStart.Round(time.Second), cfg.Floor(), res.ColdErrors, res.ColdRequests, res.ColdThrottled, res.ColdPeakPer10s)
	if cfg.ColdOnly {
		close(stopMon)
		<-monDone
		res.Requests, res.Throttled, res.PeakPer10s = vault.Counts().Total, vault.Counts().Throttled, res.ColdPeakPer10s
		res.Elapsed = time.Since(start)
		return res, nil
	}

	// Callers read every secret of every instance every 10 s from here on.
	var callerErrors, outageErrors atomic.Int64
	var inOutage atomic.Bool
	stopCallers := make(chan struct{})
	callersDone := make(chan struct{})
	go func() {
		defer close(callersDone)
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				for _, p := range providers {
					for _, n := range names {
						if _, err := p.Get(context.Background(), n); err != nil {
							callerErrors.Add(1)
							if inOutage.Load() {
								outageErrors.Add(1)
							}
						}
					}
				}
			case <-stopCallers:
				return
			}
		}
	}()

	// Phase 2: quiet hours, to measure the steady background read rate.
	// Six TTLs, so that the fleet's common phase after the cold start
	// does not bias the rate.
	time.Sleep(2 * cfg.TTL)
	before := vault.Counts().Total
	time.Sleep(6 * cfg.TTL)
	steady := vault.Counts().Total - before
	res.SteadyPerSecret = float64(steady) / float64(cfg.Instances*cfg.Secrets) / 6
	fmt.Fprintf(log, "  steady state: %.2f reads per secret per TTL per instance\n", res.SteadyPerSecret)

	// Phase 3: one secret is rotated, and news of it reaches the fleet as
	// cfg.Push says.
	onePhase.Store(true)
	oneAt := time.Now()
	oneBefore := vault.Counts().Total
	if _, err = vault.SetSecret(names[0], "v1b", nil); err != nil {
		return res, err
	}
	for oneRotations.Load() < int64(cfg.Instances) && time.Since(oneAt) < 2*cfg.TTL {
		time.Sleep(100 * time.Millisecond)
	}
	if oneRotations.Load() < int64(cfg.Instances) {
		res.OneConverge = -1
	} else {
		res.OneConverge = time.Unix(0, oneLast.Load()).Sub(oneAt)
	}
	res.OneRequests = vault.Counts().Total - oneBefore
	oneFrom, oneTo := int(oneAt.Sub(start)/time.Second), int(time.Since(start)/time.Second)
	fmt.Fprintf(log, "  one rotation: %d of %d instances converged in %v with %d requests\n",
		oneRotations.Load(), cfg.Instances, res.OneConverge.Round(time.Millisecond), res.OneRequests)
	time.Sleep(cfg.TTL) // every instance's schedule has passed the rotation
	onePhase.Store(false)

	// Phase 4: every secret is rotated at once.
	rotatedAt := time.Now()
	throttledBefore := vault.Counts().Throttled
	for _, n := range names {
		if _, err = vault.SetSecret(n, "v2", nil); err != nil {
			return res, err
		}
	}
	want := int64(cfg.Instances * cfg.Secrets)
	for rotations.Load() < want && time.Since(rotatedAt) < 2*cfg.TTL {
		time.Sleep(time.Second)
	}
	if rotations.Load() < want {
		res.Converge = -1
	} else {
		res.Converge = time.Unix(0, lastRotation.Load()).Sub(rotatedAt)
	}
	res.RotateThrottled = vault.Counts().Throttled - throttledBefore
	fmt.Fprintf(log, "  rotation: %d of %d instance-secrets converged in %v\n", rotations.Load(), want, res.Converge.Round(time.Second))

	// Phase 5: the vault is down; callers must not notice.
	if cfg.Outage > 0 {
		time.Sleep(cfg.TTL)
		inOutage.Store(true)
		vault.FailFor(cfg.Outage, kvtest.ServiceUnavailable)
		time.Sleep(cfg.Outage)
		inOutage.Store(false)
		time.Sleep(cfg.TTL) // recovery
		fmt.Fprintf(log, "  outage of %v: %d caller errors during it\n", cfg.Outage, outageErrors.Load())
	}

	close(stopCallers)
	<-callersDone
	close(stopMon)
	<-monDone
	c := vault.Counts()
	res.Requests, res.Throttled = c.Total, c.Throttled
	res.CallerErrors, res.OutageErrors = int(callerErrors.Load()), int(outageErrors.Load())
	res.PeakPer10s = peak(perSecond)
	res.OnePeakPer10s = peak(perSecond[min(oneFrom, len(perSecond)):min(oneTo+1, len(perSecond))])
	res.FanOutMessages = fan.messages.Load()
	res.Elapsed = time.Since(start)
	return res, nil
}

// peak returns the most requests in any 10 consecutive seconds.
func peak(perSecond []int64) int64 {
	var window, most int64
	for i, n := range perSecond {
		window += n
		if i >= 10 {
			window -= perSecond[i-10]
		}
		most = max(most, window)
	}
	return most
}

// fanOut stands in for redisfanout in process: the first instance to see
// a version publishes it once (as redisfanout's SET NX does), and every
// other instance hears it a millisecond later and calls Notify. Each notice
// gets its own slice of time, instances / rate long, after the slices of
// the notices before it, so that the fleet's reads fit rate (reads a
// second) however many versions arrive at once.
type fanOut struct {
	providers []*kvsecrets.Provider
	rate      float64
	messages  atomic.Int64

	mu        sync.Mutex
	published map[string]bool
	busyUntil time.Time // the end of the last notice's slice of time
}

func (f *fanOut) publish(from int, ev kvsecrets.RotationEvent) {
	now := time.Now()
	f.mu.Lock()
	key := ev.Name + "/" + ev.NewVersion
	if f.published[key] {
		f.mu.Unlock()
		return
	}
	f.published[key] = true
	// Each notice gets the next slice of time long enough for the fleet's
	// reads at rate, after the slices of the notices before it.
	start := now
	if f.busyUntil.After(now) {
		start = f.busyUntil
	}
	spread := time.Duration(float64(len(f.providers)) / f.rate * float64(time.Second))
	f.busyUntil = start.Add(spread)
	delay := start.Sub(now)
	f.mu.Unlock()
	f.messages.Add(1)
	go func() {
		time.Sleep(time.Millisecond) // Redis's PUBLISH to every subscriber
		for i, q := range f.providers {
			if i != from {
				q.Notify(kvsecrets.Notice{Name: ev.Name, Version: ev.NewVersion, Delay: delay, Spread: spread})
			}
		}
	}()
}

// sharedLimiter stands in for redisfanout.Limiter in process: one token
// bucket for the fleet, kept by the generic cell rate algorithm (GCRA) as
// the Lua script in Redis keeps it, at limit requests per window with a
// burst of a hundredth of it, so that any window holds at most
// limit + limit/100 + 1 turns.
type sharedLimiter struct {
	interval, tolerance time.Duration

	mu  sync.Mutex
	tat time.Time // the theoretical arrival time of the next turn
}

func newSharedLimiter(limit int, window time.Duration) *sharedLimiter {
	interval := window / time.Duration(limit)
	return &sharedLimiter{interval: interval, tolerance: interval * time.Duration(limit/100)}
}

// Wait reserves the next turn and waits for it.
func (l *sharedLimiter) Wait(ctx context.Context, vault string) error {
	now := time.Now()
	l.mu.Lock()
	tat := l.tat
	if tat.Before(now) {
		tat = now
	}
	wait := tat.Sub(now) - l.tolerance
	l.tat = tat.Add(l.interval)
	l.mu.Unlock()
	if wait <= 0 {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Table formats results as a Markdown table.
func Table(results []Result) string {
	var b strings.Builder
	b.WriteString("| instances × secrets | jitter | push (spread) | cold start | preload failures | 429s at cold start | peak requests / 10 s | steady reads / secret / TTL | one secret rotated: converged in | requests meanwhile (peak / 10 s) | all rotated: converged in | 429s in rotation | caller errors (in outage) |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		conv := r.Converge.Round(time.Second).String()
		if r.Converge < 0 {
			conv = "not within 2 TTL"
		}
		one := r.OneConverge.Round(100 * time.Millisecond).String()
		if r.OneConverge < 0 {
			one = "not within 2 TTL"
		}
		fmt.Fprintf(&b, "| %d × %d | %v | %v | %v | %d | %d | %d | %.2f | %s | %d (%d) | %s | %d | %d (%d) |\n",
			r.Instances, r.Secrets, yes(r.Jitter), push(r), r.ColdStart.Round(time.Second), r.ColdErrors,
			r.ColdThrottled, r.PeakPer10s, r.SteadyPerSecret, one, r.OneRequests, r.OnePeakPer10s, conv,
			r.RotateThrottled, r.CallerErrors, r.OutageErrors)
	}
	return b.String()
}

func push(r Result) string {
	switch {
	case r.Push == NoPush:
		return "no"
	case r.Push == BalancerFan:
		return string(r.Push) + " (to the rate)"
	}
	return fmt.Sprintf("%s (%v)", r.Push, r.Spread)
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// ColdTable formats the cold starts of results as a Markdown table, against
// the floor.
func ColdTable(results []Result) string {
	var b strings.Builder
	b.WriteString("| instances × secrets | limit / 10 s | pacing | shared limiter | cold start (floor) | × floor | failed preloads | requests | 429s (share) | peak requests / 10 s |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		fmt.Fprintf(&b, "| %d × %d | %d | %s | %s | %v (%v) | %.2f | %d | %d | %d (%.1f%%) | %d |\n",
			r.Instances, r.Secrets, r.Limit, yes(!r.NoPacing), yes(r.Shared), r.ColdStart.Round(time.Second), r.Floor(),
			float64(r.ColdStart)/float64(r.Floor()), r.ColdErrors, r.ColdRequests, r.ColdThrottled,
			100*float64(r.ColdThrottled)/float64(max(r.ColdRequests, 1)), r.ColdPeakPer10s)
	}
	return b.String()
}
