package redisfanout

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// claimAndPublish publishes ARGV[3] on channel ARGV[2] only if it sets
// the claim KEYS[1] (NX, for ARGV[1] seconds): one round trip, and a claim
// is never made without its publication. It returns the number of
// receivers, or -1 when another instance made the claim first.
var claimAndPublish = redis.NewScript(`
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
	return redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return -1
`)

// publishLoop publishes the queued rotations one at a time until Close.
func (f *FanOut) publishLoop() {
	defer f.wg.Done()
	for {
		select {
		case <-f.ctx.Done():
			return
		case n := <-f.queue:
			f.publish(n)
		}
	}
}

func (f *FanOut) publish(n notice) {
	ctx, cancel := context.WithTimeout(f.ctx, f.cfg.publishTimeout)
	defer cancel()
	n.N = f.countMembers(ctx)
	n.TS = time.Now().UnixMilli()
	msg, err := encode(f.cfg.key, f.cfg.channel, n)
	if err != nil {
		return // a notice of strings always marshals
	}
	key := claimKey(f.cfg.key, f.cfg.channel, noticeID(n.Vault, n.Name, n.Version))
	res, err := claimAndPublish.Run(ctx, f.client, []string{key},
		int64(f.cfg.publishedTTL/time.Second), f.cfg.channel, msg).Int64()
	switch {
	case err != nil:
		if f.ctx.Err() != nil {
			return // closing
		}
		e := classify("publish", err)
		f.dropped.Add(1)
		f.setError(e)
		f.cfg.logger.Warn("redisfanout: new version not published; other instances will find it by their schedule, or by their re-check after Redis comes back",
			"secret", n.Name, "version", n.Version, "error", e.Error())
	case res < 0:
		f.count(&f.suppressed)
	default:
		f.count(&f.published)
	}
}
