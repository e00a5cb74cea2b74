// Package redisfanout spreads news of Key Vault secrets' new versions
// across a fleet of instances through Redis Pub/Sub, so that a rotation
// that one instance learns of reaches all of them in seconds; and its
// Limiter shares each vault's request budget among the fleet.
//
// # Why
//
// Event Grid delivers each event once, to one endpoint URL. With the
// webhook (kvsecrets.Provider.EventGridHandler) behind a load balancer,
// one instance hears of a rotation and refreshes at once while the others
// keep the old version until their refresh schedule comes round (75–90% of
// the TTL, an hour by default). A FanOut closes that gap:
//
//	rdb := redis.NewClient(&redis.Options{Addr: "redis:6379"})
//	fan, err := redisfanout.New(secrets, rdb, &redisfanout.Options{Key: fanoutKey})
//	if err != nil {
//		return err
//	}
//	defer fan.Close() // before secrets.Close
//	mux.Handle("/events", secrets.EventGridHandler(&kvsecrets.EventGridOptions{SharedSecret: egKey}))
//
// # What travels, and what does not
//
// Whenever the Provider sees a new version of a cached secret — from the
// webhook, its own scheduled refresh, Rotate or Refresh, all of which call
// its kvsecrets.Provider.AddOnRotate hooks — the FanOut publishes the
// vault's host, the secret's name and the new version on Options.Channel
// ("kvsecrets:versions"). Every other instance's FanOut passes them to
// kvsecrets.Provider.Notify, which re-reads the secret from the vault if it
// caches it at another version (coalesced within EventCoalesceWindow), and
// ignores secrets it does not cache, other vaults and versions it already
// serves.
//
// The fleet's re-reads are paced to Options.ReadRate (300 a second by
// default, three quarters of Key Vault's 4,000 per 10 s): each notice
// heard gets its own slice of time, instances / ReadRate long, after the
// slices of the notices heard before it (at most 15 minutes ahead), and
// each instance re-reads at a random moment of it. The instances are
// counted by the publisher and signed into the notice: every FanOut
// announces itself every 15 s in a sorted set (Channel+":members") under a
// member name tagged with an HMAC of its random id, and the publisher
// counts the members announced within 45 s whose tag is valid. Every
// instance hears the same notices in the same order with the same count,
// so they agree on the slices without talking to each other, and nobody
// without the key can stretch them (idle subscribers and forged members
// are not counted; one who can delete keys can shrink the count, which
// makes refreshes sooner, not later). One rotation reaches 1,000
// instances within about 3.3 s, and twenty at once queue into about a
// minute instead of 20,000 reads in one second.
//
// Values never travel through
// Redis: each instance reads them from Key Vault with its own identity, so
// Redis and whoever can read it learn names and version ids only, and a
// message can at most make an instance re-read what Key Vault would give it
// anyway.
//
// # Authenticity and replays
//
// Each message carries an HMAC-SHA256 under Options.Key, a key of at least
// 32 random bytes shared by the fleet, over the channel's name and the
// message, checked in constant time before anything in the message is
// parsed, and a timestamp that must be within Options.ReplayWindow (5
// minutes) of the receiver's clock. A Redis user without the key can
// therefore not make an instance act, and cannot replay a captured message
// later than the window; within it, a replay names a version already
// heard and is ignored. Even a valid message only causes a coalesced
// re-read. Messages longer than MaxMessageSize, malformed, badly signed,
// stale or naming an invalid secret are rejected, counted in
// Status.Rejected and logged at Warn (at most once a second, with the
// reason and never the message).
//
// # Once per version, fleet-wide
//
// An instance that refreshes because of the fan-out sees the new version
// too, and its hook fires as the first instance's did: republishing would
// make N instances publish N messages each heard by N, an N² storm.
// Two guards prevent it. Each FanOut remembers the versions it heard on
// the channel (for Options.PublishedTTL, up to 10,000) and does not publish
// those. And publication is a claim: one Lua script sets a key
// (Channel+":published:"+HMAC of host, name and version) with SET NX EX
// PublishedTTL and publishes only if it set it, atomically, so that when
// several instances see the version by themselves — their schedules, a
// re-check after a gap — only the first publishes, and a claim is never
// made without its message. The key's name is an HMAC so that it cannot be
// set in advance by someone without the key. Status.Published counts this
// instance's publications, Status.Suppressed the ones it left to others.
//
// # When Redis fails
//
// Publication never blocks the Provider's hook: the hook queues the
// version (up to 64) for a goroutine of the FanOut, which publishes with
// Options.PublishTimeout. When Redis is down, the version is dropped and
// counted in Status.Dropped, with Status.LastError classified
// (ErrUnreachable, ErrTimeout, ErrRefused, ErrQueueFull).
//
// The subscription is kept by the FanOut: a failed connection is closed
// and made again after a pause from 100 ms doubling to
// Options.MaxReconnectBackoff, and a connection silent for 30 s is pinged
// and given up after 30 s more. When the subscription is made again after
// a gap, notices may have been missed — including those other instances
// dropped while Redis was down — so the FanOut calls
// kvsecrets.Provider.NotifyAll(Options.RecheckSpread): every cached secret
// is re-read once, spread so that the fleet stays within Key Vault's rate.
//
// # A fleet-wide request budget: Limiter
//
// Each Provider paces its own requests, but a fleet of them shares the
// vault's throttle (4,000 GETs per 10 s per vault): a hundred instances
// starting together each find it on their own, with 429s. A Limiter,
// set as every instance's kvsecrets.Options.Limiter, keeps one budget per
// vault for the whole fleet in Redis:
//
//	rdb := redis.NewClient(&redis.Options{Addr: "redis:6379", ContextTimeoutEnabled: true})
//	limiter, err := redisfanout.NewLimiter(rdb, &redisfanout.LimiterOptions{Limit: 3000, Window: 10 * time.Second})
//	if err != nil {
//		return err
//	}
//	secrets, err := kvsecrets.NewProvider(vaultURL, cred, &kvsecrets.Options{Limiter: limiter})
//
// The budget is a token bucket kept by the generic cell rate algorithm
// (GCRA, as redis-cell and redis_rate): the key Prefix+host
// ("kvsecrets:limit:myvault.vault.azure.net") holds the time at which the
// bucket's next turn is due, in microseconds on Redis's clock (TIME), so
// the instances' clocks do not matter. Before each request the Provider
// calls Limiter.Wait, which runs one short Lua script (EVALSHA; Redis 5 or
// later) that books the next turn, at most MaxWait ahead, and sleeps until
// it. The bound, exactly: the turns booked by all the Limiters sharing a
// key, each at the moment Redis's clock booked it for, number at most
// Limit+Burst in any period of length Window; with callers always
// waiting, Limit per Window. Requests reach the vault later than their
// turns by the round trip to Redis and the instance's own delays, which
// vary: count a request or two of slack beyond Limit+Burst, and set Limit
// below the vault's throttle by Burst and whatever other applications of
// the vault read (the defaults, 4,000 per 10 s with a Burst of 40, are Key
// Vault's limit itself). Every Limiter sharing a key must have the same
// Limit, Window, Burst and MaxWait. The key expires when the bucket is full again,
// so an idle vault leaves nothing in Redis; Redis learns vault hosts and
// request times, never a secret's name or value. Whoever can write the key
// can delay the fleet's requests by up to MaxWait each time (a booking
// further ahead, as a Redis whose clock went back would leave, is taken
// for garbage and reset) or let them through: the budget is as
// trustworthy as the Redis.
//
// A turn is booked before the caller sleeps for it: a caller whose context
// ends first returns its error at once and its turn is wasted (the fleet
// sends one request fewer than it could). A turn further ahead than
// MaxWait (1 minute) is not booked: Wait pauses and asks again, so that a
// crowd of callers does not book the vault for hours.
//
// When Redis fails, Wait returns an *Error (ErrUnreachable, ErrTimeout,
// ErrRefused) within Timeout (250 ms; go-redis enforces it only with the
// client's ContextTimeoutEnabled) and the Provider sends its request
// paced by itself alone, counted in kvsecrets.Stats.LimiterFailures. A
// circuit breaker then makes Waits fail at once, without asking Redis
// (ErrBreakerOpen), for 1 s, doubling on each failed probe up to 30 s:
// after each pause one Wait asks Redis again, and its answer closes the
// breaker. So while Redis is down every instance falls back to its own
// pacing without paying a Redis timeout per request. Limiter.Status
// reports the breaker and counts turns, time waited, failures and fast
// failures. A Limiter starts no goroutine and needs no Close.
//
// # Status
//
// FanOut.Status reports whether the FanOut is subscribed and since when,
// the last Redis error, and counters of reconnections, publications,
// messages received, rejected and acted on, drops and re-checks;
// FanOut.WaitConnected waits for the subscription, for a readiness check.
package redisfanout
