package quota

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Header names that Middleware sets.
const (
	// HeaderRateLimitPolicy lists the quota policies of the action, one
	// per limit that is not Unlimited, in the structured-field syntax of
	// the IETF httpapi draft (draft-ietf-httpapi-ratelimit-headers-08 and
	// later): `"diagram.upload/month";q=5;w=2592000`. The policy name is
	// the action and the limit's period ("total" for an allocation); q is
	// the limit's Max; w, the length of the current window in seconds,
	// is omitted for an allocation; qu="content-bytes" is added when the
	// amount is the body's bytes (WithBodyBytes).
	HeaderRateLimitPolicy = "RateLimit-Policy"

	// HeaderRateLimit carries the service limit of each policy of
	// HeaderRateLimitPolicy, in the same order and syntax:
	// `"diagram.upload/month";r=0;t=1234`. r is what remains; t, the
	// seconds until the window resets rounded up, is omitted for an
	// allocation.
	HeaderRateLimit = "RateLimit"

	// HeaderRetryAfter is the standard Retry-After field, in whole
	// seconds rounded up: on a 503 (WithUnavailableRetryAfter), and on a
	// 429 whose limit resets within WithMaxRetryAfter (default 1 hour).
	HeaderRetryAfter = "Retry-After"

	// HeaderQuotaLevel is the level of the most used limit of the
	// action: "ok", "warning", "critical" or "exceeded" (see Level), so a
	// client can show a toast, a banner or a modal without asking again.
	HeaderQuotaLevel = "Quota-Level"

	// HeaderXRateLimitLimit, HeaderXRateLimitRemaining and
	// HeaderXRateLimitReset are the legacy fields that WithLegacyHeaders
	// adds, for the decisive limit: its Max, what remains and when it
	// resets, in Unix seconds.
	HeaderXRateLimitLimit     = "X-RateLimit-Limit"
	HeaderXRateLimitRemaining = "X-RateLimit-Remaining"
	HeaderXRateLimitReset     = "X-RateLimit-Reset"
)

// setHeaders adds the quota headers of d to h, at now.
func (m *middleware) setHeaders(h http.Header, d Decision, now time.Time) {
	if policy, limit := rateLimitFields(d, now, m.cfg.bodyBytes); policy != "" {
		h.Add(HeaderRateLimitPolicy, policy)
		h.Add(HeaderRateLimit, limit)
	}
	h.Set(HeaderQuotaLevel, highestLevel(d.Level, h.Get(HeaderQuotaLevel)).String())
	if m.cfg.legacy && d.Limit != Unlimited {
		setLegacyHeaders(h, d)
	}
}

// rateLimitFields returns the values of HeaderRateLimitPolicy and
// HeaderRateLimit for d's limits that are not Unlimited; "" when all are.
func rateLimitFields(d Decision, now time.Time, bodyBytes bool) (policy, limit string) {
	var p, l strings.Builder
	for _, st := range d.Limits.All() {
		if st.Limit == Unlimited {
			continue
		}
		if p.Len() > 0 {
			p.WriteString(", ")
			l.WriteString(", ")
		}
		name := st.Period.String()
		if st.Period == PeriodNone {
			name = "total"
		}
		name = sfString(d.Action + "/" + name)
		p.WriteString(name)
		p.WriteString(";q=")
		p.WriteString(sfInt(st.Limit))
		if bodyBytes {
			p.WriteString(`;qu="content-bytes"`)
		}
		l.WriteString(name)
		l.WriteString(";r=")
		l.WriteString(sfInt(st.Remaining))
		if !st.ResetAt.IsZero() {
			p.WriteString(";w=")
			p.WriteString(sfInt(ceilSeconds(st.ResetAt.Sub(st.PeriodStart))))
			l.WriteString(";t=")
			l.WriteString(sfInt(ceilSeconds(st.ResetAt.Sub(now))))
		}
	}
	return p.String(), l.String()
}

// highestLevel returns the higher of level and prev, the level that an
// outer middleware set ("" for none).
func highestLevel(level Level, prev string) Level {
	var pl Level
	if prev != "" && pl.UnmarshalText([]byte(prev)) == nil && pl > level {
		return pl
	}
	return level
}

// setLegacyHeaders sets the X-RateLimit fields of d's decisive limit.
func setLegacyHeaders(h http.Header, d Decision) {
	h.Set(HeaderXRateLimitLimit, strconv.FormatInt(d.Limit, 10))
	h.Set(HeaderXRateLimitRemaining, strconv.FormatInt(d.Remaining, 10))
	if d.ResetAt.IsZero() {
		h.Del(HeaderXRateLimitReset)
		return
	}
	h.Set(HeaderXRateLimitReset, strconv.FormatInt(d.ResetAt.Unix(), 10))
}

// maxSFInteger is the largest Integer of RFC 9651 structured fields.
const maxSFInteger = 999_999_999_999_999

func sfInt(n int64) string {
	return strconv.FormatInt(min(max(n, 0), maxSFInteger), 10)
}

// sfString returns s as an RFC 9651 String: printable ASCII within
// quotes, with '"' and '\\' escaped; other bytes, and '%', are
// percent-encoded, as String cannot hold them.
func sfString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c == '%' || c < 0x20 || c > 0x7e:
			fmt.Fprintf(&b, "%%%02X", c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}
