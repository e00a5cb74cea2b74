package kvsecrets

// healthNote is what an entry keeps about failures since its last success.
type healthNote struct{}
