package quota

import (
	"context"
	"hash/maphash"
	"sync/atomic"
	"time"
)

// maxCachedSubs bounds the subjects whose subscription a Quota caches.
const maxCachedSubs = 1 << 16

// minCachedSubs is the size a subCache starts at.
const minCachedSubs = 1 << 10

// subCache remembers the subscriptions that uses resolved over a
// Versioned store, so that a use reads no subscription: the store checks
// the version as it applies the use (Op.Version), and a use judged
// against a subscription that was replaced meanwhile is refused, dropped
// from the cache and judged again (see applyHold).
//
// It is a direct-mapped table of immutable entries, indexed by a hash of
// the subject, which grows from minCachedSubs to maxCachedSubs slots as
// it fills. A subject takes the slot of the one it collides with, so that
// eviction costs nothing, and a hit is a hash, an atomic load and a
// comparison, without lock or allocation. It is safe for concurrent use.
type subCache struct {
	seed  maphash.Seed
	table atomic.Pointer[subTable]
}

type subTable struct {
	slots []atomic.Pointer[cachedSub]
	// filled counts the slots that hold an entry, about: the table
	// grows when three quarters are.
	filled atomic.Int64
}

// cachedSub is a subscription resolved but for the instant, which
// chooses between Plan and NextPlan. It is never changed once cached.
type cachedSub struct {
	sub Subscription
	// plan and next are the catalog's Plan and NextPlan; nil when the
	// catalog does not define them.
	plan, next *Plan
	loc        *time.Location
	version    int64 // the Op.Version of uses judged against sub
}

func newSubCache() *subCache {
	c := &subCache{seed: maphash.MakeSeed()}
	c.table.Store(&subTable{slots: make([]atomic.Pointer[cachedSub], minCachedSubs)})
	return c
}

// slot returns the slot of subject in t.
func (c *subCache) slot(t *subTable, subject string) *atomic.Pointer[cachedSub] {
	return &t.slots[maphash.String(c.seed, subject)&uint64(len(t.slots)-1)]
}

// get returns the entry of subject, or nil.
func (c *subCache) get(subject string) *cachedSub {
	if e := c.slot(c.table.Load(), subject).Load(); e != nil && e.sub.Subject == subject {
		return e
	}
	return nil
}

// put caches e, in place of the subject it collides with if any.
func (c *subCache) put(e *cachedSub) {
	t := c.table.Load()
	if c.slot(t, e.sub.Subject).Swap(e) != nil {
		return
	}
	if n := len(t.slots); t.filled.Add(1) > int64(n/4*3) && n < maxCachedSubs {
		// Start again, empty, twice as large: the subjects in use come
		// back as they are used.
		c.table.CompareAndSwap(t, &subTable{slots: make([]atomic.Pointer[cachedSub], 2*n)})
	}
}

// drop forgets the subscription of subject.
func (c *subCache) drop(subject string) {
	t := c.table.Load()
	slot := c.slot(t, subject)
	if e := slot.Load(); e != nil && e.sub.Subject == subject && slot.CompareAndSwap(e, nil) {
		t.filled.Add(-1)
	}
}

// at resolves e at now into s; false when the plan in force then is not
// in the catalog.
func (e *cachedSub) at(q *Quota, now time.Time, s *subscriber) bool {
	p := e.plan
	if e.sub.NextPlan != "" && !now.Before(e.sub.NextPlanAt) {
		p = e.next
	}
	if p == nil {
		return false
	}
	s.sub, s.plan, s.loc, s.windows, s.q, s.version = e.sub, p, e.loc, &q.windows, q, e.version
	return true
}

// resolveUse resolves the subscription of subject at now into s, for a
// use that the store applies (Consume, Track, Reserve): from the cache
// over a Versioned store, which checks the version as it applies the use,
// and otherwise from the store. It reports whether it came from the
// cache. Check and the other readers call resolve: they are not checked.
func (q *Quota) resolveUse(ctx context.Context, subject string, now time.Time, s *subscriber) (cached bool, err error) {
	if q.subs != nil {
		if e := q.subs.get(subject); e != nil && e.at(q, now, s) {
			return true, nil
		}
	}
	return false, q.resolveFresh(ctx, subject, now, s)
}

// resolveFresh resolves the subscription of subject at now from the store
// into s, and caches it when q caches and the store versioned it.
func (q *Quota) resolveFresh(ctx context.Context, subject string, now time.Time, s *subscriber) error {
	r, err := q.resolve(ctx, subject, now)
	if err != nil {
		return err
	}
	*s = r
	if q.subs == nil || s.version == 0 {
		return nil
	}
	e := &cachedSub{sub: s.sub, plan: q.plans[s.sub.Plan], loc: s.loc, version: s.version}
	if s.sub.NextPlan != "" {
		e.next = q.plans[s.sub.NextPlan]
	}
	q.subs.put(e)
	return nil
}

// forget drops the cached subscription of subject, if q caches.
func (q *Quota) forget(subject string) {
	if q.subs != nil {
		q.subs.drop(subject)
	}
}
