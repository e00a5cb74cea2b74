package kvsecrets

import (
	"runtime"
	"sync/atomic"
	_ "unsafe" // for go:linkname
)

// counter counts cached reads (Stats.Hits) at no shared cost: each P (a
// core running Go code) has a slot of its own on a cache line of its own,
// and the reader increments its P's slot while pinned to it, so two
// goroutines never write one slot at the same moment and the increment
// needs no lock prefix. Ps beyond the slots made at start-up (GOMAXPROCS
// raised later) share one atomic slot. load sums the slots.
//
// The striped counter this replaces chose a stripe by a hash of the
// caller's stack address: about one run in 30 two busy goroutines hashed to
// the same stripe, and a parallel cached Get took 30–55 ns instead of 7–9.
// Choosing by P cannot collide.
type counter struct {
	_     [64]byte // off the cache line of the fields before it, which readers load
	slots []countSlot
	extra atomic.Uint64 // Ps without a slot; everything before init
}

type countSlot struct {
	n uint64 // written only by the P pinned to this slot; read atomically by load
	_ [56]byte
}

// plainCount means a slot is incremented with an ordinary add. The race
// detector would report the add against load's atomic read (harmless: one
// writer, a word-sized value), and a 32-bit platform could tear a 64-bit
// add: both use an atomic add instead.
const plainCount = !raceDetector && ^uint(0)>>63 == 1

// procPin pins the calling goroutine to its P, whose id it returns, until
// procUnpin: nothing else runs on that P meanwhile. The runtime keeps both
// for linkname (go.dev/issue/67401); sync.Pool is built on them.
//
//go:linkname procPin runtime.procPin
func procPin() int

//go:linkname procUnpin runtime.procUnpin
func procUnpin()

func (c *counter) init() {
	c.slots = make([]countSlot, max(runtime.GOMAXPROCS(0), runtime.NumCPU()))
}

func (c *counter) inc() {
	s := c.slots
	id := procPin()
	if plainCount && uint(id) < uint(len(s)) {
		s[id].n++
		procUnpin()
		return
	}
	procUnpin()
	c.incSlow(id)
}

// incSlow is inc without the plain add: atomic, in the slot of P id (which
// the caller may have left since) or, past the slots, the shared one.
func (c *counter) incSlow(id int) {
	if uint(id) < uint(len(c.slots)) {
		atomic.AddUint64(&c.slots[id].n, 1)
		return
	}
	c.extra.Add(1)
}

func (c *counter) load() uint64 {
	n := c.extra.Load()
	for i := range c.slots {
		n += atomic.LoadUint64(&c.slots[i].n)
	}
	return n
}
