package kvsecrets

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
)

// This file is the pacer: per-Provider adaptive pacing of the Provider's
// own requests to its vault, so that a fleet of independent instances that
// starts at once converges on Key Vault's rate (4,000 GETs per 10 s per
// vault) instead of hammering it. Cached reads never reach it.
//
// An instance learns only what its own requests tell it: which succeeded,
// which were throttled (429), and a Retry-After when the vault sends one
// (Key Vault often does not). Key Vault counts requests per 10-second
// window, so the controller reasons in windows:
//
//   - Slow start: the first request goes alone (it meets the vault's
//     authentication challenge, which requests beside it would each meet
//     again); once it is answered the rest of the first pacingInitialBurst
//     requests go at once, then
//     pacingInitialRate a second; each window in which requests had to wait
//     and none was throttled doubles the rate, up to Options.MaxReadRate.
//   - On a 429 the rate is cut once: to pacingDecrease of itself and, if
//     the pacer held requests back in the last two windows, no higher than
//     what the vault granted this instance in the last window (its
//     successes over the last 10 s), which is its share of the vault when
//     the whole fleet is throttled. No request is sent for a
//     window (or the Retry-After) plus up to a quarter of it at random, so
//     that the instances throttled together do not come back together.
//     429s of requests sent before the cut are not cut for again.
//   - Afterwards each window in which requests waited and none was
//     throttled adds max(pacingIncrease, rate/8) reads a second: an eighth
//     per window, so that capacity left by instances that have finished
//     is taken up within a few windows.
//   - After pacingQuiet windows in which nothing waited and nothing was
//     throttled, a rate cut below pacingInitialRate returns to it, in slow
//     start: the throttling it was cut for is over.
//
// Requests wait in one queue, first come first served; a retry after a
// 429 goes first. The pacer has no goroutine: the head of the queue waits
// on a timer for its turn.

// The pacer's parameters (see above).
const (
	pacingWindow       = 10 * time.Second // Key Vault's throttling window
	pacingInitialBurst = 4                // requests sent at once by a new Provider
	pacingInitialRate  = 100.0            // requests a second in the first window
	pacingMinRate      = 0.05             // requests a second: the rate is never cut below one per 20 s
	pacingIncrease     = 0.025            // requests a second added per window: a quarter of a request per window
	pacingDecrease     = 0.85             // the factor of a cut
	pacingPauseJitter  = 0.25             // a pause lasts up to this fraction longer, at random
	pacingQuiet        = 6                // windows without waiting or throttling after which the rate recovers
	pacingIdlePause    = time.Second      // the first pause of a Provider whose requests did not queue
	// DefaultMaxReadRate is the default of Options.MaxReadRate: Key Vault's
	// limit for a whole vault, 4,000 GETs per 10 s.
	DefaultMaxReadRate = 400.0
)

// A Limiter shares a vault's request rate among many Providers, usually
// the instances of a fleet, through a store they all reach (see
// Options.Limiter; redisfanout.Limiter keeps a token bucket per vault in
// Redis). It must be safe for concurrent use.
type Limiter interface {
	// Wait returns nil when n requests (1, or 2 for a Provider's first,
	// which meets the vault's authentication challenge) to vault (the
	// vault's host, such as "myvault.vault.azure.net") may be sent,
	// waiting for their turn first if the budget is spent. It returns
	// ctx's error if ctx ends first. Any other error means the Limiter
	// cannot answer (its store is unreachable, say); the Provider then
	// sends the request paced only by itself. Wait should fail fast while
	// its store is down: the Provider calls it before every request.
	Wait(ctx context.Context, vault string, n int) error
}

// errPacingAbandoned ends a wait in the pacer when nobody waits for the
// read any more.
var errPacingAbandoned = errors.New("kvsecrets: read abandoned while waiting for its turn: every caller gave up")

// pacingError is a read that ended while waiting for its turn, without
// being sent.
type pacingError struct{ cause error }

func (e *pacingError) Error() string { return e.cause.Error() }
func (e *pacingError) Unwrap() error { return e.cause }

// pacer paces one Provider's requests to its vault. Its methods are safe
// for concurrent use; every field below mu is guarded by it.
type pacer struct {
	maxRate  float64
	noJitter bool

	delayed   atomic.Uint64 // requests that waited for their turn
	throttled atomic.Uint64 // 429s heard

	mu        sync.Mutex
	started   bool      // the first request has asked for a turn
	probing   bool      // the first request is out, unanswered: the others wait for it
	rate      float64   // requests a second
	slowStart bool      // no 429 heard yet: the rate doubles per window
	tokens    float64   // requests that may go now
	refilled  time.Time // tokens are counted up to here
	pausedTil time.Time // no request goes before
	epoch     uint64    // cuts so far: a 429 of a request sent before the last cut is not cut for again
	winStart  time.Time // the window being counted
	winWaited bool      // a request waited for its turn in it
	busy      bool      // requests waited in the last window: the pacer, not demand, set the pace
	quiet     int       // windows in a row in which nothing waited and nothing was throttled
	strikes   int       // cuts since the last window without a 429: a pause of an idle Provider doubles with each
	win429    bool      // a 429 was heard in it
	queue     []*pacerTicket
	// successes per second of the last window, for what the vault
	// granted: succ[i] counts the second succAt[i] (Unix seconds).
	succ   [10]int32
	succAt [10]int64
}

type pacerTicket struct{ turn chan struct{} }

func (t *pacerTicket) poke() {
	select {
	case t.turn <- struct{}{}:
	default:
	}
}

func newPacer(maxRate float64, noJitter bool) *pacer {
	return &pacer{maxRate: maxRate, noJitter: noJitter, rate: min(pacingInitialRate, maxRate), slowStart: true}
}

// acquire waits for a request's turn. It returns at once while the
// Provider is within its rate; otherwise it waits in the queue (at its
// head if front) until its turn, ctx ends or gone closes. It returns the
// pacer's epoch, for done.
func (pc *pacer) acquire(ctx context.Context, gone <-chan struct{}, front bool) (uint64, error) {
	pc.mu.Lock()
	now := time.Now()
	pc.advance(now)
	if len(pc.queue) == 0 && pc.waitLocked(now) <= 0 {
		pc.tokens--
		ep := pc.epoch
		pc.mu.Unlock()
		return ep, nil
	}
	if err := context.Cause(ctx); err != nil {
		pc.mu.Unlock()
		return 0, &pacingError{err}
	}
	pc.delayed.Add(1)
	pc.winWaited = pc.winWaited || pc.rateBound(now)
	t := &pacerTicket{turn: make(chan struct{}, 1)}
	if front {
		pc.queue = slices.Insert(pc.queue, 0, t)
	} else {
		pc.queue = append(pc.queue, t)
	}
	pc.queue[0].poke()
	pc.mu.Unlock()

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-t.turn:
		case <-timer.C:
		case <-ctx.Done():
			pc.leave(t)
			return 0, &pacingError{context.Cause(ctx)}
		case <-gone:
			pc.leave(t)
			return 0, &pacingError{errPacingAbandoned}
		}
		pc.mu.Lock()
		now = time.Now()
		pc.advance(now)
		if pc.queue[0] != t {
			pc.mu.Unlock()
			timer.Stop()
			continue // a retry went first: wait to be the head again
		}
		wait := pc.waitLocked(now)
		if wait <= 0 {
			pc.tokens--
			pc.queue[0] = nil
			pc.queue = pc.queue[1:]
			if len(pc.queue) > 0 {
				pc.queue[0].poke()
			} else {
				pc.queue = nil
			}
			ep := pc.epoch
			pc.mu.Unlock()
			return ep, nil
		}
		pc.mu.Unlock()
		timer.Reset(wait)
	}
}

// leave takes t out of the queue, handing the head's turn on.
func (pc *pacer) leave(t *pacerTicket) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	i := slices.Index(pc.queue, t)
	if i < 0 {
		return
	}
	pc.queue = slices.Delete(pc.queue, i, i+1)
	if i == 0 && len(pc.queue) > 0 {
		pc.queue[0].poke()
	}
}

// waitLocked returns how long the head of the queue must still wait: for
// the end of a pause and for a whole token.
func (pc *pacer) waitLocked(now time.Time) time.Duration {
	w := pc.pausedTil.Sub(now)
	if pc.probing && pc.tokens < 1 {
		return max(pc.winStart.Add(pacingWindow).Sub(now), 0) // or the first answer, which pokes the queue
	}
	if pc.tokens < 1 {
		from := now
		if pc.refilled.After(now) {
			from = pc.refilled
		}
		need := time.Duration(math.Ceil((1 - pc.tokens) / pc.rate * float64(time.Second)))
		w = max(w, from.Add(need).Sub(now))
	}
	return max(w, 0)
}

// rateBound reports whether a request asking now would wait for a token,
// not for the end of a pause. mu is held.
func (pc *pacer) rateBound(now time.Time) bool {
	return pc.tokens < 1 && !now.Before(pc.pausedTil)
}

// advance brings tokens and the window up to now. mu is held.
func (pc *pacer) advance(now time.Time) {
	if !pc.started {
		pc.started = true
		// The first request goes alone: it meets the vault's
		// authentication challenge and learns the token, which requests
		// sent beside it would each meet again (one 401 apiece). The
		// rest of the burst follows its answer.
		pc.tokens, pc.refilled, pc.winStart, pc.probing = 1, now, now, true
	}
	if pc.probing {
		if now.Sub(pc.winStart) < pacingWindow {
			pc.refilled = now
		} else {
			// No answer in a window (a hung first request): the others go on.
			pc.probing = false
			pc.tokens += pacingInitialBurst - 1
		}
	}
	if now.Sub(pc.winStart) >= pacingWindow {
		// The window is over: a window in which requests waited and
		// none was throttled makes the rate grow.
		if pc.winWaited && !pc.win429 {
			if pc.slowStart {
				pc.rate *= 2
			} else {
				pc.rate += max(pacingIncrease, pc.rate/8)
			}
			pc.rate = min(pc.rate, pc.maxRate)
		}
		// Windows that needed no pacing at all mean the throttling the
		// rate was cut for is over: after pacingQuiet of them the rate
		// is back to at least a new Provider's, in slow start, so that a
		// burst of reads long after a cold start (a rotation, NotifyAll)
		// is not held to the share of a crowded start-up.
		if !pc.win429 {
			pc.strikes = 0
		}
		if pc.winWaited || pc.win429 {
			pc.quiet = 0
		} else if pc.quiet++; pc.quiet >= pacingQuiet && pc.rate < pacingInitialRate {
			pc.rate, pc.slowStart = min(pacingInitialRate, pc.maxRate), true
		}
		pc.busy = pc.winWaited
		pc.winStart, pc.win429 = now, false
		pc.winWaited = len(pc.queue) > 0 && pc.rateBound(now)
	}
	if d := now.Sub(pc.refilled); d > 0 {
		pc.tokens = min(pc.tokens+pc.rate*d.Seconds(), max(pc.rate*pacingWindow.Seconds(), 1))
		pc.refilled = now
	}
}

// done tells the pacer how a request sent in epoch ended: a success adds to
// what the vault granted, a 429 cuts the rate and pauses (once per cut).
// Other failures say nothing about the rate.
func (pc *pacer) done(epoch uint64, err error) {
	now := time.Now()
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.probing {
		// The first answer, whatever it is, lets the burst go.
		pc.probing = false
		pc.tokens, pc.refilled = pc.tokens+pacingInitialBurst-1, now
		if len(pc.queue) > 0 {
			pc.queue[0].poke()
		}
	}
	var re *azcore.ResponseError
	if err != nil && !(errors.As(err, &re) && re.StatusCode == http.StatusTooManyRequests) {
		return
	}
	pc.advance(now)
	if err == nil {
		sec := now.Unix()
		i := sec % int64(len(pc.succ))
		if pc.succAt[i] != sec {
			pc.succAt[i], pc.succ[i] = sec, 0
		}
		pc.succ[i]++
		return
	}
	pc.throttled.Add(1)
	pc.win429 = true
	if epoch != pc.epoch {
		return // sent before the last cut, which answered it
	}
	pc.epoch++
	pc.slowStart = false
	pc.quiet = 0
	rate := pc.rate * pacingDecrease
	if pc.busy || pc.winWaited {
		// The pacer set the pace: what the vault granted is this
		// Provider's share of it. (Otherwise the successes only show
		// how little it asked for.)
		rate = min(rate, float64(max(pc.grantedLocked(now), 1))/pacingWindow.Seconds())
	}
	pc.rate = min(max(rate, pacingMinRate), pc.maxRate)
	// A Provider whose requests queued for their turn is among those
	// crowding the vault: it stays away for a whole window, which the 429
	// says is spent, and starts again from one request. One that asked
	// for little is not: it backs off as Key Vault advises, 1, 2, 4, 8 s…
	// up to a window, so that its few reads are not held up a window by
	// others' crowding, and keeps its tokens.
	busy := pc.busy || pc.winWaited
	pause := pacingWindow
	if !busy {
		pause = min(pacingIdlePause<<min(pc.strikes, 8), pacingWindow)
	}
	pc.strikes++
	if ra := retryAfter(re.RawResponse); ra > 0 {
		pause = min(ra, maxRetryAfter)
	}
	if !pc.noJitter {
		pause += rand.N(time.Duration(float64(pause)*pacingPauseJitter) + 1)
	}
	if until := now.Add(pause); until.After(pc.pausedTil) {
		pc.pausedTil = until
	}
	if busy {
		// One request may go when the pause ends; tokens count from there.
		pc.tokens, pc.refilled = 1, pc.pausedTil
	}
	if len(pc.queue) > 0 {
		pc.queue[0].poke()
	}
}

// grantedLocked counts the successes of the last window.
func (pc *pacer) grantedLocked(now time.Time) int {
	sec, n := now.Unix(), 0
	for i, at := range pc.succAt {
		if at > sec-int64(len(pc.succ)) && at <= sec {
			n += int(pc.succ[i])
		}
	}
	return n
}

// currentRate returns the rate, in requests a second.
func (pc *pacer) currentRate() float64 {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return pc.rate
}

// pacedReadKey carries a read's *pacedRead in its context.
type pacedReadKey struct{}

// pacedRead is what the pacer's hooks need to know of the read a request
// belongs to.
type pacedRead struct {
	gone  <-chan struct{} // closed once nobody waits for the read; nil: never
	wait  context.Context // ends when nobody waits for the read or the Provider closes
	start func()          // starts FetchTimeout, at the first request sent
	front bool            // the next request is a retry after a 429: it goes first
}

// pace waits for the turn of a request made on ctx, first in the pacer,
// then in Options.Limiter, and returns a function to call with the
// request's outcome. Without either it returns at once.
func (p *Provider) pace(ctx context.Context) (func(error), error) {
	pr, _ := ctx.Value(pacedReadKey{}).(*pacedRead)
	if p.pacer == nil && p.cfg.limiter == nil {
		return func(error) {}, nil
	}
	var gone <-chan struct{}
	front, wait := false, ctx
	if pr != nil {
		gone, front, wait = pr.gone, pr.front, pr.wait
		pr.front = false
	}
	var epoch uint64
	if p.pacer != nil {
		var err error
		if epoch, err = p.pacer.acquire(ctx, gone, front); err != nil {
			if cause := context.Cause(p.ctx); cause != nil {
				err = &pacingError{cause} // Close ends gone too, maybe first
			}
			return nil, err
		}
	}
	if err := p.limit(wait); err != nil {
		if p.pacer != nil {
			p.pacer.done(epoch, err) // not sent: only ends a probe
		}
		return nil, err
	}
	if pr != nil {
		pr.gone = nil // sent: the read runs to its end
		if pr.start != nil {
			pr.start()
		}
	}
	if p.pacer == nil {
		return func(error) {}, nil
	}
	return func(err error) { p.pacer.done(epoch, err) }, nil
}

// limit waits for Options.Limiter's turn, if there is a Limiter. A
// Limiter that fails (its store unreachable) lets the request go: the
// pacer, which the request has passed, is the fallback. The failure is
// counted and logged at most once a minute; the Limiter's error is not
// wrapped into the read's, since it says nothing about the secret.
func (p *Provider) limit(wait context.Context) error {
	l := p.cfg.limiter
	if l == nil {
		return nil
	}
	// The Provider's first request meets the vault's authentication
	// challenge: two requests reach the vault, so it takes two turns, at
	// once.
	n := 1
	first := p.challenged.CompareAndSwap(false, true)
	if first {
		n = 2
	}
	err := l.Wait(wait, p.host, n)
	if err != nil && first {
		p.challenged.Store(false) // the next request meets the challenge
	}
	if err == nil {
		p.limited.Add(1)
		return nil
	}
	if cause := context.Cause(wait); cause != nil {
		if c := context.Cause(p.ctx); c != nil {
			cause = c // closed
		} else if errors.Is(cause, context.Canceled) {
			cause = errPacingAbandoned // every caller gave up (goneCtx)
		}
		return &pacingError{cause}
	}
	p.limiterFailures.Add(1)
	now := time.Now().UnixNano()
	last := p.limiterLog.Load()
	if now-last >= int64(time.Minute) && p.limiterLog.CompareAndSwap(last, now) {
		p.cfg.logger.Warn("kvsecrets: the shared Limiter failed; pacing this Provider's requests by itself",
			slog.String("vault", p.host), slog.String("error", err.Error()))
	}
	return nil
}

// await waits until flight f of e is done or ctx ends. The last caller to
// give up on a caller's first read whose request still waits for its turn
// abandons it, so that reads nobody waits for do not hold the queue; a
// later caller starts a new one.
func (p *Provider) await(ctx context.Context, e *entry, f *flight) error {
	if f.gone == nil {
		select {
		case <-f.done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	e.mu.Lock()
	f.waiters++
	e.mu.Unlock()
	select {
	case <-f.done:
		return nil
	case <-ctx.Done():
	}
	e.mu.Lock()
	f.waiters--
	if f.waiters == 0 && !f.abandoned && !f.sent.Load() {
		f.abandoned = true
		f.abandon()
	}
	e.mu.Unlock()
	return ctx.Err()
}
