//go:build race

package kvsecrets

// raceEnabled: the race detector slows the tests about tenfold; the
// heaviest scale down.
const raceEnabled = true
