package quota_test

import (
	"bufio"
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"testing"
	"time"
)

// The Redis reference of BenchmarkSQL (db=redis): Consume as the fastest
// shared counter with a cap an application is likely to compare a store
// with, a Lua script that reads the counter, compares it with the limit
// and increments it, in one round trip (EVALSHA). It keeps no record of
// the use, no subscription and no period: its throughput is a ceiling, not
// a baseline of the same work.
//
// The client is a minimal RESP2 one, over one connection per goroutine,
// so that the reference needs no module.

// redisConsumeScript grants ARGV[1] against the limit ARGV[2] on the
// counter KEYS[1]: 1 if granted (and counted), 0 if refused.
const redisConsumeScript = `local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount = tonumber(ARGV[1])
if used + amount > tonumber(ARGV[2]) then
	return 0
end
redis.call('INCRBY', KEYS[1], amount)
return 1`

// benchRedis runs the db=redis cases of BenchmarkSQL: op=Consume,
// subjects {1, 1000} × goroutines {1, 8, 64}, impl=redis, on
// QUOTA_TEST_REDIS_ADDR (by default 127.0.0.1:6379). It skips them when
// no Redis answers there within 200 ms.
func benchRedis(b *testing.B) {
	addr := os.Getenv("QUOTA_TEST_REDIS_ADDR")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	first, err := redisDial(addr, 200*time.Millisecond)
	if err != nil {
		b.Skipf("Redis reference skipped: no Redis at %s (%v); set QUOTA_TEST_REDIS_ADDR to a Redis to run it", addr, err)
	}
	pool := &redisPool{addr: addr, idle: make(chan *redisConn, 64)}
	pool.put(first)
	sha, err := first.do("SCRIPT", "LOAD", redisConsumeScript)
	if err != nil {
		pool.close()
		b.Fatalf("SCRIPT LOAD: %v", err)
	}

	// A prefix of its own for the run's keys, deleted when it ends.
	var r [8]byte
	rand.Read(r[:])
	prefix := "quota-bench-" + hex.EncodeToString(r[:]) + ":"
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprintf("%ssub-%04d", prefix, i)
	}
	b.Cleanup(func() {
		defer pool.close()
		c, err := pool.get()
		if err != nil {
			b.Errorf("Redis cleanup: %v", err)
			return
		}
		defer pool.put(c)
		for i := 0; i < len(keys); i += 100 {
			if _, err := c.do(append([]string{"DEL"}, keys[i:min(i+100, len(keys))]...)...); err != nil {
				b.Errorf("Redis cleanup: DEL: %v", err)
				return
			}
		}
	})

	limit := strconv.FormatInt(benchLimit, 10)
	consume := func(key string) error {
		c, err := pool.get()
		if err != nil {
			return err
		}
		n, err := c.do("EVALSHA", sha.s, "1", key, "1", limit)
		if err != nil {
			var re redisError
			if errors.As(err, &re) {
				pool.put(c)
			} else {
				c.close()
			}
			return fmt.Errorf("EVALSHA: %w", err)
		}
		pool.put(c)
		if n.kind != ':' || n.n != 1 {
			return fmt.Errorf("denied: reply %c %d", n.kind, n.n)
		}
		return nil
	}

	for _, subjects := range []int{1, 1000} {
		for _, goroutines := range []int{1, 8, 64} {
			name := fmt.Sprintf("op=Consume/subjects=%d/goroutines=%d/impl=redis", subjects, goroutines)
			b.Run(name, func(b *testing.B) {
				if err := pool.fill(goroutines); err != nil {
					b.Fatal(err)
				}
				runBench(b, goroutines, func(i int) error { return consume(keys[i%subjects]) })
			})
		}
	}
}

// A redisPool keeps up to cap(idle) idle connections to addr.
type redisPool struct {
	addr string
	idle chan *redisConn
}

// get returns an idle connection, or a new one.
func (p *redisPool) get() (*redisConn, error) {
	select {
	case c := <-p.idle:
		return c, nil
	default:
		return redisDial(p.addr, 5*time.Second)
	}
}

// put returns c to the pool, or closes it when the pool is full.
func (p *redisPool) put(c *redisConn) {
	select {
	case p.idle <- c:
	default:
		c.close()
	}
}

// fill opens connections until n are idle (at most cap(p.idle)).
func (p *redisPool) fill(n int) error {
	for len(p.idle) < min(n, cap(p.idle)) {
		c, err := redisDial(p.addr, 5*time.Second)
		if err != nil {
			return err
		}
		p.put(c)
	}
	return nil
}

// close closes the idle connections.
func (p *redisPool) close() {
	for {
		select {
		case c := <-p.idle:
			c.close()
		default:
			return
		}
	}
}

// A redisConn is one RESP2 connection, used by one goroutine at a time.
type redisConn struct {
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
	buf  []byte // scratch for the lengths of a command
}

func redisDial(addr string, timeout time.Duration) (*redisConn, error) {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	return &redisConn{conn: conn, r: bufio.NewReader(conn), w: bufio.NewWriter(conn)}, nil
}

func (c *redisConn) close() { c.conn.Close() }

// A redisReply is a RESP2 reply other than an error: kind is its type
// byte ('+', ':', '$', '*'); n the integer, or the length of a bulk
// string or an array (-1 for a null one); s the string; elems the array.
type redisReply struct {
	kind  byte
	n     int64
	s     string
	elems []redisReply
}

// A redisError is an error reply ("-ERR ...").
type redisError string

func (e redisError) Error() string { return "redis: " + string(e) }

// do sends the command args, as an array of bulk strings, and reads its
// reply. An error reply is a redisError; any other error leaves the
// connection unusable.
func (c *redisConn) do(args ...string) (redisReply, error) {
	b := c.buf[:0]
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(len(args)), 10)
	b = append(b, '\r', '\n')
	c.w.Write(b)
	for _, a := range args {
		b = append(b[:0], '$')
		b = strconv.AppendInt(b, int64(len(a)), 10)
		b = append(b, '\r', '\n')
		c.w.Write(b)
		c.w.WriteString(a)
		c.w.WriteString("\r\n")
	}
	c.buf = b
	if err := c.w.Flush(); err != nil {
		return redisReply{}, err
	}
	return c.read()
}

// read reads one reply.
func (c *redisConn) read() (redisReply, error) {
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		return redisReply{}, err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return redisReply{}, fmt.Errorf("redis: malformed reply %q", line)
	}
	kind, body := line[0], line[1:len(line)-2]
	switch kind {
	case '+':
		return redisReply{kind: kind, s: string(body)}, nil
	case '-':
		return redisReply{}, redisError(body)
	case ':', '$', '*':
		n, ok := redisInt(body)
		if !ok {
			return redisReply{}, fmt.Errorf("redis: malformed reply %q", line)
		}
		reply := redisReply{kind: kind, n: n}
		switch {
		case kind == '$' && n >= 0:
			data := make([]byte, n+2)
			if _, err := io.ReadFull(c.r, data); err != nil {
				return redisReply{}, err
			}
			reply.s = string(data[:n])
		case kind == '*' && n > 0:
			// An error inside an array (from EXEC) is returned after
			// the whole array is read, so that the connection stays
			// in step.
			var first error
			reply.elems = make([]redisReply, n)
			for i := range reply.elems {
				e, err := c.read()
				var re redisError
				if errors.As(err, &re) {
					first = cmp.Or(first, err)
					continue
				}
				if err != nil {
					return redisReply{}, err
				}
				reply.elems[i] = e
			}
			if first != nil {
				return redisReply{}, first
			}
		}
		return reply, nil
	}
	return redisReply{}, fmt.Errorf("redis: unknown reply type %q", kind)
}

// redisInt parses the decimal integer of a reply line.
func redisInt(b []byte) (int64, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, d := range b {
		if d < '0' || d > '9' {
			return 0, false
		}
		n = n*10 + int64(d-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}
