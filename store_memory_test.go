package quota_test

import (
	"testing"

	"github.com/quotakit/quota"
	"github.com/quotakit/quota/quotatest"
)

func TestMemoryStoreConformance(t *testing.T) {
	quotatest.Run(t, func(t *testing.T) quota.Store { return quota.NewMemoryStore() })
}
