package redisfanout

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"strconv"
	"time"

	"github.com/kvsecrets/kvsecrets"
	"github.com/redis/go-redis/v9"
)

// errSilent: a connection answered neither messages nor a ping.
var errSilent = errors.New("no answer to a ping")

// subscribeLoop keeps the FanOut subscribed until Close: each attempt is a
// PubSub of its own, closed when it fails, followed by a pause that starts
// at 100 ms and doubles up to MaxReconnectBackoff. go-redis's PubSub would
// reconnect by itself; managing the attempts here makes each one visible,
// so that a subscription made after a gap is known to be one, and bounds
// what Close waits for.
func (f *FanOut) subscribeLoop() {
	defer f.wg.Done()
	backoff := minBackoff
	gap := false // a connection was lost or an attempt failed since the last subscription
	var timer *time.Timer
	for {
		ps := f.client.Subscribe(f.ctx) // no channel: no I/O yet
		f.mu.Lock()
		if f.closed.Load() {
			f.mu.Unlock()
			_ = ps.Close()
			return
		}
		f.ps = ps
		f.mu.Unlock()

		subscribed := false
		err := f.receive(ps, func() {
			subscribed = true
			backoff = minBackoff
			f.onSubscribed(gap)
			gap = false
		})
		f.mu.Lock()
		f.ps = nil
		f.mu.Unlock()
		_ = ps.Close()
		if f.ctx.Err() != nil {
			return
		}
		gap = true
		e := classify("subscribe", err)
		if subscribed {
			e.Op = "receive"
			f.cfg.logger.Warn("redisfanout: lost the subscription; reconnecting", "channel", f.cfg.channel, "error", e.Error())
		} else if f.Status().LastError == nil {
			f.cfg.logger.Warn("redisfanout: cannot subscribe; retrying", "channel", f.cfg.channel, "error", e.Error())
		}
		f.setError(e)
		f.setConnected(false)

		// Pause, with jitter in [backoff/2, backoff], then double.
		d := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, f.cfg.maxBackoff)
		if timer == nil {
			timer = time.NewTimer(d)
		} else {
			timer.Reset(d)
		}
		select {
		case <-timer.C:
		case <-f.ctx.Done():
			timer.Stop()
			return
		}
	}
}

// onSubscribed runs when Redis confirms the subscription. After a gap,
// notices may have been missed: every cached secret is re-read once,
// spread over RecheckSpread.
func (f *FanOut) onSubscribed(gap bool) {
	f.setConnected(true)
	if !gap {
		f.cfg.logger.Info("redisfanout: subscribed", "channel", f.cfg.channel)
		return
	}
	f.reconnects.Add(1)
	n := f.p.NotifyAll(f.cfg.recheckSpread)
	f.count(&f.rechecks)
	f.cfg.logger.Info("redisfanout: subscribed again after a gap; re-checking cached secrets",
		"channel", f.cfg.channel, "secrets", n, "spread", f.cfg.recheckSpread)
}

// receive subscribes ps and handles its messages until the connection
// fails or ps is closed. A connection silent for 30 s is pinged; one
// silent for 30 s more is given up (a hung Redis, a network that drops
// packets without a reset).
func (f *FanOut) receive(ps *redis.PubSub, subscribed func()) error {
	if err := ps.Subscribe(f.ctx, f.cfg.channel); err != nil {
		return err
	}
	pinged := false
	for {
		msg, err := ps.ReceiveTimeout(f.ctx, f.cfg.health)
		if err != nil {
			var nerr net.Error
			if !errors.As(err, &nerr) || !nerr.Timeout() || pinged {
				if pinged {
					return errSilent
				}
				return err
			}
			if err := ps.Ping(f.ctx); err != nil {
				return err
			}
			pinged = true
			continue
		}
		pinged = false
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" && m.Channel == f.cfg.channel {
				subscribed()
			}
		case *redis.Message:
			f.handle(m.Payload)
		}
	}
}

// handle acts on one message from the channel.
// Received is counted last, once the message is classified, so that a
// Status whose Received is N accounts for N messages in Rejected and Acted.
func (f *FanOut) handle(payload string) {
	now := time.Now()
	n, err := decode(f.cfg.key, f.cfg.channel, payload, now, f.cfg.replayWindow)
	if err == nil && f.heard.add(noticeID(n.Vault, n.Name, n.Version), now, f.cfg.publishedTTL) {
		var ok bool
		delay, spread := f.slice(now, n.N)
		ok, err = f.p.Notify(kvsecrets.Notice{Vault: n.Vault, Name: n.Name, Version: n.Version, Delay: delay, Spread: spread})
		if err != nil {
			err = errNotice
		} else if ok {
			f.acted.Add(1)
		}
	}
	if err != nil {
		f.rejected.Add(1)
		f.logReject(err, n, now)
	}
	f.received.Add(1)
	f.bump()
}

// logReject logs a rejection at Warn, at most once per rejectLogPeriod so
// that a flood of forgeries cannot flood the log. Nothing of a message is
// logged but the secret name of a signed, stale one, if it is a valid
// name.
func (f *FanOut) logReject(reason error, n notice, now time.Time) {
	last := f.lastRejectLog.Load()
	if now.UnixNano()-last < int64(rejectLogPeriod) || !f.lastRejectLog.CompareAndSwap(last, now.UnixNano()) {
		return
	}
	args := []any{"channel", f.cfg.channel, "reason", reason.Error(), "rejected", f.rejected.Load()}
	if reason == errStale && isName(n.Name) {
		args = append(args, "secret", n.Name)
	}
	f.cfg.logger.Warn("redisfanout: message rejected", args...)
}

// isName reports whether s is a Key Vault secret name: 1–127 letters,
// digits and dashes.
func isName(s string) bool {
	if s == "" || len(s) > 127 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// slice returns the slice of time this notice's refresh falls in: after
// the slices of the notices heard before it, n / ReadRate long, where n is
// the publisher's signed count of the fleet. Every instance hears the same
// notices in the same order with the same counts, so they agree on the
// slices without talking to each other. A slice starts at most
// maxQueueDelay ahead.
func (f *FanOut) slice(now time.Time, n int64) (delay, spread time.Duration) {
	spread = time.Duration(float64(max(n, 1)) / f.cfg.readRate * float64(time.Second))
	f.sliceMu.Lock()
	defer f.sliceMu.Unlock()
	start := now
	if f.busyUntil.After(now) {
		start = f.busyUntil
	}
	if start.Sub(now) > maxQueueDelay {
		start = now.Add(maxQueueDelay)
	}
	f.busyUntil = start.Add(spread)
	return start.Sub(now), spread
}

// announceLoop announces this instance as a member of the fleet every
// countInterval until Close, and drops members not announced for a while.
func (f *FanOut) announceLoop() {
	defer f.wg.Done()
	t := time.NewTicker(countInterval)
	defer t.Stop()
	key, m := membersKey(f.cfg.channel), member(f.cfg.key, f.cfg.channel, f.id)
	for {
		ctx, cancel := context.WithTimeout(f.ctx, f.cfg.publishTimeout)
		now := time.Now()
		pipe := f.client.Pipeline()
		pipe.ZAdd(ctx, key, redis.Z{Score: float64(now.Unix()), Member: m})
		pipe.ZRemRangeByScore(ctx, key, "-inf", strconv.FormatInt(now.Add(-2*memberTTL).Unix(), 10))
		pipe.Expire(ctx, key, 2*memberTTL)
		_, _ = pipe.Exec(ctx) // a failure shows in the subscription's state; the next tick tries again
		cancel()
		select {
		case <-t.C:
		case <-f.ctx.Done():
			return
		}
	}
}

// countMembers returns the members announced within memberTTL whose tag is
// valid: the fleet's size, for the notice about to be published.
func (f *FanOut) countMembers(ctx context.Context) int64 {
	since := time.Now().Add(-memberTTL).Unix()
	ms, err := f.client.ZRangeArgs(ctx, redis.ZRangeArgs{Key: membersKey(f.cfg.channel), ByScore: true,
		Start: strconv.FormatInt(since, 10), Stop: "+inf", Count: maxMembers}).Result()
	if err != nil {
		return 1
	}
	var n int64
	for _, m := range ms {
		if validMember(f.cfg.key, f.cfg.channel, m) {
			n++
		}
	}
	return max(n, 1)
}
