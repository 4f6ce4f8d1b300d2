package policy

import (
	"errors"
	"fmt"
	"strconv"
)

// fieldPath is a dotted path into an object, such as
// "spec.ingress[0].toPorts[0].rules.http[1].path".
type fieldPath string

func (p fieldPath) child(name string) fieldPath {
	if p == "" {
		return fieldPath(name)
	}
	return p + "." + fieldPath(name)
}

func (p fieldPath) index(i int) fieldPath { return p + "[" + fieldPath(strconv.Itoa(i)) + "]" }

func (p fieldPath) key(k string) fieldPath { return p + "[" + fieldPath(k) + "]" }

func (p fieldPath) errorf(format string, args ...any) *FieldError {
	return &FieldError{Path: string(p), Err: fmt.Errorf(format, args...)}
}

// FieldError is a problem with one field of an object.
type FieldError struct {
	Path string
	Err  error
}

func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Err.Error()
	}
	return e.Path + ": " + e.Err.Error()
}

func (e *FieldError) Unwrap() error { return e.Err }

// ObjectRef names an input object for messages.
type ObjectRef struct {
	File      string `json:"file,omitempty"`
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
}

func (r ObjectRef) String() string {
	n := r.Name
	if n == "" {
		n = "<unnamed>"
	}
	if r.Namespace != "" {
		n = r.Namespace + "/" + n
	}
	return r.Kind + " " + n
}

// ObjectError is a problem with one input object: the file, the object and,
// through the wrapped FieldError, the field path.
type ObjectError struct {
	Object ObjectRef
	Err    error
}

func (e *ObjectError) Error() string {
	s := e.Object.String() + ": " + e.Err.Error()
	if e.Object.File != "" {
		s = e.Object.File + ": " + s
	}
	return s
}

func (e *ObjectError) Unwrap() error { return e.Err }

// Warning is something the operator should know that did not stop an object
// from loading: an unknown kind skipped, a field l7gate does not enforce.
type Warning struct {
	Object  ObjectRef `json:"object"`
	Path    string    `json:"path,omitempty"`
	Message string    `json:"message"`
}

func (w Warning) String() string {
	s := w.Object.String() + ": "
	if w.Object.File != "" {
		s = w.Object.File + ": " + s
	}
	if w.Path != "" {
		s += w.Path + ": "
	}
	return s + w.Message
}

// ErrInvalid marks input that cannot be loaded.
var ErrInvalid = errors.New("invalid input")
