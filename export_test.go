package quota

import "context"

// SetBatchHook makes s call f with the context of every call of each
// batch it commits, in the order the batch applied them, before its
// writer takes its next batch. Set it before s is used.
func SetBatchHook(s *SQLStore, f func(calls []context.Context)) {
	if s.batch == nil {
		panic("SetBatchHook: the store does not batch")
	}
	s.batch.hook = func(calls []*sqlCall) {
		ctxs := make([]context.Context, len(calls))
		for i, c := range calls {
			ctxs[i] = c.ctx
		}
		f(ctxs)
	}
}

// Queued returns the number of calls waiting in the queue of s.
func Queued(s *SQLStore) int {
	if s.batch == nil {
		return 0
	}
	s.batch.mu.Lock()
	defer s.batch.mu.Unlock()
	return len(s.batch.queue)
}
