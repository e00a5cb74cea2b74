//go:build !race

package kvsecrets

const raceEnabled = false
