package kvsecrets

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
)

// The goroutines running a user callback (OnRotate, OnNearExpiry) right
// now, so that Close called from one of them knows not to wait for the
// goroutine it runs on.
var callbacks struct {
	mu    sync.Mutex
	depth map[uint64]int // goroutine id -> callbacks in progress on it
}

// runCallback runs fn, a user callback, marking the calling goroutine as
// inside a callback meanwhile.
func runCallback(fn func()) {
	id := goroutineID()
	callbacks.mu.Lock()
	if callbacks.depth == nil {
		callbacks.depth = map[uint64]int{}
	}
	callbacks.depth[id]++
	callbacks.mu.Unlock()
	defer func() {
		callbacks.mu.Lock()
		if callbacks.depth[id]--; callbacks.depth[id] == 0 {
			delete(callbacks.depth, id)
		}
		callbacks.mu.Unlock()
	}()
	fn()
}

// callHook runs fn, a user callback named what (OnRotate, OnNearExpiry,
// LiveOptions.OnChange…), as runCallback does, recovering a panic and
// logging it with attrs (names and versions, never values) and the stack.
// The panic value is not logged: it could be the secret itself.
func (p *Provider) callHook(what string, fn func(), attrs ...slog.Attr) {
	defer func() {
		if r := recover(); r != nil {
			attrs = append(attrs, slog.String("panic", fmt.Sprintf("%T", r)), slog.String("stack", string(debug.Stack())))
			p.cfg.logger.LogAttrs(context.Background(), slog.LevelError, "kvsecrets: "+what+" panicked", attrs...)
		}
	}()
	runCallback(fn)
}

// inCallback reports whether the calling goroutine is inside a user
// callback.
func inCallback() bool {
	callbacks.mu.Lock()
	n := len(callbacks.depth)
	callbacks.mu.Unlock()
	if n == 0 {
		return false // the common case, without reading the stack
	}
	id := goroutineID()
	callbacks.mu.Lock()
	defer callbacks.mu.Unlock()
	return callbacks.depth[id] > 0
}

// goroutineID returns the calling goroutine's id, read from the first line
// of its stack trace ("goroutine 18 [running]:"). It costs about a
// microsecond, and is used only around user callbacks and in Close.
func goroutineID() uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	if i := bytes.IndexByte(b, ' '); i > 0 {
		b = b[:i]
	}
	id, _ := strconv.ParseUint(string(b), 10, 64)
	return id
}
