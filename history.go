package quota

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Record is one use in the ledger.
type Record struct {
	ID         int64           `json:"id"`
	Subject    string          `json:"subject"`
	Action     string          `json:"action"`
	Amount     int64           `json:"amount"`
	ResourceID string          `json:"resource_id,omitempty"`
	Metadata   json.RawMessage `json:"metadata,omitempty"`
	Key        string          `json:"key,omitempty"`
	// Time is when the use was counted, in UTC: the time of Consume or
	// Track, or of the Reserve that a Commit completed.
	Time time.Time `json:"time"`
}

// HistoryQuery selects records, newest first, a page at a time.
type HistoryQuery struct {
	// Subject selects one subject's records; "" selects every
	// subject's (an admin view).
	Subject string
	// Action selects one action; "" selects every action.
	Action string
	// From and To bound the records' Time: From <= Time < To. Zero
	// means unbounded.
	From, To time.Time
	// Limit is the page size, from 1 to MaxHistoryPage. Default 100.
	Limit int
	// Cursor continues after the page that returned it as Next; "" asks
	// for the first (newest) page.
	Cursor string
}

// Page is one page of History.
type Page struct {
	Records []Record `json:"records"`
	// Next is the cursor of the following (older) page; "" on the last
	// page.
	Next string `json:"next,omitempty"`
}

// History returns the ledger's records that hq selects, newest first, a
// page at a time: a subject's usage history, or every subject's.
// Pages are cut by record ID, so that walking them while uses go on
// returns every record that existed when the walk began exactly once:
// new records come before the first page, never between pages.
func (q *Quota) History(ctx context.Context, hq HistoryQuery) (_ Page, err error) {
	if q.obs != nil {
		var end func(error)
		ctx, end = q.startCall(ctx, CallEvent{Method: MethodHistory, Subject: hq.Subject, Action: hq.Action})
		defer func() { end(err) }()
	}
	if err := q.begin(ctx); err != nil {
		return Page{}, errorf("history: %w", err)
	}
	if err := q.checkFilter(hq.Subject, hq.Action); err != nil {
		return Page{}, errorf("history: %w", err)
	}
	if hq.Limit == 0 {
		hq.Limit = 100
	}
	if hq.Limit < 0 || hq.Limit > MaxHistoryPage {
		return Page{}, errorf("history: limit %d: want 1 to %d", hq.Limit, MaxHistoryPage)
	}
	var before int64
	if hq.Cursor != "" {
		var err error
		if before, err = parseCursor(hq.Cursor); err != nil {
			return Page{}, errorf("history: %w", err)
		}
	}
	// One more than the page tells whether another page follows.
	recs, err := q.store.Records(ctx, RecordQuery{
		Subject:    hq.Subject,
		Action:     hq.Action,
		From:       hq.From,
		To:         hq.To,
		BeforeID:   before,
		Descending: true,
		Limit:      hq.Limit + 1,
	})
	if err != nil {
		return Page{}, errorf("history %q: %w", hq.Subject, err)
	}
	var p Page
	if len(recs) > hq.Limit {
		recs = recs[:hq.Limit]
		p.Next = formatCursor(recs[len(recs)-1].ID)
	}
	p.Records = recs
	return p, nil
}

const cursorPrefix = "r1."

func formatCursor(id int64) string { return cursorPrefix + strconv.FormatInt(id, 36) }

func parseCursor(c string) (int64, error) {
	rest, ok := strings.CutPrefix(c, cursorPrefix)
	if !ok {
		return 0, fmt.Errorf("%w: %q", ErrInvalidCursor, c)
	}
	id, err := strconv.ParseInt(rest, 36, 64)
	if err != nil || id <= 0 {
		return 0, fmt.Errorf("%w: %q", ErrInvalidCursor, c)
	}
	return id, nil
}

// MaxHistoryPage is the largest page History returns.
const MaxHistoryPage = 1000
