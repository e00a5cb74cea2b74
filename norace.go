//go:build !race

package kvsecrets

// raceDetector is set when the race detector is on (see counter.go).
const raceDetector = false
