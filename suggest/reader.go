package suggest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/l7gate/l7gate/flow"
)

// Reader yields flow records; Read returns io.EOF after the last one.
type Reader interface {
	Read() (*flow.Record, error)
}

// MaxLineSize bounds one JSON line; longer lines are skipped as malformed.
const MaxLineSize = 1 << 20

// JSONLines reads flow.Record JSON objects, one per line, as the Go
// proxy's access log, `l7gate observe -o json` and the agent's flow export
// write them. Lines that do not start with '{' (the proxy's own log lines
// share its access-log file) are skipped silently; lines that start with
// '{' but do not decode, or exceed MaxLineSize, are counted in Malformed
// and skipped.
type JSONLines struct {
	r    *bufio.Reader
	line int
	// Malformed counts skipped lines that looked like records but did not
	// decode; FirstError describes the first of them.
	Malformed  int
	FirstError error
}

// NewJSONLines returns a reader over r.
func NewJSONLines(r io.Reader) *JSONLines {
	return &JSONLines{r: bufio.NewReaderSize(r, 64<<10)}
}

// Read returns the next record.
func (j *JSONLines) Read() (*flow.Record, error) {
	for {
		line, err := j.readLine()
		if err != nil {
			return nil, err
		}
		j.line++
		if line == nil {
			j.malformed(fmt.Errorf("line %d: longer than %d bytes", j.line, MaxLineSize))
			continue
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var rec flow.Record
		if err := json.Unmarshal(line, &rec); err != nil {
			j.malformed(fmt.Errorf("line %d: %w", j.line, err))
			continue
		}
		return &rec, nil
	}
}

func (j *JSONLines) malformed(err error) {
	j.Malformed++
	if j.FirstError == nil {
		j.FirstError = err
	}
}

// readLine returns the next line without its newline, nil (and no error)
// for a line longer than MaxLineSize (consumed), or io.EOF.
func (j *JSONLines) readLine() ([]byte, error) {
	var buf []byte
	tooLong := false
	for {
		chunk, err := j.r.ReadSlice('\n')
		if !tooLong {
			if len(buf)+len(chunk) > MaxLineSize+1 {
				tooLong, buf = true, nil
			} else {
				buf = append(buf, chunk...)
			}
		}
		switch {
		case err == nil:
			if tooLong {
				return nil, nil
			}
			return buf[:len(buf)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			if tooLong {
				return nil, nil
			}
			if len(buf) == 0 {
				return nil, io.EOF
			}
			return buf, nil
		default:
			return nil, fmt.Errorf("read flows: %w", err)
		}
	}
}

// ReadAll reads every record of r.
func ReadAll(r Reader) ([]*flow.Record, error) {
	var out []*flow.Record
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, rec)
	}
}
