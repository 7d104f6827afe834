// Package kubestore keeps one network's allocations as custom resources of
// API group ipam.kube-ipam.io in the cluster's own API (ipam.store
// "kubernetes"), for clusters without an etcd of their own for kube-ipam.
// It implements store.Backend with the guarantees of the etcd store, using
// the API server's optimistic concurrency only: an address is claimed by
// creating its object (create-if-absent) and every update and delete
// carries the resourceVersion its caller read. There is no lock, no lease
// and no write that is not guarded.
//
// Layout (cluster-scoped; crds/ has the definitions):
//
//	IPAllocation <hex address>.<network id>   one per address ever used:
//	    spec.state "held" (spec.held: the record, plus the attachment's
//	    fields the etcd store keeps in att/ and note/ keys: all addresses of
//	    the claim, the attachment's creation time, the note) or "released"
//	    (spec.released: the tombstone; reusable = in the release log)
//	IPSticky <hash>.<network id>   one per StatefulSet ordinal and interface
//
// Attachments are not objects: an attachment is the set of held
// IPAllocations labelled with its container and interface, and its version
// lists theirs ("10.0.0.5=1234,fd00::5=1235"). The release log is the set
// of released IPAllocations labelled with their release time. Every object
// names its holder (container, pod UID, node, cluster), so whatever a claim
// cut short left behind is found and freed by the container's DEL (a LIST
// by label) and by GC.
//
// A claim is a sequence of guarded writes, not one transaction: the
// IPSticky first (when the claim creates one), then each address, then a
// check that the attachment is not claimed twice, then the release of what
// the claim retires. A lost race undoes what the claim wrote, each undo
// guarded by the version the write returned. A claim cut short by a crash
// or an unknown outcome leaves objects whose claim lists addresses they do
// not hold: Attachment reports them Partial, and the allocator releases
// them before it claims again.
package kubestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"kubeipam/internal/kubeapi"
	"kubeipam/internal/store"
)

// Store is one network's allocations in the Kubernetes API. It is safe for
// concurrent use. It caches a metadata-only LIST of the network's addresses
// for the dynamic search (Used, OldestReleased) for at most ViewMaxAge; its
// own writes are applied to the cache, and a lost race drops it.
type Store struct {
	c       *kubeapi.Client
	network string
	netID   string
	cluster string

	mu sync.Mutex
	// view is the cached LIST; viewMu makes concurrent callers share one
	// LIST.
	view   *view
	viewMu sync.Mutex
	// changes are this Store's writes, applied to every LIST older than
	// them; minRV is the highest resourceVersion written or read here, the
	// least a LIST must show (resourceVersionMatch=NotOlderThan).
	changes []change
	minRV   uint64
	// taken are addresses a claim found claimed (the LIST may not show the
	// winner yet), for takenFor.
	taken map[netip.Addr]time.Time
	// cursors are the claims' never-used hints, kept in memory only: the
	// cached LIST makes a scan from the start of the range cheap, and a
	// shared cursor object would be one more write that every ADD contends
	// on.
	cursors map[int]netip.Addr
	// seen are objects as read, by name, so that the undo of an update
	// restores exactly what was there.
	seen map[string]*ipAllocation
	// memo are the answers of Attachment and PodAttachments since this
	// Store's last write that was not refused as a conflict (memoized).
	memo map[string]memoEntry

	// beforeWrite, in tests, runs before each write (verb, object name).
	beforeWrite func(verb, name string) error
	// noTable: the served CRD lacks the Table columns; list metadata.
	noTable atomic.Bool
	// sent, in tests, is told of every request sent and how long it took.
	sent func(r *req, d time.Duration)
}

// Tunables.
const (
	// ViewMaxAge bounds how long a LIST of the network serves the dynamic
	// search. A plugin call lives shorter; a long-lived caller (STATUS,
	// kube-ipamctl) re-reads.
	ViewMaxAge = 2 * time.Second
	takenFor   = 10 * time.Second
	// readAttempts bounds how often a read is sent after transient errors
	// (connection refused, 429, 5xx).
	readAttempts = 4
	// releaseAttempts bounds Release's re-reads after lost races.
	releaseAttempts = 16
	// pageSize is the page of consistent LISTs of whole objects.
	pageSize = 500
)

// New returns the store of network, written with cluster identity cluster
// (ipam.cluster), on the API server c talks to.
func New(c *kubeapi.Client, network, cluster string) *Store {
	return &Store{c: c, network: network, netID: NetworkID(network), cluster: cluster,
		taken: map[netip.Addr]time.Time{}, cursors: map[int]netip.Addr{}, seen: map[string]*ipAllocation{}}
}

var _ store.Backend = (*Store)(nil)

// Describe names the store for messages.
func (s *Store) Describe() string { return "kubernetes API " + s.c.Server() }

// NetworkID is the id of the store's network in object names and labels.
func (s *Store) NetworkID() string { return s.netID }

// UnavailableError: the API server could not be reached, did not answer in
// time, or answered that it cannot serve now (429, 5xx). Worth retrying
// later: store.IsUnavailable reports it (CNI code 11).
type UnavailableError struct {
	Server string
	Op     string // e.g. "list ipallocations"
	Err    error
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("kubernetes API %s unavailable (%s): %v", e.Server, e.Op, e.Err)
}
func (e *UnavailableError) Unwrap() error     { return e.Err }
func (e *UnavailableError) Unavailable() bool { return true }

// APIError is an answer that refuses a request (RBAC, a missing CRD, an
// invalid object).
type APIError struct {
	Server   string
	Verb     string
	Resource string
	Name     string
	Code     int
	Reason   string
	Msg      string
}

func (e *APIError) Error() string {
	obj := e.Resource + "." + Group
	if e.Name != "" {
		obj += " " + e.Name
	}
	switch {
	case e.Code == http.StatusForbidden:
		return fmt.Sprintf("kubernetes API %s: RBAC forbids the kubeconfig's user to %s %s.%s (cluster-scoped): for the plugin, grant verbs get, list, create, update, delete on ipallocations and get, create, delete on ipstickies of API group %s; for the controller, get, list, watch, update, delete on ipallocations and list, create, delete on ipstickies (deploy/kubernetes-store/rbac.yaml): %s",
			e.Server, e.Verb, e.Resource, Group, Group, e.Msg)
	case e.Code == http.StatusUnauthorized:
		return fmt.Sprintf("kubernetes API %s: the kubeconfig's credentials were refused (%s %s): %s", e.Server, e.Verb, obj, e.Msg)
	case e.Code == http.StatusNotFound && e.Reason != "NotFound" || e.Code == http.StatusNotFound && e.Name == "":
		return fmt.Sprintf("kubernetes API %s does not serve %s.%s/%s (%s): are the kube-ipam CRDs installed (internal/store/kubestore/crds)? %s",
			e.Server, e.Resource, Group, Version, e.Verb, e.Msg)
	}
	return fmt.Sprintf("kubernetes API %s: %s %s: HTTP %d %s: %s", e.Server, e.Verb, obj, e.Code, e.Reason, e.Msg)
}

// Unavailable: a refused token may be a rotated one the node has not
// picked up yet, worth a retry (as kube-multus treats it).
func (e *APIError) Unavailable() bool { return e.Code == http.StatusUnauthorized }

// errLost is a write refused because the object is not as the caller read
// it (409 AlreadyExists or Conflict, 404 for an update or delete).
var errLost = errors.New("lost a race")

// req describes one request for messages and classification.
type req struct {
	verb     string // get, list, watch, create, update, delete
	resource string
	name     string
	kubeapi.Request
}

func (r *req) op() string {
	if r.name != "" {
		return r.verb + " " + r.resource + " " + r.name
	}
	return r.verb + " " + r.resource
}

// read sends an idempotent request, again after transient failures (at
// most readAttempts times, within ctx). A transient failure left is an
// *UnavailableError; any other answer is returned for the caller to judge.
func (s *Store) read(ctx context.Context, r *req) (*kubeapi.Response, error) {
	var last error
	for attempt := 0; attempt < readAttempts; attempt++ {
		if attempt > 0 {
			if err := pause(ctx, attempt, last); err != nil {
				break
			}
		}
		resp, err := s.do(ctx, r)
		if err != nil {
			var tr *kubeapi.TransportError
			if !errors.As(err, &tr) {
				return nil, fmt.Errorf("%s: %w", r.op(), err)
			}
			last = err
			if ctx.Err() != nil {
				break
			}
			continue
		}
		if transient(resp.Code) {
			last = retryAfter{resp.Status(), resp.Header.Get("Retry-After")}
			continue
		}
		return resp, nil
	}
	if last == nil {
		last = ctx.Err()
	}
	return nil, &UnavailableError{Server: s.c.Server(), Op: r.op(), Err: last}
}

// write sends a write once. It is sent again only when the answer proves
// it was not applied (429; a connection that could not be opened). Any
// other failure without an answer (timeout, connection reset, 5xx) is an
// *store.AmbiguousError: the write may or may not have been applied.
func (s *Store) write(ctx context.Context, r *req) (resp *kubeapi.Response, err error) {
	defer func() {
		if err != nil || resp.Code != http.StatusConflict {
			s.forget()
		}
	}()
	if s.beforeWrite != nil {
		if err := s.beforeWrite(r.verb, r.name); err != nil {
			return nil, err
		}
	}
	var last error
	for attempt := 0; attempt < readAttempts; attempt++ {
		if attempt > 0 {
			if err := pause(ctx, attempt, last); err != nil {
				break
			}
		}
		resp, err := s.do(ctx, r)
		if err != nil {
			var tr *kubeapi.TransportError
			if !errors.As(err, &tr) {
				return nil, fmt.Errorf("%s: %w", r.op(), err)
			}
			if notSent(err) {
				last = err
				if ctx.Err() != nil {
					break
				}
				continue
			}
			return nil, &store.AmbiguousError{Err: &UnavailableError{Server: s.c.Server(), Op: r.op(), Err: err}}
		}
		if resp.Code == http.StatusTooManyRequests {
			last = retryAfter{resp.Status(), resp.Header.Get("Retry-After")}
			continue
		}
		if resp.Code >= 500 {
			return nil, &store.AmbiguousError{Err: &UnavailableError{Server: s.c.Server(), Op: r.op(), Err: resp.Status()}}
		}
		return resp, nil
	}
	if last == nil {
		last = ctx.Err()
	}
	var tr *kubeapi.TransportError
	if errors.As(last, &tr) {
		// Never sent: refused, not ambiguous.
		return nil, &UnavailableError{Server: s.c.Server(), Op: r.op(), Err: last}
	}
	return nil, &store.AmbiguousError{Err: &UnavailableError{Server: s.c.Server(), Op: r.op(), Err: last}}
}

func (s *Store) do(ctx context.Context, r *req) (*kubeapi.Response, error) {
	start := time.Now()
	resp, err := s.c.Do(ctx, r.Request)
	if s.sent != nil {
		s.sent(r, time.Since(start))
	}
	return resp, err
}

// transient: an answer that says "not now".
func transient(code int) bool {
	return code == http.StatusTooManyRequests || code >= 500
}

// notSent: the connection could not be opened, so the request never left.
func notSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

type retryAfter struct {
	err   error
	after string
}

func (r retryAfter) Error() string { return r.err.Error() }
func (r retryAfter) Unwrap() error { return r.err }

// pause waits before attempt: a short growing backoff with jitter, or the
// server's Retry-After (at most a second).
func pause(ctx context.Context, attempt int, last error) error {
	d := time.Duration(25<<min(attempt, 4))*time.Millisecond + rand.N(25*time.Millisecond)
	var ra retryAfter
	if errors.As(last, &ra) {
		if n, err := strconv.Atoi(ra.after); err == nil && n > 0 {
			d = min(time.Duration(n)*time.Second, time.Second)
		}
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// fail turns an answer the caller did not expect into an error.
func (s *Store) fail(r *req, resp *kubeapi.Response) error {
	st := resp.Status()
	return &APIError{Server: s.c.Server(), Verb: r.verb, Resource: r.resource, Name: r.name, Code: st.Code, Reason: st.Reason, Msg: st.Msg}
}

// objectNotFound: a 404 for a named object (not for a resource the server
// does not serve, whose Status names no object).
func objectNotFound(resp *kubeapi.Response) bool {
	if resp.Code != http.StatusNotFound {
		return false
	}
	st := resp.Status()
	return st.Reason == "NotFound" && st.Name != ""
}

// raiseRV raises minRV to the resourceVersion of an IPAllocation this
// Store wrote or read, so that later cached LISTs show it. Only an
// IPAllocation's own version will do: a LIST's version is etcd's current
// revision, possibly of a write to another resource, which the
// IPAllocation watch cache reaches only with its next event.
func (s *Store) raiseRV(v string) {
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.minRV = max(s.minRV, n)
	s.mu.Unlock()
}

func path(resource, name string) string {
	if name == "" {
		return apiPath + "/" + resource
	}
	return apiPath + "/" + resource + "/" + url.PathEscape(name)
}

// selector builds a label selector from key=value pairs.
func selector(kv ...string) string {
	var parts []string
	for i := 0; i+1 < len(kv); i += 2 {
		parts = append(parts, kv[i]+"="+kv[i+1])
	}
	return strings.Join(parts, ",")
}

// getObject reads the object name of resource (nil if there is none).
func getObject[T any](ctx context.Context, s *Store, resource, name string) (*T, error) {
	r := &req{verb: "get", resource: resource, name: name, Request: kubeapi.Request{Path: path(resource, name)}}
	resp, err := s.read(ctx, r)
	if err != nil {
		return nil, err
	}
	switch {
	case resp.Code == http.StatusOK:
	case objectNotFound(resp):
		return nil, nil
	default:
		return nil, s.fail(r, resp)
	}
	var o T
	if err := json.Unmarshal(resp.Body, &o); err != nil {
		return nil, fmt.Errorf("%s: undecodable answer: %w", r.op(), err)
	}
	return &o, nil
}

// get reads one IPAllocation (nil if there is none).
func (s *Store) get(ctx context.Context, name string) (*ipAllocation, error) {
	o, err := getObject[ipAllocation](ctx, s, allocations, name)
	if o != nil {
		s.remember(o)
	}
	return o, err
}

// remember keeps an object as read, for exact undos.
func (s *Store) remember(o *ipAllocation) {
	s.raiseRV(o.Metadata.ResourceVersion)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.seen) > 4096 {
		clear(s.seen)
	}
	s.seen[o.Metadata.Name] = o
}

// recalled returns the object name as read at version rv, if it was.
func (s *Store) recalled(name string, rv store.Version) *ipAllocation {
	s.mu.Lock()
	defer s.mu.Unlock()
	if o := s.seen[name]; o != nil && store.Version(o.Metadata.ResourceVersion) == rv {
		return o
	}
	return nil
}

// listOpts are the query of a LIST.
type listOpts struct {
	selector string
	// cached: served from the API server's watch cache, at least as new as
	// everything this Store wrote or read (NotOlderThan minRV); otherwise a
	// consistent read.
	cached bool
	// metadata: PartialObjectMetadata only.
	metadata bool
	limit    int
	// exactRV: a consistent read at exactly this resourceVersion.
	exactRV string
}

// cachedQuery is the query of a LIST served from the watch cache, at least
// as new as everything this Store wrote or read.
func (s *Store) cachedQuery(sel string) url.Values {
	q := url.Values{}
	if sel != "" {
		q.Set("labelSelector", sel)
	}
	s.mu.Lock()
	rv := s.minRV
	s.mu.Unlock()
	if rv == 0 {
		q.Set("resourceVersion", "0")
	} else {
		q.Set("resourceVersion", strconv.FormatUint(rv, 10))
		q.Set("resourceVersionMatch", "NotOlderThan")
	}
	return q
}

// list reads every object of resource matching o, page by page, decoding
// each page's items into T.
func list[T any](ctx context.Context, s *Store, resource string, o listOpts) ([]T, string, error) {
	q := url.Values{}
	if o.selector != "" {
		q.Set("labelSelector", o.selector)
	}
	r := &req{verb: "list", resource: resource, Request: kubeapi.Request{Path: path(resource, "")}}
	if o.metadata {
		r.Accept = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
	}
	if o.cached {
		q = s.cachedQuery(o.selector)
	} else if o.limit > 0 {
		q.Set("limit", strconv.Itoa(o.limit))
	}
	if o.exactRV != "" && !o.cached {
		q.Set("resourceVersion", o.exactRV)
		q.Set("resourceVersionMatch", "Exact")
	}
	var out []T
	for {
		r.Query = q
		resp, err := s.read(ctx, r)
		if err != nil {
			return nil, "", err
		}
		if resp.Code != http.StatusOK {
			return nil, "", s.fail(r, resp)
		}
		var l objectList[T]
		if err := json.Unmarshal(resp.Body, &l); err != nil {
			return nil, "", fmt.Errorf("%s: undecodable answer: %w", r.op(), err)
		}
		out = append(out, l.Items...)
		if l.Metadata.Continue == "" {
			return out, l.Metadata.ResourceVersion, nil
		}
		q.Set("continue", l.Metadata.Continue)
	}
}

// Ping checks that the API answers and serves the IPAllocation resource
// to this user: a GET of a name no address has, answered by "not found"
// (a LIST, even of one item, costs the API server the whole network).
func (s *Store) Ping(ctx context.Context) error {
	name := "ping." + s.netID
	r := &req{verb: "get", resource: allocations, name: name, Request: kubeapi.Request{Path: path(allocations, name)}}
	resp, err := s.read(ctx, r)
	if err != nil {
		return err
	}
	if resp.Code != http.StatusOK && !objectNotFound(resp) {
		return s.fail(r, resp)
	}
	return nil
}

// Client is the API client of the kubeconfig file at path for this store,
// each request bounded by timeout. A kubeconfig that cannot be used is a
// *store.ConfigError (a configuration error, CNI code 7) naming the file.
func Client(path string, timeout time.Duration) (*kubeapi.Client, error) {
	c, err := kubeapi.NewClient(path, "kube-ipam", timeout)
	if err != nil {
		return nil, &store.ConfigError{Msg: fmt.Sprintf(`ipam.store "kubernetes": %v`, err)}
	}
	return c, nil
}
