package quota

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Errors returned by the package. Match them with errors.Is: the errors
// returned wrap them with the operation and the offending name.
var (
	// ErrClosed is returned by every method of a Quota or Store after
	// Close.
	ErrClosed = errors.New("quota: closed")

	// ErrNilContext is returned when a method is given a nil context.
	ErrNilContext = errors.New("quota: nil context")

	// ErrNilStore is returned by New when given a nil store.
	ErrNilStore = errors.New("quota: nil store")

	// ErrInvalidSubject reports a subject that is empty, longer than
	// MaxNameLen bytes, not valid UTF-8 or holding a control character.
	ErrInvalidSubject = errors.New("quota: invalid subject")

	// ErrInvalidAction reports an action name that breaks the same rules.
	ErrInvalidAction = errors.New("quota: invalid action")

	// ErrInvalidKey reports an idempotency key that breaks the same rules.
	ErrInvalidKey = errors.New("quota: invalid idempotency key")

	// ErrInvalidName reports any other name (a feature, a resource id, a
	// time zone) that breaks the same rules.
	ErrInvalidName = errors.New("quota: invalid name")

	// ErrInvalidAmount reports an amount that is zero, larger than
	// MaxAmount in either direction, or negative where the action has no
	// allocation limit (or in Reserve).
	ErrInvalidAmount = errors.New("quota: invalid amount")

	// ErrInvalidMetadata reports metadata that cannot be encoded as a JSON
	// object, that holds text (a key or a value) that is not valid UTF-8,
	// or whose encoding is larger than MaxMetadataLen bytes.
	ErrInvalidMetadata = errors.New("quota: invalid metadata")

	// ErrInvalidPlan reports an invalid plan or catalog (see PlanError).
	ErrInvalidPlan = errors.New("quota: invalid plan")

	// ErrInvalidSubscription reports a subscription with an invalid
	// anchor, time zone or override.
	ErrInvalidSubscription = errors.New("quota: invalid subscription")

	// ErrUnknownPlan reports a plan name the catalog does not define.
	ErrUnknownPlan = errors.New("quota: unknown plan")

	// ErrUnknownAction reports an action that no plan of the catalog
	// limits.
	ErrUnknownAction = errors.New("quota: unknown action")

	// ErrNoSubscription reports a subject that has no subscription while
	// the Quota has no default plan.
	ErrNoSubscription = errors.New("quota: no subscription")

	// ErrIdempotencyConflict reports an idempotency key used again with a
	// different payload (see ConflictError).
	ErrIdempotencyConflict = errors.New("quota: idempotency key reused with a different payload")

	// ErrOverflow reports a use that would take a counter past the range
	// of int64.
	ErrOverflow = errors.New("quota: counter overflow")

	// ErrReservationNotFound reports a reservation that does not exist or
	// is already committed, cancelled or expired and swept.
	ErrReservationNotFound = errors.New("quota: reservation not found")

	// ErrReservationExpired reports a commit that came after the
	// reservation expired. The held amount no longer counts.
	ErrReservationExpired = errors.New("quota: reservation expired")

	// ErrSubscriptionChanged is returned by the Apply of a Versioned
	// store when the subject's subscription is no longer the one that
	// Op.Version names; nothing was written. The Quota answers it by
	// reading the subscription again and retrying the use: a caller of
	// Consume, Track or Reserve sees it only when the subscription
	// changed under the use at every one of 64 retries.
	ErrSubscriptionChanged = errors.New("quota: subscription changed")

	// ErrInvalidCursor reports a History cursor that no Page returned.
	ErrInvalidCursor = errors.New("quota: invalid cursor")

	// ErrExceeded is matched by *ExceededError, the error form of a
	// denial returned by Decision.Err. Consume, Reserve and Check never
	// return it themselves: a denial is a Decision, not an error.
	ErrExceeded = errors.New("quota: limit exceeded")

	// ErrStoreUnavailable reports a failure of the store itself: a
	// database that does not answer, a connection lost, a statement that
	// failed, a call past Config.StoreTimeout. The error wraps the cause.
	// The store's answers (ErrReservationNotFound, ErrIdempotencyConflict,
	// ...), ErrClosed and the caller's own cancellation do not match it.
	ErrStoreUnavailable = errors.New("quota: store unavailable")
)

// MaxNameLen is the longest subject, action, plan, feature, resource id or
// idempotency key accepted, in bytes.
const MaxNameLen = 256

// MaxMetadataLen is the largest metadata accepted, in bytes of its JSON
// encoding.
const MaxMetadataLen = 16 << 10

// ExceededError is the error form of a denial, for code that prefers to
// propagate it as an error. It matches ErrExceeded.
type ExceededError struct {
	Decision Decision
}

func (e *ExceededError) Error() string {
	d := &e.Decision
	return fmt.Sprintf("quota: %s: %s of %s for %q: used %d of %s", d.Reason, d.Action, d.Plan, d.Subject, d.Used, limitString(d.Limit))
}

// Is reports whether target is ErrExceeded.
func (e *ExceededError) Is(target error) bool { return target == ErrExceeded }

// ConflictError reports an idempotency key reused with a different payload.
// It matches ErrIdempotencyConflict.
type ConflictError struct {
	Subject string
	Key     string
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("quota: idempotency key %q of subject %q reused with a different payload", e.Key, e.Subject)
}

// Is reports whether target is ErrIdempotencyConflict.
func (e *ConflictError) Is(target error) bool { return target == ErrIdempotencyConflict }

func limitString(max int64) string {
	if max == Unlimited {
		return "unlimited"
	}
	return strconv.FormatInt(max, 10)
}

// ValidateName reports whether s is acceptable as a subject, action, plan,
// feature, resource id or idempotency key: 1 to MaxNameLen bytes of valid
// UTF-8 with no control characters (NUL included). Stores may rely on it:
// the engine validates every name before a store sees it.
func ValidateName(s string) error { return checkName(s, ErrInvalidName) }

// checkName validates s and wraps kind on failure.
func checkName(s string, kind error) error {
	if s == "" {
		return fmt.Errorf("%w: empty", kind)
	}
	if len(s) > MaxNameLen {
		return fmt.Errorf("%w: %d bytes, more than %d", kind, len(s), MaxNameLen)
	}
	if printableASCII(s) {
		return nil
	}
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == 0x7f {
				return fmt.Errorf("%w: control character %#02x at byte %d", kind, c, i)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			return fmt.Errorf("%w: invalid UTF-8 at byte %d", kind, i)
		}
		if unicode.IsControl(r) {
			return fmt.Errorf("%w: control character %U at byte %d", kind, r, i)
		}
		i += size
	}
	return nil
}

// printableASCII reports whether s holds only bytes from 0x20 to 0x7e:
// the common name, which needs no decoding. It looks at eight bytes at a
// time.
func printableASCII(s string) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	i := 0
	for ; i+8 <= len(s); i += 8 {
		b := s[i : i+8]
		w := uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
			uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
		// A byte of 0x80 or more sets its high bit in w. Once none
		// does, a byte below 0x20 sets it in w - 0x20 of each byte, and
		// a byte 0x7f, which XOR 0x7f makes 0, sets it in that minus 1
		// of each byte. A borrow may set more, never one alone.
		if (w|(w-0x20*ones)|((w^0x7f*ones)-ones))&highs != 0 {
			return false
		}
	}
	for ; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f {
			return false
		}
	}
	return true
}

// errorf formats an error of the Quota as fmt.Errorf does, with the
// package's prefix once: "quota: " begins the message, and the errors it
// wraps (a sentinel, a store's error) are shown without theirs.
func errorf(format string, args ...any) error {
	return wrapf("quota: "+format, args...)
}

// wrapf is fmt.Errorf with the errors it wraps shown without the
// package's prefix: stores wrap with it, and the Quota adds the prefix
// once.
func wrapf(format string, args ...any) error {
	for i, a := range args {
		if err, ok := a.(error); ok {
			args[i] = unprefixed{err}
		}
	}
	return fmt.Errorf(format, args...)
}

// unprefixed shows an error without the package's prefix.
type unprefixed struct{ err error }

func (e unprefixed) Error() string { return strings.TrimPrefix(e.err.Error(), "quota: ") }
func (e unprefixed) Unwrap() error { return e.err }

// isAny reports whether err matches one of targets (errors.Is).
func isAny(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}
