package quota

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"
)

var (
	_ Store     = (*MemoryStore)(nil)
	_ Summer    = (*MemoryStore)(nil)
	_ Ranker    = (*MemoryStore)(nil)
	_ Pruner    = (*MemoryStore)(nil)
	_ Outbox    = (*MemoryStore)(nil)
	_ Sweeper   = (*MemoryStore)(nil)
	_ Versioned = (*MemoryStore)(nil)
)

// MemoryStore is a Store that keeps everything in memory, for tests and
// single-process apps that can lose their usage on restart. The zero value
// is not usable; call NewMemoryStore. It is safe for concurrent use: one
// mutex makes every operation atomic.
type MemoryStore struct {
	mu       sync.Mutex
	closed   bool
	counters map[CounterKey]*memCounter
	records  ledger
	keys     map[memKey]*memOutcome
	holds    map[string]*memHold
	subs     map[string]Subscription
	nextID   int64
	outbox   []*memNotice // oldest first
	noticeID int64
}

type memNotice struct {
	Notice
	due          time.Time // when it may be claimed again, after a Retry
	claimedUntil time.Time
}

type memCounter struct {
	subject, action uint32 // interned in the ledger
	marked          uint16 // bit m set: mark m was reached
	period          Period
	start, end      time.Time
	marks           []int64 // the CounterOp.Marks of the last write
	used            int64
	limit           int64
	holds           map[string]*memHold
}

type memKey struct{ subject, key string }

type memOutcome struct {
	fingerprint string
	counters    []Counter
	recordID    int64
	holdID      string
	holdExpires time.Time
	// settled reports that the hold of the outcome was committed: the
	// key stays claimed after its hold is gone.
	settled bool
}

type memHold struct {
	id       string
	expires  time.Time
	amount   int64
	record   Record
	counters []*memCounter
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{
		counters: make(map[CounterKey]*memCounter),
		keys:     make(map[memKey]*memOutcome),
		holds:    make(map[string]*memHold),
		subs:     make(map[string]Subscription),
	}
}

func (s *MemoryStore) lock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	return nil
}

// held returns the unexpired holds' total on c, dropping expired ones
// when sweep is set.
func (c *memCounter) held(now time.Time, s *MemoryStore, sweep bool) int64 {
	var n int64
	for id, h := range c.holds {
		if !h.expires.After(now) {
			if sweep {
				s.dropHold(h)
				delete(s.holds, id)
			}
			continue
		}
		n += h.amount
	}
	return n
}

func (s *MemoryStore) dropHold(h *memHold) {
	for _, c := range h.counters {
		delete(c.holds, h.id)
	}
}

// Apply implements Store.
func (s *MemoryStore) Apply(ctx context.Context, op *Op) (ApplyResult, error) {
	if err := s.lock(ctx); err != nil {
		return ApplyResult{}, err
	}
	defer s.mu.Unlock()

	if !s.current(op) {
		return ApplyResult{}, ErrSubscriptionChanged
	}
	if res, ok, err := s.replay(op); ok || err != nil {
		return res, err
	}
	var csBuf [MaxLimits]*memCounter
	cs, out := s.read(op, csBuf[:0])
	refused, err := Admit(op, out)
	if err != nil {
		return ApplyResult{}, err
	}
	if refused {
		return ApplyResult{Counters: out}, nil
	}
	res := ApplyResult{Applied: true, Counters: out}
	s.charge(op, cs, &res)
	if op.Hold == nil {
		for i, c := range cs {
			for _, m := range s.mark(c, op.Record.Time) {
				res.Crossed = append(res.Crossed, Crossing{Counter: i, Mark: m})
			}
		}
	}
	if r := &op.Record; r.Key != "" {
		s.keys[memKey{r.Subject, r.Key}] = &memOutcome{
			fingerprint: op.Fingerprint,
			counters:    append([]Counter(nil), out...),
			recordID:    res.RecordID,
			holdID:      res.HoldID,
			holdExpires: res.HoldExpiresAt,
		}
	}
	return res, nil
}

// current reports whether op was judged against the subscription stored
// (Op, step 0).
func (s *MemoryStore) current(op *Op) bool {
	if op.Version == 0 {
		return true
	}
	sub, ok := s.subs[op.Record.Subject]
	if op.Version == VersionNone {
		return !ok
	}
	return ok && sub.Version == op.Version
}

// Versioned implements Versioned: MemoryStore keeps Subscription.Version
// and honours Op.Version.
func (*MemoryStore) Versioned() bool { return true }

// replay returns the first outcome of op's key, if it has one.
func (s *MemoryStore) replay(op *Op) (ApplyResult, bool, error) {
	r := &op.Record
	if r.Key == "" {
		return ApplyResult{}, false, nil
	}
	k := memKey{r.Subject, r.Key}
	o, ok := s.keys[k]
	if !ok {
		return ApplyResult{}, false, nil
	}
	if o.holdID != "" && !o.settled {
		// A key whose hold was cancelled or expired uncommitted was
		// never used: it is claimed anew.
		if h := s.holds[o.holdID]; h == nil || !h.expires.After(op.Now) {
			delete(s.keys, k)
			return ApplyResult{}, false, nil
		}
	}
	if o.fingerprint != op.Fingerprint {
		return ApplyResult{}, false, ErrIdempotencyConflict
	}
	return ApplyResult{Applied: true, Replayed: true, Counters: append(op.Dst[:0], o.counters...), RecordID: o.recordID, HoldID: o.holdID, HoldExpiresAt: o.holdExpires}, true, nil
}

// read returns op's counters (nil for those never written) appended to
// cs, and their figures as they stand, in op.Dst when it has room.
func (s *MemoryStore) read(op *Op, cs []*memCounter) ([]*memCounter, []Counter) {
	out := op.Dst[:0]
	if cap(out) < len(op.Counters) {
		out = make([]Counter, 0, len(op.Counters))
	}
	out = out[:len(op.Counters)]
	for i := range op.Counters {
		// By pointer and field by field: a CounterOp and a Counter are
		// over 100 bytes each.
		co, o := &op.Counters[i], &out[i]
		c := s.counters[co.CounterKey]
		cs = append(cs, c)
		o.CounterKey, o.End, o.Used, o.Held, o.Max = co.CounterKey, co.End, 0, 0, 0
		if c != nil {
			o.Used, o.Held, o.Max = c.used, c.held(op.Now, s, true), c.limit
		}
	}
	return cs, out
}

// charge applies an admitted op: a hold on every counter, or its amount
// added to every counter and its record appended. It creates the
// counters never written, and updates res and res.Counters.
func (s *MemoryStore) charge(op *Op, cs []*memCounter, res *ApplyResult) {
	r, a, out := &op.Record, op.Record.Amount, res.Counters
	var h *memHold
	if op.Hold != nil {
		h = &memHold{id: op.Hold.ID, expires: op.Hold.ExpiresAt, amount: a, record: *r}
		h.record.Metadata = append([]byte(nil), r.Metadata...)
		s.holds[h.id] = h
		res.HoldID, res.HoldExpiresAt = h.id, h.expires
	}
	for i := range op.Counters {
		co, c := &op.Counters[i], cs[i]
		if c == nil {
			c = &memCounter{period: co.Period, start: co.Start, end: co.End, subject: s.records.intern(co.Subject), action: s.records.intern(co.Action)}
			s.counters[co.CounterKey] = c
			cs[i] = c
		}
		c.limit, c.marks = co.Max, co.Marks
		out[i].Max = co.Max
		if h != nil {
			if c.holds == nil {
				c.holds = make(map[string]*memHold)
			}
			c.holds[h.id] = h
			h.counters = append(h.counters, c)
			out[i].Held += a
		} else {
			c.used += a
			out[i].Used += a
		}
	}
	if h == nil {
		s.nextID++
		s.records.append(r, s.nextID, cs[0].subject, cs[0].action)
		res.RecordID = s.nextID
	}
}

// mark sets the marks of c that its Used reaches first, adds a notice
// for the highest of them, and returns them, ascending.
func (s *MemoryStore) mark(c *memCounter, at time.Time) []int {
	var set []int
	for m, v := range c.marks[:min(len(c.marks), MaxMarks)] {
		if bit := uint16(1) << m; v > 0 && v <= c.used && c.marked&bit == 0 {
			c.marked |= bit
			set = append(set, m)
		}
	}
	if len(set) > 0 {
		s.noticeID++
		s.outbox = append(s.outbox, &memNotice{Notice: Notice{
			ID: s.noticeID,
			Counter: Counter{
				CounterKey: CounterKey{Subject: s.records.names[c.subject], Action: s.records.names[c.action], Period: c.period, Start: c.start},
				End:        c.end, Used: c.used, Max: c.limit,
			},
			Mark: set[len(set)-1],
			At:   at,
		}})
	}
	return set
}

// Commit implements Store.
func (s *MemoryStore) Commit(ctx context.Context, id string, amount int64, now time.Time) (Record, error) {
	if err := s.lock(ctx); err != nil {
		return Record{}, err
	}
	defer s.mu.Unlock()
	h := s.holds[id]
	if h == nil {
		return Record{}, ErrReservationNotFound
	}
	if !h.expires.After(now) {
		s.dropHold(h)
		delete(s.holds, id)
		return Record{}, ErrReservationExpired
	}
	if amount <= 0 || amount > h.amount {
		return Record{}, fmt.Errorf("%w: commit of %d on a hold of %d", ErrInvalidAmount, amount, h.amount)
	}
	s.dropHold(h)
	delete(s.holds, id)
	if h.record.Key != "" {
		if o := s.keys[memKey{h.record.Subject, h.record.Key}]; o != nil && o.holdID == id {
			o.settled = true
		}
	}
	for _, c := range h.counters {
		c.used += amount
		s.mark(c, h.record.Time)
	}
	r := h.record
	s.nextID++
	r.ID = s.nextID
	r.Amount = amount
	if len(r.Metadata) == 0 {
		r.Metadata = nil
	}
	s.records.append(&r, r.ID, h.counters[0].subject, h.counters[0].action)
	return r, nil
}

// Cancel implements Store.
func (s *MemoryStore) Cancel(ctx context.Context, id string, now time.Time) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	h := s.holds[id]
	if h == nil {
		return ErrReservationNotFound
	}
	s.dropHold(h)
	delete(s.holds, id)
	return nil
}

// Counters implements Store.
func (s *MemoryStore) Counters(ctx context.Context, keys []CounterKey, now time.Time) ([]Counter, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	out := make([]Counter, len(keys))
	for i, k := range keys {
		out[i].CounterKey = k
		if c := s.counters[k]; c != nil {
			out[i].End, out[i].Used, out[i].Max = c.end, c.used, c.limit
			out[i].Held = c.held(now, s, false)
		}
	}
	return out, nil
}

// PutSubscription implements Store.
func (s *MemoryStore) PutSubscription(ctx context.Context, sub Subscription) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	s.subs[sub.Subject] = cloneSubscription(sub)
	return nil
}

// GetSubscription implements Store.
func (s *MemoryStore) GetSubscription(ctx context.Context, subject string) (Subscription, error) {
	if err := s.lock(ctx); err != nil {
		return Subscription{}, err
	}
	defer s.mu.Unlock()
	sub, ok := s.subs[subject]
	if !ok {
		return Subscription{}, ErrNoSubscription
	}
	return cloneSubscription(sub), nil
}

func cloneSubscription(s Subscription) Subscription {
	if s.Overrides != nil {
		ov := make(map[string][]Limit, len(s.Overrides))
		for a, ls := range s.Overrides {
			ov[a] = append([]Limit(nil), ls...)
		}
		s.Overrides = ov
	}
	return s
}

// Records implements Store.
func (s *MemoryStore) Records(ctx context.Context, q RecordQuery) ([]Record, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	// Records are appended in ID order: [lo, hi) holds the IDs in range.
	l := &s.records
	lo := sort.Search(l.len(), func(i int) bool { return l.at(i).id > q.AfterID })
	hi := l.len()
	if q.BeforeID != 0 {
		hi = sort.Search(l.len(), func(i int) bool { return l.at(i).id >= q.BeforeID })
	}
	var out []Record
	for k := lo; k < hi; k++ {
		i := k
		if q.Descending {
			i = hi - 1 - (k - lo)
		}
		w := l.at(i)
		switch {
		case q.Subject != "" && l.names[w.subject] != q.Subject,
			q.Action != "" && l.names[w.action] != q.Action:
			continue
		}
		r := l.record(w)
		if !q.From.IsZero() && r.Time.Before(q.From) || !q.To.IsZero() && !r.Time.Before(q.To) {
			continue
		}
		out = append(out, r)
		if q.Limit > 0 && len(out) == q.Limit {
			break
		}
	}
	return out, nil
}

// local marks MemoryStore as a store that never waits on I/O.
func (*MemoryStore) local() {}

// Close drops the store's contents. Every later call but Close returns
// ErrClosed.
func (s *MemoryStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		s.counters, s.records, s.keys, s.holds, s.subs = nil, ledger{}, nil, nil, nil
	}
	return nil
}

// ledger is the append-only list of records. It keeps them in fixed-size
// chunks of pointer-free rows, so that appending never copies the rows
// already kept and the garbage collector never scans them: subjects and
// actions are interned, and the rare optional strings live aside.
type ledger struct {
	chunks  [][]row
	n       int
	rollups map[rollKey]*rollup // pruned records, by quarter hour
	names   []string            // interned subjects and actions
	index   map[string]uint32   // name -> position in names
	extras  []rowExtra
}

type row struct {
	id      int64
	amount  int64
	sec     int64
	nsec    int32
	subject uint32
	action  uint32
	extra   int32 // index in extras, or -1
}

type rollKey struct {
	subject, action uint32
	quarter         int64 // Unix time / RollupStep
}

type rollup struct{ amount, count int64 }

type rowExtra struct {
	resourceID string
	key        string
	metadata   []byte
}

const ledgerChunk = 1024

// intern returns the number of name, adding it if new.
func (l *ledger) intern(name string) uint32 {
	if i, ok := l.index[name]; ok {
		return i
	}
	if l.index == nil {
		l.index = make(map[string]uint32)
	}
	i := uint32(len(l.names))
	l.names = append(l.names, name)
	l.index[name] = i
	return i
}

// append adds r with the ID id, its subject and action interned as
// subject and action.
func (l *ledger) append(r *Record, id int64, subject, action uint32) {
	if l.n%ledgerChunk == 0 {
		l.chunks = append(l.chunks, make([]row, 0, ledgerChunk))
	}
	w := row{id: id, amount: r.Amount, sec: r.Time.Unix(), nsec: int32(r.Time.Nanosecond()), subject: subject, action: action, extra: -1}
	if r.ResourceID != "" || r.Key != "" || len(r.Metadata) > 0 {
		w.extra = int32(len(l.extras))
		l.extras = append(l.extras, rowExtra{resourceID: r.ResourceID, key: r.Key, metadata: append([]byte(nil), r.Metadata...)})
	}
	c := &l.chunks[len(l.chunks)-1]
	*c = append(*c, w)
	l.n++
}

func (l *ledger) len() int { return l.n }

func (l *ledger) at(i int) *row { return &l.chunks[i/ledgerChunk][i%ledgerChunk] }

// record rebuilds the record of w.
func (l *ledger) record(w *row) Record {
	r := Record{
		ID:      w.id,
		Subject: l.names[w.subject],
		Action:  l.names[w.action],
		Amount:  w.amount,
		Time:    time.Unix(w.sec, int64(w.nsec)).UTC(),
	}
	if w.extra >= 0 {
		x := &l.extras[w.extra]
		r.ResourceID, r.Key = x.resourceID, x.key
		if len(x.metadata) > 0 {
			r.Metadata = append([]byte(nil), x.metadata...)
		}
	}
	return r
}

// totals calls f for every record and every rollup of pruned records, with
// its subject, action, time and totals.
func (l *ledger) totals(f func(subject, action uint32, t time.Time, amount, count int64)) {
	for i := 0; i < l.len(); i++ {
		w := l.at(i)
		f(w.subject, w.action, time.Unix(w.sec, int64(w.nsec)), w.amount, 1)
	}
	for k, r := range l.rollups {
		f(k.subject, k.action, time.Unix(k.quarter*int64(RollupStep/time.Second), 0), r.amount, r.count)
	}
}

// Sums adds up the records q selects per bucket.
func (s *MemoryStore) Sums(ctx context.Context, q SumQuery) ([]Sum, error) {
	if len(q.Bounds) < 2 {
		return nil, fmt.Errorf("sums: %d bounds, want at least 2", len(q.Bounds))
	}
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	l := &s.records
	type cell struct {
		bucket int
		action uint32
	}
	acc := map[cell]*Sum{}
	first, last := q.Bounds[0], q.Bounds[len(q.Bounds)-1]
	l.totals(func(subject, action uint32, t time.Time, amount, count int64) {
		if q.Subject != "" && l.names[subject] != q.Subject || q.Action != "" && l.names[action] != q.Action ||
			t.Before(first) || !t.Before(last) {
			return
		}
		b := sort.Search(len(q.Bounds), func(i int) bool { return q.Bounds[i].After(t) }) - 1
		c := cell{bucket: b}
		if q.ByAction {
			c.action = action
		}
		sum := acc[c]
		if sum == nil {
			sum = &Sum{Bucket: b}
			if q.ByAction {
				sum.Action = l.names[action]
			}
			acc[c] = sum
		}
		sum.Amount += amount
		sum.Count += count
	})
	out := make([]Sum, 0, len(acc))
	for _, sum := range acc {
		out = append(out, *sum)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Bucket != out[j].Bucket {
			return out[i].Bucket < out[j].Bucket
		}
		return out[i].Action < out[j].Action
	})
	return out, nil
}

// Top returns the subjects with the largest totals of q.Action.
func (s *MemoryStore) Top(ctx context.Context, q TopQuery) ([]SubjectTotal, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	l := &s.records
	action, ok := l.index[q.Action]
	if !ok {
		return nil, nil
	}
	totals := map[uint32]*SubjectTotal{}
	l.totals(func(subject, act uint32, t time.Time, amount, count int64) {
		if act != action || t.Before(q.From) || !t.Before(q.To) {
			return
		}
		st := totals[subject]
		if st == nil {
			st = &SubjectTotal{Subject: l.names[subject]}
			totals[subject] = st
		}
		st.Amount += amount
		st.Count += count
	})
	out := make([]SubjectTotal, 0, len(totals))
	for _, st := range totals {
		out = append(out, *st)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Amount != out[j].Amount {
			return out[i].Amount > out[j].Amount
		}
		return out[i].Subject < out[j].Subject
	})
	if len(out) > q.Limit {
		out = out[:q.Limit]
	}
	return out, nil
}

// Prune deletes up to limit records whose Time is before the cutoff,
// folding them into rollups.
func (s *MemoryStore) Prune(ctx context.Context, before time.Time, limit int) (int64, error) {
	if err := s.lock(ctx); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	l := &s.records
	cut := before.Unix()
	var kept ledger
	kept.names, kept.index, kept.rollups = l.names, l.index, l.rollups
	if kept.rollups == nil {
		kept.rollups = make(map[rollKey]*rollup)
	}
	var n int64
	for i := 0; i < l.len(); i++ {
		w := l.at(i)
		if n < int64(limit) && (w.sec < cut || w.sec == cut && int64(w.nsec) < int64(before.Nanosecond())) {
			k := rollKey{subject: w.subject, action: w.action, quarter: floorDiv64(w.sec, int64(RollupStep/time.Second))}
			r := kept.rollups[k]
			if r == nil {
				r = &rollup{}
				kept.rollups[k] = r
			}
			r.amount += w.amount
			r.count++
			n++
			continue
		}
		r := l.record(w)
		kept.append(&r, r.ID, w.subject, w.action)
	}
	if n > 0 {
		s.records = kept
	}
	return n, nil
}

func floorDiv64(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// Claim implements Outbox.
func (s *MemoryStore) Claim(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]Notice, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	var out []Notice
	for _, n := range s.outbox {
		if len(out) >= limit {
			break
		}
		if n.due.After(now) || n.claimedUntil.After(now) {
			continue
		}
		n.claimedUntil = now.Add(lease)
		out = append(out, n.Notice)
	}
	return out, nil
}

// Ack implements Outbox.
func (s *MemoryStore) Ack(ctx context.Context, id int64) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	s.outbox = slices.DeleteFunc(s.outbox, func(n *memNotice) bool { return n.ID == id })
	return nil
}

// Retry implements Outbox.
func (s *MemoryStore) Retry(ctx context.Context, id int64, at time.Time) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	for _, n := range s.outbox {
		if n.ID == id {
			n.due, n.claimedUntil = at, time.Time{}
			n.Attempts++
		}
	}
	return nil
}

// Sweep implements Sweeper.
func (s *MemoryStore) Sweep(ctx context.Context, now time.Time, limit int) (int64, error) {
	if err := s.lock(ctx); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	var n int64
	for id, h := range s.holds {
		if n >= int64(limit) {
			break
		}
		if !h.expires.After(now) {
			s.dropHold(h)
			delete(s.holds, id)
			n++
		}
	}
	return n, nil
}
