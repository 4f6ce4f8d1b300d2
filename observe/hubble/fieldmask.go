package hubble

import (
	"errors"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	flowpb "github.com/l7gate/l7gate/proto/hubble/flowpb"
)

// fieldMask is a GetFlowsRequest's field mask as a tree of Flow field
// names: a nil subtree takes the whole field. The hubble CLI sends one by
// default (its compact output needs about twenty fields).
type fieldMask map[string]fieldMask

// newFieldMask checks fm against the Flow message (every component a
// field, all but the last singular messages); nil or empty means every
// field.
func newFieldMask(fm *fieldmaskpb.FieldMask) (fieldMask, error) {
	if len(fm.GetPaths()) == 0 {
		return nil, nil
	}
	if !fm.IsValid(&flowpb.Flow{}) {
		return nil, errors.New("field mask: a path is not a field of Flow")
	}
	paths := &fieldmaskpb.FieldMask{Paths: append([]string(nil), fm.GetPaths()...)}
	paths.Normalize() // sorted, "a" absorbs "a.b"
	m := fieldMask{}
	for _, p := range paths.GetPaths() {
		node := m
		parts := strings.Split(p, ".")
		for i, name := range parts {
			if i == len(parts)-1 {
				node[name] = nil
				break
			}
			if node[name] == nil {
				node[name] = fieldMask{}
			}
			node = node[name]
		}
	}
	return m, nil
}

// apply returns f reduced to the mask's fields (f itself without a mask).
func (m fieldMask) apply(f *flowpb.Flow) *flowpb.Flow {
	if len(m) == 0 {
		return f
	}
	out := &flowpb.Flow{}
	m.copy(out.ProtoReflect(), f.ProtoReflect())
	return out
}

// copy sets dst's masked fields from src. A message field src does not
// have stays unset in dst (no empty messages), so does a oneof member
// that is not src's choice.
func (m fieldMask) copy(dst, src protoreflect.Message) {
	fields := src.Descriptor().Fields()
	for name, sub := range m {
		fd := fields.ByName(protoreflect.Name(name))
		if fd == nil || !src.Has(fd) {
			continue
		}
		if sub == nil {
			dst.Set(fd, src.Get(fd))
			continue
		}
		sub.copy(dst.Mutable(fd).Message(), src.Get(fd).Message())
	}
}
