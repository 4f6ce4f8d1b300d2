package flow

import "time"

// timeCache renders record times as time.RFC3339Nano does, reusing the
// date, clock and zone of the previous time when it falls in the same
// second and location (a busy proxy logs many records per second: the
// calendar arithmetic was 40 % of encoding an access record). One per
// encoder; not safe for concurrent use.
type timeCache struct {
	sec    int64
	loc    *time.Location
	valid  bool
	prefix []byte // "2006-01-02T15:04:05"
	zone   []byte // "Z" or "-07:00"
}

// appendTime appends t as t.AppendFormat(b, time.RFC3339Nano) does.
func (c *timeCache) appendTime(b []byte, t time.Time) []byte {
	if c == nil {
		return t.AppendFormat(b, time.RFC3339Nano)
	}
	sec, loc := t.Unix(), t.Location()
	if !c.valid || sec != c.sec || loc != c.loc {
		whole := t.Truncate(0) // drop the monotonic reading
		whole = whole.Add(-time.Duration(whole.Nanosecond()))
		s := whole.AppendFormat(c.prefix[:0], time.RFC3339Nano)
		i := 0
		for i < len(s) && s[i] != 'T' {
			i++
		}
		if i+9 > len(s) {
			return t.AppendFormat(b, time.RFC3339Nano) // not the expected shape
		}
		c.zone = append(c.zone[:0], s[i+9:]...)
		c.prefix = s[:i+9]
		c.sec, c.loc, c.valid = sec, loc, true
	}
	b = append(b, c.prefix...)
	if ns := t.Nanosecond(); ns != 0 {
		var frac [10]byte
		frac[0] = '.'
		for i := 9; i >= 1; i-- {
			frac[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := 10
		for frac[n-1] == '0' {
			n--
		}
		b = append(b, frac[:n]...)
	}
	return append(b, c.zone...)
}
