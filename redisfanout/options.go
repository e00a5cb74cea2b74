package redisfanout

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Defaults for Options.
const (
	DefaultChannel             = "kvsecrets:versions"
	DefaultRecheckSpread       = time.Minute
	DefaultReplayWindow        = 5 * time.Minute
	DefaultPublishTimeout      = 2 * time.Second
	DefaultPublishedTTL        = time.Hour
	DefaultMaxReconnectBackoff = 5 * time.Second
	// DefaultReadRate is three quarters of Key Vault's 4,000 reads per
	// 10 s per vault, leaving the rest to cold starts, schedules and other
	// applications of the vault.
	DefaultReadRate = 300

	// MinKeySize is the shortest Options.Key accepted: 32 bytes, the
	// output size of SHA-256, as RFC 2104 advises for HMAC keys.
	MinKeySize = 32
	// MaxMessageSize bounds a message on the channel; longer ones are
	// rejected unread. A notice is about 300 bytes.
	MaxMessageSize = 1024
)

// Fixed tuning that needs no option.
const (
	queueSize       = 64                     // rotations waiting to be published
	minBackoff      = 100 * time.Millisecond // first pause after a failed subscription
	healthInterval  = 30 * time.Second       // a silent connection is pinged after this, and replaced after as long again
	maxChannelLen   = 256
	rejectLogPeriod = time.Second      // at most one Warn per period for rejected messages
	countInterval   = 15 * time.Second // how often a FanOut announces itself as a member
	memberTTL       = 45 * time.Second // a member not announced for this long is not counted
	maxMembers      = 100_000          // counted at most; a notice naming more is rejected
	maxQueueDelay   = 15 * time.Minute // a notice's slice starts at most this far ahead
)

// Options configures a FanOut. Key is required; every other zero field
// means its default, and negative durations are refused by New.
type Options struct {
	// Key is the HMAC-SHA256 key shared by every instance of the fleet,
	// at least MinKeySize (32) random bytes, kept as the application keeps
	// its other secrets (a Key Vault secret read at start-up, say).
	// Messages signed under another key are rejected. New copies it.
	Key []byte

	// Channel is the Redis Pub/Sub channel. Default DefaultChannel
	// ("kvsecrets:versions"). Fleets that share a Redis and must not hear
	// each other use different channels; the channel is part of what is
	// signed, so a message is valid on its own channel only.
	Channel string

	// RecheckSpread is the time over which every cached secret is
	// re-read once after a gap in the subscription (Redis restarted, the
	// network failed), when notices may have been missed: see
	// kvsecrets.Provider.NotifyAll. The whole fleet reconnects at about
	// the same moment, so N instances caching M secrets make N×M reads;
	// Key Vault allows 4,000 reads per 10 s per vault, so the spread
	// should be at least N×M/400 seconds. Default 1 minute: up to 24,000
	// reads, 100 instances × 240 secrets.
	RecheckSpread time.Duration

	// ReplayWindow bounds a message's age: one whose timestamp is further
	// than this from the receiver's clock, past or future, is rejected, so
	// that a captured message cannot be replayed later. Instances' clocks
	// must agree within it. Default 5 minutes.
	ReplayWindow time.Duration

	// PublishTimeout bounds one publication. Publications run on a
	// goroutine of the FanOut, never in the Provider's rotation hook; one
	// that fails or times out is dropped and counted. go-redis interrupts
	// a command at its context's deadline only with the client's
	// ContextTimeoutEnabled; otherwise its ReadTimeout bounds it. Default
	// 2 seconds.
	PublishTimeout time.Duration

	// PublishedTTL is how long the claim that a version was published
	// lives in Redis (the key that makes the publication happen once per
	// fleet). Default 1 hour.
	PublishedTTL time.Duration

	// MaxReconnectBackoff caps the pause between attempts to subscribe
	// again after Redis failed: pauses start at 100 ms and double, with
	// jitter. Default 5 seconds.
	MaxReconnectBackoff time.Duration

	// ReadRate is the vault reads per second the fleet's refreshes after
	// notices may take: each notice heard gets its own slice of time,
	// instances / ReadRate long, after the slices of the notices before it,
	// and every instance refreshes at a random moment of that slice. The
	// instances are counted by the publisher from the fleet's signed
	// announcements (see the package doc). So one rotation reaches
	// 1,000 instances within about 3.3 s at the default, and 20 rotations
	// at once queue into 67 s instead of 20,000 reads in the same second.
	// Default DefaultReadRate (300).
	ReadRate float64

	// Logger receives Warn logs for lost connections, dropped
	// publications and rejected messages (at most one a second, naming
	// the reason, never a message's contents), and Info logs for
	// reconnections. Default: discard.
	Logger *slog.Logger

	healthInterval time.Duration // tests shorten it; 0 means healthInterval
}

// config is Options validated, with defaults applied.
type config struct {
	key            []byte
	channel        string
	recheckSpread  time.Duration
	replayWindow   time.Duration
	publishTimeout time.Duration
	publishedTTL   time.Duration
	maxBackoff     time.Duration
	health         time.Duration
	readRate       float64
	logger         *slog.Logger
}

func (o *Options) config() (config, error) {
	if o == nil {
		return config{}, errors.New("redisfanout: Options.Key is required (at least 32 random bytes shared by the fleet), and Options are nil")
	}
	if len(o.Key) < MinKeySize {
		return config{}, fmt.Errorf("redisfanout: Options.Key is %d bytes; at least %d random bytes are required (for example from crypto/rand, or `openssl rand -base64 32` decoded)", len(o.Key), MinKeySize)
	}
	c := config{
		key:            append([]byte(nil), o.Key...),
		channel:        o.Channel,
		recheckSpread:  o.RecheckSpread,
		replayWindow:   o.ReplayWindow,
		publishTimeout: o.PublishTimeout,
		publishedTTL:   o.PublishedTTL,
		maxBackoff:     o.MaxReconnectBackoff,
		health:         o.healthInterval,
		readRate:       o.ReadRate,
		logger:         o.Logger,
	}
	switch {
	case c.readRate == 0:
		c.readRate = DefaultReadRate
	case !(c.readRate > 0 && c.readRate <= 1e6): // NaN too
		return config{}, fmt.Errorf("redisfanout: Options.ReadRate must be a positive number of reads a second, got %v", o.ReadRate)
	}
	if c.health <= 0 {
		c.health = healthInterval
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"RecheckSpread", &c.recheckSpread, DefaultRecheckSpread},
		{"ReplayWindow", &c.replayWindow, DefaultReplayWindow},
		{"PublishTimeout", &c.publishTimeout, DefaultPublishTimeout},
		{"PublishedTTL", &c.publishedTTL, DefaultPublishedTTL},
		{"MaxReconnectBackoff", &c.maxBackoff, DefaultMaxReconnectBackoff},
	} {
		switch {
		case *d.v < 0:
			return config{}, fmt.Errorf("redisfanout: Options.%s must not be negative, got %v", d.name, *d.v)
		case *d.v == 0:
			*d.v = d.def
		}
	}
	if c.publishedTTL < time.Second {
		return config{}, fmt.Errorf("redisfanout: Options.PublishedTTL must be at least a second (Redis's EX), got %v", c.publishedTTL)
	}
	if c.maxBackoff < minBackoff {
		c.maxBackoff = minBackoff
	}
	if c.channel == "" {
		c.channel = DefaultChannel
	}
	if len(c.channel) > maxChannelLen {
		return config{}, fmt.Errorf("redisfanout: Options.Channel is %d bytes; at most %d", len(c.channel), maxChannelLen)
	}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}
