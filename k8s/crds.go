package k8s

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
)

func crdResource() schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
}

// EnsureCRDs creates each CustomResourceDefinition in manifests (YAML, one
// or more documents) that does not exist yet, and waits until all are
// established. Existing definitions, such as those of a Cilium install,
// are never modified: l7gate reads the same cilium.io/v2 objects.
func EnsureCRDs(ctx context.Context, dyn dynamic.Interface, manifests []byte, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifests), 4096)
	res := dyn.Resource(crdResource())
	var names []string
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return fmt.Errorf("parse crds: %w", err)
		}
		if len(u.Object) == 0 {
			continue
		}
		if u.GetKind() != "CustomResourceDefinition" {
			return fmt.Errorf("parse crds: unexpected kind %q", u.GetKind())
		}
		names = append(names, u.GetName())
		_, err := res.Get(ctx, u.GetName(), metav1.GetOptions{})
		if err == nil {
			log.Info("crd present; left as is", "crd", u.GetName())
			continue
		}
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("get crd %s: %w", u.GetName(), err)
		}
		if _, err := res.Create(ctx, &u, metav1.CreateOptions{FieldManager: "l7gate"}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create crd %s: %w", u.GetName(), err)
		}
		log.Info("crd created", "crd", u.GetName())
	}
	for _, n := range names {
		if err := waitEstablished(ctx, res, n); err != nil {
			return err
		}
	}
	return nil
}

func waitEstablished(ctx context.Context, res dynamic.ResourceInterface, name string) error {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		u, err := res.Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("crd %s not established: %w", name, ctx.Err())
		case <-t.C:
		}
	}
}
