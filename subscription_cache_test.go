package quota

import (
	"strconv"
	"sync"
	"testing"
)

func cachedFor(subject string) *cachedSub {
	return &cachedSub{sub: Subscription{Subject: subject}, version: 1}
}

// TestSubCache: a subject cached is found until dropped or evicted by
// one that collides with it; the table grows to maxCachedSubs and no
// further.
func TestSubCache(t *testing.T) {
	c := newSubCache()
	if e := c.get("a"); e != nil {
		t.Fatalf("get(a) on an empty cache = %v; want nil", e)
	}
	a := cachedFor("a")
	c.put(a)
	if e := c.get("a"); e != a {
		t.Errorf("get(a) after put(a) = %v; want it", e)
	}
	c.drop("b") // another subject: a stays
	if e := c.get("a"); e != a {
		t.Errorf("get(a) after drop(b) = %v; want it", e)
	}
	c.drop("a")
	if e := c.get("a"); e != nil {
		t.Errorf("get(a) after drop(a) = %v; want nil", e)
	}

	// Many subjects: the table grows, up to its bound.
	for i := range 4 * maxCachedSubs {
		c.put(cachedFor("s" + strconv.Itoa(i)))
	}
	if n := len(c.table.Load().slots); n != maxCachedSubs {
		t.Errorf("after %d subjects: %d slots; want %d", 4*maxCachedSubs, n, maxCachedSubs)
	}
	found := 0
	for i := range 4 * maxCachedSubs {
		s := "s" + strconv.Itoa(i)
		if e := c.get(s); e != nil {
			if e.sub.Subject != s {
				t.Fatalf("get(%s) = the entry of %s", s, e.sub.Subject)
			}
			found++
		}
	}
	if found == 0 || found > maxCachedSubs {
		t.Errorf("%d subjects cached; want some, at most %d", found, maxCachedSubs)
	}
}

// TestSubCacheConcurrent is for the race detector.
func TestSubCacheConcurrent(t *testing.T) {
	c := newSubCache()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 5000 {
				s := "s" + strconv.Itoa((i*(g+1))%3000)
				switch i % 3 {
				case 0:
					c.put(cachedFor(s))
				case 1:
					if e := c.get(s); e != nil && e.sub.Subject != s {
						t.Errorf("get(%s) = the entry of %s", s, e.sub.Subject)
					}
				default:
					c.drop(s)
				}
			}
		})
	}
	wg.Wait()
}
