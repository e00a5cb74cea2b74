package redisfanout

import (
	"context"
	"errors"
	"net"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Status is a FanOut's state and counters since New.
type Status struct {
	// Connected is whether the FanOut is subscribed to the channel now.
	Connected bool
	// Since is when Connected last changed (New, for a FanOut never
	// connected).
	Since time.Time
	// LastError is the last Redis failure, an *Error that names the
	// operation and a class (ErrUnreachable, ErrTimeout, ErrRefused,
	// ErrQueueFull), nil if there was none. It stays after recovery; see
	// Connected for the present.
	LastError error

	Reconnects uint64 // subscriptions made after the connection was lost or an attempt failed
	Published  uint64 // versions this instance published (it won the claim)
	Suppressed uint64 // versions not published: another instance had, or this one heard it on the channel
	Dropped    uint64 // versions not published because Redis failed, timed out or the queue was full
	Received   uint64 // messages received on the channel, valid or not, counted once handled (after Rejected or Acted)
	Rejected   uint64 // messages refused: oversized, malformed, bad signature, outside ReplayWindow, invalid notice
	Acted      uint64 // messages whose notice started a refresh (Provider.Notify returned true)
	Rechecks   uint64 // re-reads of every cached secret after a gap (Provider.NotifyAll calls)
}

// Classes of Redis failure, for errors.Is on Status.LastError.
var (
	// ErrUnreachable: the connection failed or was refused, reset or
	// closed.
	ErrUnreachable = errors.New("redisfanout: redis unreachable")
	// ErrTimeout: Redis did not answer in time.
	ErrTimeout = errors.New("redisfanout: redis timed out")
	// ErrRefused: Redis answered with an error (NOAUTH, NOPERM, READONLY…).
	ErrRefused = errors.New("redisfanout: redis refused the command")
	// ErrQueueFull: rotations came faster than they could be published.
	ErrQueueFull = errors.New("redisfanout: publish queue full")
)

// ErrClosed is returned by WaitConnected after Close.
var ErrClosed = errors.New("redisfanout: closed")

// Error is a classified Redis failure. Its message names the operation,
// the class and, for an answer from Redis, its error code (NOPERM, say),
// never a message, key or password; the underlying error is reachable with
// errors.As.
type Error struct {
	Op    string // "subscribe", "receive", "publish" or "limit" (Limiter.Wait)
	Class error  // ErrUnreachable, ErrTimeout, ErrRefused, ErrQueueFull or ErrBreakerOpen
	Code  string // Redis's error code with ErrRefused, else ""
	err   error
}

// Error returns "redisfanout: OP: CLASS", with Redis's error code if any.
func (e *Error) Error() string {
	s := "redisfanout: " + e.Op + ": " + strings.TrimPrefix(e.Class.Error(), "redisfanout: ")
	if e.Code != "" {
		s += " (" + e.Code + ")"
	}
	return s
}

// Unwrap returns the class and the underlying error.
func (e *Error) Unwrap() []error {
	if e.err == nil {
		return []error{e.Class}
	}
	return []error{e.Class, e.err}
}

// classify wraps a go-redis failure of op.
func classify(op string, err error) *Error {
	e := &Error{Op: op, Class: ErrUnreachable, err: err}
	var rerr redis.Error
	var nerr net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, errSilent), errors.As(err, &nerr) && nerr.Timeout():
		e.Class = ErrTimeout
	case errors.As(err, &rerr):
		e.Class = ErrRefused
		e.Code = errorCode(rerr.Error())
	}
	return e
}

// errorCode returns the leading upper-case word of a Redis error ("NOPERM
// this user has no permissions…"), Redis's error code; "" if there is none.
func errorCode(msg string) string {
	code, _, _ := strings.Cut(msg, " ")
	if code == "" || len(code) > 32 {
		return ""
	}
	for _, r := range code {
		if (r < 'A' || r > 'Z') && r != '_' {
			return ""
		}
	}
	return code
}
