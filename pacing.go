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
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// This file is the pacer: per-Provider adaptive pacing of the Provider's
// own read requests to its vault (GETs: reads, key-set pages, the SDK's
// retries, the authentication challenge; writes have a budget of their own
// and are not paced), so that a fleet of independent instances that
// starts at once converges on Key Vault's rate (4,000 GETs per 10 s per
// vault) instead of hammering it. Cached reads never reach it.
//
// Two policies in the SDK's pipeline do it: probeGate (per call) holds a
// new Provider's requests until its first has met the vault's
// authentication challenge and come back with a token, and pacePolicy
// (per try) makes every read request wait for its turn in the pacer, then
// in Options.Limiter.
//
// An instance learns only what its own requests tell it: which succeeded,
// which were throttled (429), and a Retry-After when the vault sends one
// (Key Vault often does not). Key Vault counts requests per 10-second
// window, so the controller reasons in windows:
//
//   - Slow start: pacingInitialBurst requests at once, then
//     pacingInitialRate a second; each window in which requests waited
//     for a token (not for a pause) and none was throttled doubles the
//     rate, up to Options.MaxReadRate. No more than the burst is ever saved
//     up, so any second holds at most the rate and the burst.
//   - On a 429 the rate is cut once: to pacingDecrease of itself and, if
//     the pacer held requests back in this window or the last (busy), no
//     higher than what the vault granted this instance in the last window
//     (its successes over the last 10 s), which is its share of the vault
//     when the whole fleet is throttled. A busy instance then sends
//     nothing for a window (or the Retry-After) plus up to a quarter of it
//     at random, so that the instances throttled together do not come
//     back together; an idle one, which is not what crowds the vault,
//     backs off 1, 2, 4, 8 s… (pacingIdlePause, doubling up to a window,
//     from 1 s again after a window without a 429), as Key Vault advises.
//     429s of requests sent before the cut are not cut for again.
//   - Afterwards each window in which requests waited and none was
//     throttled adds max(pacingIncrease, rate/8) reads a second: an eighth
//     per window, so that capacity left by instances that have finished
//     is taken up within a few windows, and at least one request per
//     window, the same for every instance, so that those the first window
//     starved (with latency the vault's first 4,000 are shared unevenly)
//     catch up with the others instead of keeping their small share.
//   - After pacingQuiet windows (a minute) in which nothing waited and
//     nothing was throttled, the rate is pacingInitialRate again, in slow
//     start: what it was set for is over.
//
// Requests wait in one queue, first come first served; the requests of a
// read under way (after the challenge, the SDK's retries, a retry after a
// 429) go first. The pacer has no goroutine: the head of the queue waits
// on a timer for its turn.

// The pacer's parameters (see above).
const (
	pacingWindow       = 10 * time.Second // Key Vault's throttling window
	pacingInitialBurst = 4                // requests sent at once by a new Provider
	pacingInitialRate  = 100.0            // requests a second in the first window
	pacingMinRate      = 0.05             // requests a second: the rate is never cut below one per 20 s
	pacingIncrease     = 0.1              // requests a second added per window at least: one request per window
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
	// Wait returns nil when one HTTP request to vault (the vault's host,
	// such as "myvault.vault.azure.net") may be sent, waiting for its
	// turn first if the budget is spent. It returns ctx's error if ctx
	// ends first. Any other error, or a panic, means the Limiter cannot
	// answer (its store is unreachable, say); the Provider then sends the
	// request paced only by itself. Wait should fail fast while its store
	// is down: the Provider calls it before every request, the
	// authentication challenge and the SDK's retries included. It must
	// return once ctx ends: Provider.Close ends ctx and waits for it.
	Wait(ctx context.Context, vault string) error
}

// errPacingAbandoned ends a wait in the pacer when nobody waits for the
// read any more.
var errPacingAbandoned = errors.New("kvsecrets: read abandoned while waiting for its turn: every caller gave up")

// pacingError is a read that ended while waiting for its turn, without
// being sent.
type pacingError struct{ cause error }

func (e *pacingError) Error() string { return e.cause.Error() }
func (e *pacingError) Unwrap() error { return e.cause }

// NonRetriable tells azcore's retry policy not to retry a request that was
// never sent.
func (e *pacingError) NonRetriable() {}

// pacer paces one Provider's requests to its vault. Its methods are safe
// for concurrent use; every field below mu is guarded by it.
type pacer struct {
	maxRate  float64
	noJitter bool

	delayed   atomic.Uint64 // requests that waited for their turn
	throttled atomic.Uint64 // 429s heard

	mu        sync.Mutex
	started   bool      // the first request has asked for a turn
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
		pc.tokens, pc.refilled, pc.winStart = pacingInitialBurst, now, now
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
		// Windows that needed no pacing at all mean that what the rate
		// was set for is over: after pacingQuiet of them (the windows
		// that passed without a request count too) the rate is a new
		// Provider's again, in slow start: a burst of reads long after a
		// cold start (a rotation, NotifyAll) is neither held to the
		// share of a crowded start-up nor let out at a rate the vault
		// granted long ago.
		if !pc.win429 {
			pc.strikes = 0
		}
		idle := int(min(now.Sub(pc.winStart)/pacingWindow, 1<<20)) - 1 // windows after this one, without a request
		switch {
		case pc.winWaited || pc.win429:
			pc.quiet = idle
		default:
			pc.quiet += 1 + idle
		}
		if idle > 0 {
			pc.strikes = 0
		}
		if pc.quiet >= pacingQuiet && (pc.rate != min(pacingInitialRate, pc.maxRate) || !pc.slowStart) {
			pc.rate, pc.slowStart = min(pacingInitialRate, pc.maxRate), true
		}
		pc.busy = pc.winWaited && idle == 0
		pc.winStart, pc.win429 = now, false
		pc.winWaited = len(pc.queue) > 0 && pc.rateBound(now)
	}
	if d := now.Sub(pc.refilled); d > 0 {
		// No more saved up than the first burst: any second holds at
		// most the rate and the burst, even after the Provider was idle.
		pc.tokens = min(pc.tokens+pc.rate*d.Seconds(), pacingInitialBurst)
		pc.refilled = now
	}
}

// done tells the pacer how a request sent in epoch ended: a success adds to
// what the vault granted, a 429 cuts the rate and pauses (once per cut).
// Other failures say nothing about the rate.
func (pc *pacer) done(epoch uint64, err error) {
	var re *azcore.ResponseError
	if err != nil && !(errors.As(err, &re) && re.StatusCode == http.StatusTooManyRequests) {
		return
	}
	now := time.Now()
	pc.mu.Lock()
	defer pc.mu.Unlock()
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
	if pc.started {
		pc.advance(time.Now())
	}
	return pc.rate
}

// pacedReadKey carries a read's *pacedRead in its context.
type pacedReadKey struct{}

// pacedRead is what the pacing policy needs to know of the read a request
// belongs to. Its fields are used by the read's own goroutine only (the
// SDK sends a read's requests one after the other).
type pacedRead struct {
	wait       context.Context // bounds the waits before the read's first request with a token goes: ends when nobody waits for the read or the Provider closes
	sent       func() bool     // that request goes: false if the read was abandoned first
	run        func()          // a request goes: FetchTimeout starts, or goes on
	hold       func()          // a request before it waits for its turn: FetchTimeout stops meanwhile
	went       bool            // it went
	challenged bool            // a request without a token went (the challenge)
	front      bool            // the next request is a retry after a 429: it goes first
}

// pacePolicy is the per-try policy that paces every read request the
// Provider's client sends (GETs: reads, key-set pages, the SDK's retries,
// the authentication challenge of a read): each waits for its turn in the
// pacer, then in Options.Limiter, and tells the pacer how it ended.
type pacePolicy struct{ p *Provider }

func (pp *pacePolicy) Do(req *policy.Request) (*http.Response, error) {
	if req.Raw().Method != http.MethodGet {
		// Writes (Rotate, SetSecret) have a budget of their own at Key
		// Vault, and a caller waiting on them: they are not paced.
		return req.Next()
	}
	done, err := pp.p.pace(req.Raw().Context(), req.Raw().Header.Get("Authorization") != "")
	if err != nil {
		return nil, err
	}
	resp, err := req.Next()
	status := answer(resp, err)
	if g := pp.p.gate; g != nil {
		switch {
		case status == http.StatusUnauthorized:
			g.heardAnswer()
		case status != 0:
			g.heardAnswer()
			g.answered()
		case req.Raw().Context().Err() != nil:
			g.cutShort() // the vault was slow to answer, not silent
		}
	}
	done(outcome(status, resp, err))
	return resp, err
}

// probeGate is a per-call policy that holds a new Provider's requests
// until one of them has met the vault's authentication challenge and come
// back with a token. It runs before the SDK's authentication policy
// decides whether a request carries a token: requests let through beside
// the first would each meet the challenge again (one 401 apiece, 1,000
// extra requests when a fleet of 1,000 starts).
//
// One call at a time is the probe. The gate opens for good once the vault
// answers a request with anything but its challenge (pacePolicy tells
// it). A probe that ends without that hands its role to one of the
// waiting calls; if the vault did not answer it at all (a hang, a network
// failure), or its credential hung, the calls waiting then fail with its
// error instead of each trying in turn (probeEnded). A wait is bounded by
// the waiting read's callers and by Close, not by FetchTimeout, which
// starts when a call passes the gate.
type probeGate struct {
	p      *Provider
	opened chan struct{} // closed once the vault answers past its challenge

	mu     sync.Mutex
	open   bool          // opened is closed
	out    bool          // a probe is out
	heard  bool          // the vault answered one of the probe's requests
	slow   bool          // a request of the probe's was out when its read ended
	ended  chan struct{} // closed (and replaced) when a probe ends without opening the gate
	failed error         // how the last probe failed, for the calls waiting then; nil: try again
}

func newProbeGate() *probeGate {
	return &probeGate{opened: make(chan struct{}), ended: make(chan struct{})}
}

func (g *probeGate) Do(req *policy.Request) (*http.Response, error) {
	ctx := req.Raw().Context()
	pr, _ := ctx.Value(pacedReadKey{}).(*pacedRead)
	wait := ctx
	if pr != nil && !pr.went {
		wait = pr.wait
	}
	// next lets the call through: FetchTimeout runs from here (it covers
	// the credential), not while the call waited at the gate.
	next := func() (*http.Response, error) {
		if g.p.ctx.Err() != nil || wait.Err() != nil {
			return nil, g.p.waitEnded(wait) // closed, or every caller gave up
		}
		if pr != nil && !pr.went {
			pr.run()
		}
		return req.Next()
	}
	select {
	case <-g.opened:
		return next()
	default:
	}
	for {
		if g.p.ctx.Err() != nil || wait.Err() != nil {
			return nil, g.p.waitEnded(wait)
		}
		g.mu.Lock()
		if g.open {
			g.mu.Unlock()
			return next()
		}
		if !g.out {
			g.out, g.heard, g.slow = true, false, false
			g.mu.Unlock()
			resp, err := next()
			g.probeEnded(ctx, resp, err)
			return resp, err
		}
		ended := g.ended
		g.mu.Unlock()
		select {
		case <-g.opened:
			return next()
		case <-ended:
			g.mu.Lock()
			failed := g.failed
			g.mu.Unlock()
			if failed != nil {
				return nil, failed
			}
		case <-wait.Done():
			return nil, g.p.waitEnded(wait)
		}
	}
}

// answer returns the status of the vault's answer to a request, 0 if
// there was none: a response whose body could not be read (err with
// resp) is none. Some transports, such as azsecrets/fake's, return an
// answer as an *azcore.ResponseError.
func answer(resp *http.Response, err error) int {
	if err == nil && resp != nil {
		return resp.StatusCode
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

// heardAnswer records that the vault answered a request of the probe's,
// if only with its challenge.
func (g *probeGate) heardAnswer() {
	g.mu.Lock()
	g.heard = true
	g.mu.Unlock()
}

// cutShort records that a request of the probe's was out when its read
// ended (FetchTimeout): the vault was answering, slowly.
func (g *probeGate) cutShort() {
	g.mu.Lock()
	g.slow = true
	g.mu.Unlock()
}

// answered opens the gate: the vault answered a request past its
// challenge.
func (g *probeGate) answered() {
	select {
	case <-g.opened:
		return
	default:
	}
	g.mu.Lock()
	if !g.open {
		g.open = true
		close(g.opened)
	}
	g.mu.Unlock()
}

// probeEnded ends the probe's call. Unless the gate opened, the calls
// waiting for it learn how it failed. They fail with its error if the
// vault answered none of its requests (not even with the challenge), or
// if it timed out (FetchTimeout) with no request out, stuck in the
// credential; not if it was a wait of its own cut short. Otherwise (a
// refusal past the challenge, a slow vault) one of them becomes the next
// probe.
func (g *probeGate) probeEnded(ctx context.Context, resp *http.Response, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.out = false
	if g.open {
		return
	}
	var pe *pacingError
	var re *azcore.ResponseError
	g.failed = nil
	cause := context.Cause(ctx)
	stuck := errors.Is(cause, errFetchTimeout) && !g.slow // timed out with nothing out: the credential hangs
	if (!g.heard || stuck) && resp == nil && err != nil && !errors.As(err, &pe) && !errors.As(err, &re) && g.p.ctx.Err() == nil {
		if cause != nil {
			err = cause // its FetchTimeout, say, rather than "context canceled"
		}
		g.failed = &probeError{err}
	}
	close(g.ended)
	g.ended = make(chan struct{})
}

// probeError is a waiting call's failure: the vault did not answer the
// call it waited for.
type probeError struct{ cause error }

func (e *probeError) Error() string {
	return "kvsecrets: the vault did not answer this Provider's first request: " + e.cause.Error()
}
func (e *probeError) Unwrap() error { return e.cause }

// waitEnded is the error of a wait for a request's turn that wait ended:
// the Provider closed, every caller gave up (goneCtx), or the caller's own.
func (p *Provider) waitEnded(wait context.Context) error {
	cause := context.Cause(wait)
	if c := context.Cause(p.ctx); c != nil {
		cause = c // closed
	} else if errors.Is(cause, context.Canceled) && wait.Err() != nil {
		cause = errPacingAbandoned // every caller gave up (goneCtx)
	}
	return &pacingError{cause}
}

// errNotServed is the outcome of a request the vault answered without
// serving it, with its challenge (a 401: the SDK sends the request again
// with a token) or an error of its own (a 5xx): it says nothing of the
// rate.
var errNotServed = errors.New("kvsecrets: answered with the challenge or a server error")

// outcome is what a request's answer (status, from answer) tells the
// pacer: nil when the vault served it (any answer below 500 but a 429 or
// its challenge), the 429 itself, errNotServed, or the transport's error.
func outcome(status int, resp *http.Response, err error) error {
	switch {
	case status == 0:
		return err
	case status == http.StatusTooManyRequests && err == nil:
		return &azcore.ResponseError{StatusCode: status, RawResponse: resp}
	case status == http.StatusTooManyRequests:
		return err // an *azcore.ResponseError already
	case status == http.StatusUnauthorized || status >= 500:
		return errNotServed
	}
	return nil
}

// pace waits for the turn of a request made on ctx, first in the pacer,
// then in Options.Limiter, and returns a function to call with the
// request's outcome. FetchTimeout is held while a request waits, but for
// a retry after a 429 (a caller's first read retries within FetchTimeout
// of its first request). Until a read's first request with a token goes
// (authorised: the first may meet the challenge instead), its waits end
// with the callers' patience (pacedRead.wait); later ones with the read.
// A read's requests after its first go ahead of reads not yet begun.
func (p *Provider) pace(ctx context.Context, authorised bool) (func(error), error) {
	pr, _ := ctx.Value(pacedReadKey{}).(*pacedRead)
	var gone <-chan struct{}
	front, wait := false, ctx
	if pr != nil {
		// A read already under way (the request with a token after the
		// challenge, the SDK's retry, a retry after a 429) goes ahead of
		// reads not yet begun.
		retry := pr.front // a retry after a 429: its wait counts, as the docs say
		front, pr.front = pr.front || pr.went || pr.challenged, false
		if !pr.went {
			gone, wait = pr.wait.Done(), pr.wait
		}
		if !retry {
			pr.hold() // FetchTimeout does not run while a request waits for its turn
		}
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
	notSent := func(err error) (func(error), error) {
		if p.pacer != nil {
			p.pacer.done(epoch, err) // only ends a probe
		}
		return nil, err
	}
	if err := p.limit(wait); err != nil {
		return notSent(err)
	}
	if ctx.Err() != nil || p.ctx.Err() != nil {
		// The pacer's fast path does not look at the context: a request
		// whose read ended (Close, FetchTimeout) is not handed on.
		return notSent(p.waitEnded(ctx))
	}
	if pr != nil {
		switch {
		case pr.went:
		case !authorised:
			pr.challenged = true
		case !pr.sent():
			// Every caller gave up while the Limiter held the turn.
			return notSent(&pacingError{errPacingAbandoned})
		default:
			pr.went = true
		}
		pr.run()
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
// wrapped into the read's, since it says nothing about the secret. A
// Limiter that panics counts as failing.
func (p *Provider) limit(wait context.Context) (err error) {
	l := p.cfg.limiter
	if l == nil {
		return nil
	}
	err = p.callLimiter(l, wait)
	if err == nil {
		p.limited.Add(1)
		return nil
	}
	if wait.Err() != nil {
		return p.waitEnded(wait)
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

// errLimiterPanicked is a Limiter's panic, as a failure.
var errLimiterPanicked = errors.New("kvsecrets: the Limiter panicked")

func (p *Provider) callLimiter(l Limiter, wait context.Context) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = errLimiterPanicked // the panic value is not logged: it is the Limiter's
		}
	}()
	return l.Wait(wait, p.host)
}

// await waits until flight f of e is done or ctx ends. The last caller to
// give up on a caller's first read whose request still waits for its turn
// abandons it, so that reads nobody waits for do not hold the queue; a
// later caller starts a new one.
func (p *Provider) await(ctx context.Context, e *entry, f *flight) error {
	if !f.retry {
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
	if f.waiters == 0 && !f.abandoned && f.phase.CompareAndSwap(flightWaiting, flightAbandoned) {
		f.abandoned = true
		if f.abandon != nil {
			f.abandon()
		}
	}
	e.mu.Unlock()
	return ctx.Err()
}
