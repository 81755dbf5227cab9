// Package quota enforces a SaaS plan's usage limits inside the app.
//
// A plan (FREE, PROFESSIONAL, ENTERPRISE) limits how often each action may
// happen in a billing period, grants features, and caps allocations such
// as storage bytes or team seats. A Quota records every use with its
// metadata in a ledger, keeps per-period totals, decides atomically whether
// a use is allowed, and reports usage with a warning level at 80, 90 and
// 100 %.
//
// # Quick start
//
//	ctx := context.Background()
//
//	// FREE allows 5 diagram uploads a month; PRO allows 100.
//	q, err := quota.New(quota.NewMemoryStore(), quota.Config{
//		Plans: []quota.Plan{
//			{Name: "FREE", Limits: map[string][]quota.Limit{"diagram.upload": {quota.PerMonth(5)}}},
//			{Name: "PRO", Limits: map[string][]quota.Limit{"diagram.upload": {quota.PerMonth(100)}}},
//		},
//	})
//	if err != nil {
//		log.Fatal(err)
//	}
//	defer q.Close()
//
//	if err := q.Subscribe(ctx, quota.Subscription{Subject: "alice", Plan: "FREE"}); err != nil {
//		log.Fatal(err)
//	}
//	for i := 1; i <= 6; i++ {
//		// Consume checks and records in one atomic step.
//		d, err := q.Consume(ctx, quota.Use{Subject: "alice", Action: "diagram.upload", Amount: 1})
//		if err != nil {
//			log.Fatal(err) // a failure, never a denial
//		}
//		fmt.Printf("upload %d: allowed=%t used=%d/%d level=%s\n", i, d.Allowed, d.Used, d.Limit, d.Level)
//	}
//
// The sixth upload is denied: Consume returns a Decision with Allowed false
// and a nil error. A denial is a result; errors are for invalid input
// (matching ErrInvalidSubject, ErrInvalidAmount and the other sentinels,
// with nothing written) and for store failures.
//
// # Checking, consuming, tracking, reserving
//
// Check answers whether a use would be allowed and never writes. Consume
// checks and records in one atomic step and refuses a use past a limit.
// Track records a use that already happened, even past a limit, because
// billing must see it. Reserve holds an amount at once, so that a slow
// operation cannot be raced past its limit; Commit records it, Cancel
// releases it, and a hold neither committed nor cancelled expires after
// Config.ReservationTTL. An action may carry several limits (20 a day and
// 100 a month): a use is granted only if all allow it, and then all are
// charged. Allocation limits (Total) go down again with negative uses.
//
// # Periods
//
// Hours, days and weeks (from Monday) begin in the subscription's time
// zone. Months and years begin on the billing anchor's day of month at
// midnight in that zone, clamped to short months without drifting: a
// subscription anchored on 31 January renews on 28 or 29 February, 31
// March, 30 April.
//
// # Plan changes
//
// After Subscribe or SchedulePlan returns, no use that Consume, Track or
// Reserve then makes is judged against the plan it replaced, whichever
// Quota makes it, in this process or another sharing the store. Over a
// store that versions subscriptions (Versioned: MemoryStore and SQLStore
// are) this holds for every use the store applies after the change, even
// one that began before it: the store applies a use only if the
// subscription it was judged against is still the one stored, and the
// Quota otherwise reads the subscription again and judges the use again.
// Such a Quota caches the subscriptions of the subjects it meters, at
// most 65,536, and reads none per use; over another store it reads the
// subscription for every use. Check, Usage, HasFeature, Limits and the
// other readers read the subscription from the store on every call.
//
// # Failures, cancellation and time bounds
//
// A denial is a Decision; an error is a failure. Bad input gets an error
// matching one of the sentinels (ErrInvalidSubject, ErrInvalidAmount,
// ErrInvalidMetadata, ...) and writes nothing. A failure of the store (a
// database that does not answer, a connection cut, a call past
// Config.StoreTimeout) matches ErrStoreUnavailable and wraps its cause.
//
// A call that fails after it reached the store may still have been
// applied: the database may commit a use and lose the connection before
// the answer arrives, and a context cancelled during the call does not
// undo what the database already did. So an error from Consume, Track or
// Commit does not prove that nothing was recorded. Repeat a Consume or a
// Track with the same idempotency key (Use.Key) to learn its outcome: the
// repeat returns the first outcome if there was one. A Commit repeated
// after such an error answers ErrReservationNotFound when the first one
// was applied. A Reserve that fails this way leaves no hold behind: the
// Quota releases it in the background, and a Quota sweeps expired holds
// every Config.SweepInterval.
//
// # Users and store authors
//
// Applications use New, Config, Quota and its methods, Plan and Limit
// (PerMonth, Total, ...), Use, Decision, LimitStatus, LimitStatuses,
// Reservation, Subscription, Report, SeriesQuery, TopQuery, HistoryQuery,
// Record, Notification, the HTTP Middleware and UsageHandler with their
// options, and the two stores: MemoryStore and SQLStore.
//
// Store authors implement Store, and optionally Summer, Ranker, Pruner,
// Outbox, Sweeper and Versioned; they meet Op, CounterOp, CounterKey,
// Counter, Crossing, Hold, ApplyResult, Notice, RecordQuery, SumQuery,
// Sum and VersionNone, and may call Admit, the admission rule. Package
// quotatest is the conformance suite every store passes.
//
// # Stores
//
// MemoryStore keeps usage in memory, for tests and single-process apps.
// SQLStore keeps it in SQLite or PostgreSQL through bun. Every Store
// passes the conformance suite in package quotatest.
package quota
