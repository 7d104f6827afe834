package agent

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"kubeipam/internal/config"
	"kubeipam/internal/kubeapi"
	"kubeipam/internal/pod"
	"kubeipam/internal/store"
	"kubeipam/internal/store/kubestore"
)

// maxIdle bounds the idle etcd clients kept per etcd config; idleFor is how
// long one stays unused before it is closed.
const (
	maxIdle = 64
	idleFor = 2 * time.Minute
)

// clients keeps what the plugin process would build on every call: etcd
// clients (lent to one call at a time, since a call's watchdog may drop the
// members that stall from its client) and Kubernetes clients (shared). Each
// is keyed by its config and the identity of the files it was built from,
// so a rewritten kubeconfig or rotated etcd certificate gives new clients.
type clients struct {
	mu    sync.Mutex
	idle  map[string][]idleClient
	kubes map[string]sharedClient[*kubeapi.Client]
	podcs map[string]sharedClient[*pod.Client]
}

type idleClient struct {
	cli   *clientv3.Client
	since time.Time
}

func newClients() *clients {
	return &clients{idle: map[string][]idleClient{}, kubes: map[string]sharedClient[*kubeapi.Client]{}, podcs: map[string]sharedClient[*pod.Client]{}}
}

// fileKey identifies the content of the files at paths as far as a stat
// can: a rewrite (the installer writes a temp file and renames it) changes
// the inode, an edit in place the size or modification time.
func fileKey(paths ...string) string {
	var b strings.Builder
	for _, p := range paths {
		if p == "" {
			continue
		}
		fmt.Fprintf(&b, "%s", p)
		if st, err := os.Stat(p); err == nil {
			ino := uint64(0)
			if sys, ok := st.Sys().(*syscall.Stat_t); ok {
				ino = sys.Ino
			}
			fmt.Fprintf(&b, "@%d.%d.%d", ino, st.Size(), st.ModTime().UnixNano())
		}
		b.WriteByte('|')
	}
	return b.String()
}

// etcd lends an etcd client for e: an idle one, or a new one.
func (c *clients) etcd(e config.Etcd, dialTimeout time.Duration) (*clientv3.Client, func(bool), error) {
	key := fmt.Sprintf("%s|%v|%s", strings.Join(e.Endpoints, ","), dialTimeout, fileKey(e.CertFile, e.KeyFile, e.CAFile))
	c.mu.Lock()
	var cli *clientv3.Client
	if list := c.idle[key]; len(list) > 0 {
		cli = list[len(list)-1].cli
		c.idle[key] = list[:len(list)-1]
	}
	c.mu.Unlock()
	if cli == nil {
		var err error
		if cli, err = store.Connect(e, dialTimeout); err != nil {
			return nil, nil, err
		}
	}
	return cli, func(reusable bool) { c.giveBack(key, cli, reusable) }, nil
}

func (c *clients) giveBack(key string, cli *clientv3.Client, reusable bool) {
	if reusable {
		c.mu.Lock()
		if c.idle != nil && len(c.idle[key]) < maxIdle {
			c.idle[key] = append(c.idle[key], idleClient{cli, time.Now()})
			cli = nil
		}
		c.mu.Unlock()
	}
	if cli != nil {
		cli.Close()
	}
}

// janitor closes clients idle for longer than idleFor, every period.
func (c *clients) janitor(period time.Duration) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				c.closeIdle(now.Add(-idleFor))
			}
		}
	}()
	return func() { close(done) }
}

// closeIdle closes the idle clients unused since before.
func (c *clients) closeIdle(before time.Time) {
	var old []*clientv3.Client
	c.mu.Lock()
	for key, list := range c.idle {
		keep := list[:0]
		for _, ic := range list {
			if ic.since.Before(before) {
				old = append(old, ic.cli)
			} else {
				keep = append(keep, ic)
			}
		}
		if len(keep) == 0 {
			delete(c.idle, key)
		} else {
			c.idle[key] = keep
		}
	}
	c.mu.Unlock()
	for _, cli := range old {
		cli.Close()
	}
}

// close closes every idle client; clients lent out are closed when given
// back.
func (c *clients) close() {
	c.mu.Lock()
	idle := c.idle
	c.idle = nil
	c.mu.Unlock()
	for _, list := range idle {
		for _, ic := range list {
			ic.cli.Close()
		}
	}
}

// podGetter returns the shared pod reader for n's kubeconfig.
func (c *clients) podGetter(n *config.Network) (pod.Getter, error) {
	return shared(c, c.podcs, n, pod.NewClient)
}

// kube opens n's Kubernetes API store on the shared client of its
// kubeconfig.
func (c *clients) kube(n *config.Network) (store.Backend, error) {
	kc, err := shared(c, c.kubes, n, kubestore.Client)
	if err != nil {
		return nil, err
	}
	return kubestore.New(kc, n.Name, n.Cluster), nil
}

// sharedClient is a Kubernetes client built from the kubeconfig file as
// fileKey saw it.
type sharedClient[T any] struct {
	file   string
	client T
}

// shared returns the client of n's kubeconfig from m, building it (again,
// when the file changed) with build.
func shared[T any](c *clients, m map[string]sharedClient[T], n *config.Network, build func(string, time.Duration) (T, error)) (T, error) {
	key, file := fmt.Sprintf("%s|%v", n.KubeConfig, n.Timeout), fileKey(n.KubeConfig)
	c.mu.Lock()
	sc, ok := m[key]
	c.mu.Unlock()
	if ok && sc.file == file {
		return sc.client, nil
	}
	client, err := build(n.KubeConfig, n.Timeout)
	if err != nil {
		return client, err
	}
	c.mu.Lock()
	m[key] = sharedClient[T]{file, client}
	c.mu.Unlock()
	return client, nil
}
