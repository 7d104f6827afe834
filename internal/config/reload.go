package config

import (
	"context"
	"crypto/sha256"
	"os"
	"time"
)

// Reloader follows a network config file, or a directory of them (a
// mounted ConfigMap, which kubelet updates in place), for the long-running
// components: the controller and the webhook re-read it on their own
// schedule and switch to a new version only when it parses. A config that
// does not is refused and the last good one stays.
type Reloader struct {
	Path string
	sum  [sha256.Size]byte
	nets []*Network
	ok   bool
}

// Reload reads Path. It returns the networks in force: the new ones when
// the content changed and parses (changed true), the last good ones
// otherwise; err says why a changed content was refused (or, before any
// good load, why there is none).
func (r *Reloader) Reload() (nets []*Network, changed bool, err error) {
	sum, err := contentSum(r.Path)
	if err != nil {
		return r.nets, false, err
	}
	if r.ok && sum == r.sum {
		return r.nets, false, nil
	}
	loaded, err := LoadNetworks(r.Path)
	if err != nil {
		return r.nets, false, err
	}
	r.sum, r.nets, r.ok = sum, loaded, true
	return loaded, true, nil
}

// contentSum hashes the file, or every config file of the directory with
// its name, in the order LoadNetworks reads them.
func contentSum(path string) ([sha256.Size]byte, error) {
	var zero [sha256.Size]byte
	files, _, err := ConfigFiles(path)
	if err != nil {
		return zero, err
	}
	h := sha256.New()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return zero, err
		}
		h.Write([]byte(f))
		h.Write([]byte{0})
		h.Write(b)
		h.Write([]byte{0})
	}
	var sum [sha256.Size]byte
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// Follow calls Reload every interval until ctx ends, and changed with the
// networks of every change that parses; refused gets the reason a change
// was refused, once per distinct reason (the last good networks stay).
func (r *Reloader) Follow(ctx context.Context, interval time.Duration, changed func([]*Network), refused func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	last := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		nets, ok, err := r.Reload()
		switch {
		case err != nil:
			if err.Error() != last {
				last = err.Error()
				refused(err)
			}
		case ok:
			last = ""
			changed(nets)
		}
	}
}
