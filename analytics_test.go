package quota_test

import (
	"testing"
	"time"

	"github.com/quotakit/quota"
)

// TestSeriesBucketBound checks that MaxSeriesBuckets bounds the buckets a
// Series spans exactly: as many pass, one more is refused, dense or
// sparse, by range or by Last.
func TestSeriesBucketBound(t *testing.T) {
	q, _ := newTestQuota(t, quota.Config{Plans: testPlans})
	from := time.Date(2024, time.January, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name    string
		sq      quota.SeriesQuery
		buckets int // 0: refused
	}{
		{"hourly, dense, at the bound", quota.SeriesQuery{From: from, To: from.Add(quota.MaxSeriesBuckets * time.Hour), Step: quota.PeriodHour, Dense: true}, quota.MaxSeriesBuckets},
		{"hourly, dense, one past", quota.SeriesQuery{From: from, To: from.Add((quota.MaxSeriesBuckets + 1) * time.Hour), Step: quota.PeriodHour, Dense: true}, 0},
		{"daily, sparse, one past", quota.SeriesQuery{From: from, To: from.AddDate(0, 0, quota.MaxSeriesBuckets+1), Step: quota.PeriodDay}, 0},
		{"daily, dense, by Last at the bound", quota.SeriesQuery{To: from, Last: quota.MaxSeriesBuckets, Step: quota.PeriodDay, Dense: true}, quota.MaxSeriesBuckets},
		{"daily, by Last one past", quota.SeriesQuery{To: from, Last: quota.MaxSeriesBuckets + 1, Step: quota.PeriodDay, Dense: true}, 0},
	} {
		points, err := q.Series(t.Context(), tc.sq)
		switch {
		case tc.buckets == 0 && err == nil:
			t.Errorf("%s: Series = %d points, nil error; want an error", tc.name, len(points))
		case tc.buckets > 0 && err != nil:
			t.Errorf("%s: Series = %v; want %d points", tc.name, err, tc.buckets)
		case tc.buckets > 0 && len(points) != tc.buckets:
			t.Errorf("%s: Series = %d points; want %d", tc.name, len(points), tc.buckets)
		}
	}
}
