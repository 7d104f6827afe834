package controller

// The I/O half of the rules: asking the Kubernetes API what Decide needs.
// Every answer that can lead to a release is a fresh read (resourceVersion
// "", served from etcd's quorum or a cache proven current); the informer
// is only trusted to say that a pod exists.

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Defaults of the lookup and release settings in Options.
const (
	DefaultWorkers  = 8
	DefaultMaxGets  = 10
	DefaultPageSize = 500
)

func podFacts(p *corev1.Pod) *PodFacts {
	f := &PodFacts{UID: string(p.UID), Node: p.Spec.NodeName}
	if p.DeletionTimestamp != nil {
		t := p.DeletionTimestamp.Time
		f.Deleting = &t
	}
	return f
}

// observe asks the API everything Decide needs about the owners in s.
func (r *Reconciler) observe(ctx context.Context, s *snapshot, o RuleOptions) *Facts {
	f := newFacts()
	var misses []ObjectKey
	for k, uids := range podsToLook(s, o) {
		// The informer may say that a pod exists with the UID every
		// attachment of that name asks for (a stale cache only delays a
		// release). A miss or another UID is confirmed by a fresh read.
		if r.Pods != nil {
			if p, err := r.Pods.Pods(k.Namespace).Get(k.Name); err == nil && vouches(p, uids) {
				f.Pods[k] = podFacts(p)
				continue
			}
		}
		misses = append(misses, k)
	}
	r.readPods(ctx, misses, f)
	r.readNodes(ctx, nodesToLook(s, f, o), f)
	r.readStatefulSets(ctx, statefulSetsToLook(s, f, o), f)
	return f
}

// vouches reports whether the informer's pod p has the UID of every
// allocation made for its name.
func vouches(p *corev1.Pod, uids []string) bool {
	return !slices.ContainsFunc(uids, func(u string) bool { return u != "" && u != string(p.UID) })
}

// readPods confirms the given owners with fresh reads: a GET each when
// they are few (Options.MaxGets), else one consistent LIST, paginated,
// of their namespace (all namespaces when they are in several). A failed
// LIST leaves every one of them undecided.
func (r *Reconciler) readPods(ctx context.Context, keys []ObjectKey, f *Facts) {
	if len(keys) == 0 {
		return
	}
	nss := map[string]bool{}
	want := map[ObjectKey]bool{}
	for _, k := range keys {
		nss[k.Namespace] = true
		want[k] = true
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	if len(keys) <= r.Opts.MaxGets {
		pods := make([]*PodFacts, len(keys))
		errs := make([]error, len(keys))
		r.parallel(len(keys), func(i int) {
			p, err := r.Kube.CoreV1().Pods(keys[i].Namespace).Get(ctx, keys[i].Name, metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
			case err != nil:
				errs[i] = err
			default:
				pods[i] = podFacts(p)
			}
		})
		for i, k := range keys {
			if errs[i] != nil {
				f.PodErrs[k] = errs[i]
			} else {
				f.Pods[k] = pods[i]
			}
		}
		return
	}
	ns := metav1.NamespaceAll
	if len(nss) == 1 {
		ns = keys[0].Namespace
	}
	found, err := r.listPods(ctx, ns, want)
	for _, k := range keys {
		if err != nil {
			f.PodErrs[k] = err
		} else {
			f.Pods[k] = found[k]
		}
	}
}

// listPods reads every pod of ns (all namespaces when empty) page by page
// and keeps those in want. The pages of one LIST are one consistent read
// (the continue token pins the first page's revision); an expired token
// fails the whole LIST.
func (r *Reconciler) listPods(ctx context.Context, ns string, want map[ObjectKey]bool) (map[ObjectKey]*PodFacts, error) {
	found := map[ObjectKey]*PodFacts{}
	opts := metav1.ListOptions{Limit: r.Opts.PageSize}
	for {
		l, err := r.Kube.CoreV1().Pods(ns).List(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("listing pods: %w", err)
		}
		for i := range l.Items {
			p := &l.Items[i]
			if k := (ObjectKey{p.Namespace, p.Name}); want[k] {
				found[k] = podFacts(p)
			}
		}
		if l.Continue == "" {
			return found, nil
		}
		opts.Continue = l.Continue
	}
}

// readStatefulSets GETs each StatefulSet once.
func (r *Reconciler) readStatefulSets(ctx context.Context, want map[ObjectKey]bool, f *Facts) {
	keys := make([]ObjectKey, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	out := make([]*StatefulSetFacts, len(keys))
	errs := make([]error, len(keys))
	r.parallel(len(keys), func(i int) {
		s, err := r.Kube.AppsV1().StatefulSets(keys[i].Namespace).Get(ctx, keys[i].Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			errs[i] = err
		default:
			replicas := 1
			if s.Spec.Replicas != nil {
				replicas = int(*s.Spec.Replicas)
			}
			out[i] = &StatefulSetFacts{UID: string(s.UID), Replicas: replicas}
		}
	})
	for i, k := range keys {
		if errs[i] != nil {
			f.StatefulSetErrs[k] = errs[i]
		} else {
			f.StatefulSets[k] = out[i]
		}
	}
}

// readNodes GETs each node once: ready when its Ready condition is True; a
// missing node, or one that never reported Ready, is not.
func (r *Reconciler) readNodes(ctx context.Context, want map[string]bool, f *Facts) {
	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	ready := make([]bool, len(names))
	errs := make([]error, len(names))
	r.parallel(len(names), func(i int) {
		node, err := r.Kube.CoreV1().Nodes().Get(ctx, names[i], metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			errs[i] = err
		default:
			for _, c := range node.Status.Conditions {
				if c.Type == corev1.NodeReady {
					ready[i] = c.Status == corev1.ConditionTrue
				}
			}
		}
	})
	for i, n := range names {
		if errs[i] != nil {
			f.NodeErrs[n] = errs[i]
		} else {
			f.Nodes[n] = ready[i]
		}
	}
}

// parallel runs fn(0..n-1) on at most Options.Workers goroutines.
func (r *Reconciler) parallel(n int, fn func(i int)) {
	workers := min(max(r.Opts.Workers, 1), n)
	if workers <= 1 {
		for i := range n {
			fn(i)
		}
		return
	}
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range next {
				fn(i)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

// since is time.Since, rounded for logs.
func since(t time.Time) time.Duration { return time.Since(t).Round(time.Millisecond) }
