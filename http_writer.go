package quota

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
)

// countingBody counts the bytes the handler reads and notes a read past
// the MaxBytesReader bound.
type countingBody struct {
	io.ReadCloser
	n       int64
	overrun bool
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			b.overrun = true
		}
	}
	return n, err
}

// responseWriter records the status the handler sends.
type responseWriter struct {
	http.ResponseWriter
	status int
	wrote  bool // a final status was sent
}

func (rw *responseWriter) markWritten(status int) {
	if !rw.wrote {
		rw.status, rw.wrote = status, true
	}
}

func (rw *responseWriter) WriteHeader(code int) {
	// 1xx but 101 are informational: a final status follows.
	if code < 100 || code > 199 || code == http.StatusSwitchingProtocols {
		rw.markWritten(code)
	}
	rw.ResponseWriter.WriteHeader(code)
}

func (rw *responseWriter) Write(b []byte) (int, error) {
	rw.markWritten(http.StatusOK)
	return rw.ResponseWriter.Write(b)
}

// ReadFrom keeps the underlying writer's io.ReaderFrom (sendfile).
func (rw *responseWriter) ReadFrom(src io.Reader) (int64, error) {
	rw.markWritten(http.StatusOK)
	if rf, ok := rw.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(src)
	}
	return io.Copy(writerOnly{rw.ResponseWriter}, src)
}

type writerOnly struct{ io.Writer }

// Unwrap returns the underlying ResponseWriter, for http.ResponseController.
func (rw *responseWriter) Unwrap() http.ResponseWriter { return rw.ResponseWriter }

// Flush implements http.Flusher; it does nothing if the underlying writer
// cannot flush.
func (rw *responseWriter) Flush() { _ = rw.FlushError() }

// FlushError flushes the underlying writer, for http.ResponseController.
func (rw *responseWriter) FlushError() error {
	rw.markWritten(http.StatusOK)
	return http.NewResponseController(rw.ResponseWriter).Flush()
}

// Hijack implements http.Hijacker; it returns an error matching
// http.ErrNotSupported if the underlying writer cannot hijack.
func (rw *responseWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, b, err := http.NewResponseController(rw.ResponseWriter).Hijack()
	if err == nil {
		rw.markWritten(http.StatusOK)
	}
	return c, b, err
}
