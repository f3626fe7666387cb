// Command kstatus prints what Flux (and kpt, cli-utils) conclude about objects:
// the real sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute, not a
// re-implementation. Objects come as JSON on stdin (one object, a List, or a
// stream) or, with -kubeconfig, from the API server. One JSON line per object.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Status    string `json:"status"`
	Message   string `json:"message"`
	Error     string `json:"error,omitempty"`
}

func compute(obj *unstructured.Unstructured) result {
	r := result{Kind: obj.GetKind(), Namespace: obj.GetNamespace(), Name: obj.GetName()}
	res, err := status.Compute(obj)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.Status, r.Message = res.Status.String(), res.Message
	return r
}

func flatten(obj *unstructured.Unstructured) []*unstructured.Unstructured {
	if !obj.IsList() {
		return []*unstructured.Unstructured{obj}
	}
	list, err := obj.ToList()
	if err != nil {
		return []*unstructured.Unstructured{obj}
	}
	out := make([]*unstructured.Unstructured, 0, len(list.Items))
	for i := range list.Items {
		out = append(out, &list.Items[i])
	}
	return out
}

func fromStdin() ([]*unstructured.Unstructured, error) {
	dec := json.NewDecoder(os.Stdin)
	var objs []*unstructured.Unstructured
	for {
		var msg json.RawMessage
		if err := dec.Decode(&msg); err == io.EOF {
			return objs, nil
		} else if err != nil {
			return nil, fmt.Errorf("stdin is not a JSON object stream: %w", err)
		}
		// apimachinery's decoder keeps integers int64, as the API machinery expects.
		var raw map[string]interface{}
		if err := utiljson.Unmarshal(msg, &raw); err != nil {
			return nil, fmt.Errorf("stdin is not a JSON object stream: %w", err)
		}
		objs = append(objs, flatten(&unstructured.Unstructured{Object: raw})...)
	}
}

func fromAPI(kubeconfig, namespace string, gvr schema.GroupVersionResource, names []string) ([]*unstructured.Unstructured, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	res := client.Resource(gvr).Namespace(namespace)
	ctx := context.Background()
	if len(names) == 0 {
		list, err := res.List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, err
		}
		objs := make([]*unstructured.Unstructured, 0, len(list.Items))
		for i := range list.Items {
			objs = append(objs, &list.Items[i])
		}
		return objs, nil
	}
	var objs []*unstructured.Unstructured
	for _, name := range names {
		obj, err := res.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		objs = append(objs, obj)
	}
	return objs, nil
}

// parseGVR reads "group/version/resource" or "version/resource" (the core group).
func parseGVR(s string) (schema.GroupVersionResource, error) {
	parts := strings.Split(s, "/")
	switch len(parts) {
	case 2:
		return schema.GroupVersionResource{Version: parts[0], Resource: parts[1]}, nil
	case 3:
		return schema.GroupVersionResource{Group: parts[0], Version: parts[1], Resource: parts[2]}, nil
	}
	return schema.GroupVersionResource{}, fmt.Errorf("-resource must be group/version/resource, got %q", s)
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "read objects from this cluster instead of stdin")
	namespace := flag.String("namespace", "", "namespace of the objects (with -kubeconfig)")
	resource := flag.String("resource", "", "group/version/resource, e.g. kubegate.dev/v1alpha1/gatewayroutes (with -kubeconfig)")
	flag.Parse()

	var objs []*unstructured.Unstructured
	var err error
	if *kubeconfig == "" {
		objs, err = fromStdin()
	} else {
		var gvr schema.GroupVersionResource
		if gvr, err = parseGVR(*resource); err == nil {
			objs, err = fromAPI(*kubeconfig, *namespace, gvr, flag.Args())
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
	enc := json.NewEncoder(os.Stdout)
	for _, obj := range objs {
		_ = enc.Encode(compute(obj))
	}
}
