package quota_test

import (
	"testing"

	"github.com/quotakit/quota"
	"github.com/quotakit/quota/quotatest"
)

func TestMemoryStoreConformance(t *testing.T) {
	quotatest.Run(t, func(t *testing.T) quota.Store { return quota.NewMemoryStore() })
}

// minimalStore hides every optional interface of the Store it embeds, so
// that the Quota falls back on Store.Records for analytics.
type minimalStore struct{ quota.Store }

// TestMinimalStoreConformance runs the suite on a store that implements
// Store alone: Series and TopSubjects computed by the Quota from Records
// must answer as a Summer and a Ranker do.
func TestMinimalStoreConformance(t *testing.T) {
	quotatest.Run(t, func(t *testing.T) quota.Store {
		s := minimalStore{quota.NewMemoryStore()}
		if _, ok := quota.Store(s).(quota.Summer); ok {
			t.Fatal("minimalStore is a Summer")
		}
		return s
	})
}
