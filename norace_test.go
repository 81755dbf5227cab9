//go:build !race

package quota_test

// raceEnabled reports a build with the race detector, under which
// sync.Pool drops items at random and allocations cannot be counted.
const raceEnabled = false
