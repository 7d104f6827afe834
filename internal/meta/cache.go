package meta

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/utils"
)

// CacheEntry is one delegate attached to a container. The field names Name,
// Bytes and ifnameRequest are multus's, so a cache written by multus can be
// read (and torn down) by kube-multus after a migration.
type CacheEntry struct {
	Name string `json:"Name"`
	// Bytes is the exact config the delegate was called with (base64 in
	// JSON); DEL and CHECK replay it.
	Bytes  []byte `json:"Bytes"`
	IfName string `json:"ifName,omitempty"`
	// IfnameRequest is multus's field; read only.
	IfnameRequest string `json:"ifnameRequest,omitempty"`
	// Index is the delegate's position in "delegates" (-1 when unknown).
	Index int `json:"index"`
	// Policy records that an nftables policy table was installed.
	Policy bool `json:"policy,omitempty"`
	// DropArgs are CNI_ARGS keys withheld from this delegate.
	DropArgs []string `json:"dropArgs,omitempty"`
	// Network is the network's name in network-status (namespace/name for
	// a NetworkAttachmentDefinition).
	Network string `json:"network,omitempty"`
	// RuntimeConfig and Args are the pod annotation's requests (ips, mac)
	// as runtimeConfig capabilities and CNI_ARGS; DEL and CHECK replay
	// them.
	RuntimeConfig map[string]any `json:"runtimeConfig,omitempty"`
	Args          [][2]string    `json:"args,omitempty"`
	// Gateways are the annotation's default-route: the pod's default
	// routes go through this interface.
	Gateways []string `json:"gateways,omitempty"`
}

// CachePath is the scratch cache of one container.
func CachePath(dir, containerID string) string { return filepath.Join(dir, containerID) }

// ErrNoCache: the container has no scratch cache.
var ErrNoCache = errors.New("no scratch cache")

// ReadCache loads a container's delegates in attach order. A missing file
// is ErrNoCache; a file that does not decode into usable entries is another
// error (the caller treats both the same: fall back to the config).
// runtimeIfName fills in the master's interface name for multus caches.
func ReadCache(dir, containerID, runtimeIfName string) ([]CacheEntry, error) {
	if err := utils.ValidateContainerID(containerID); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(CachePath(dir, containerID))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoCache
	}
	if err != nil {
		return nil, err
	}
	return DecodeCache(b, runtimeIfName)
}

// DecodeCache parses cache content; see ReadCache.
func DecodeCache(b []byte, runtimeIfName string) ([]CacheEntry, error) {
	var entries []CacheEntry
	if err := json.Unmarshal(b, &entries); err != nil {
		return nil, fmt.Errorf("corrupt scratch cache: %v", err)
	}
	if len(entries) == 0 {
		return nil, errors.New("corrupt scratch cache: no delegates")
	}
	for i := range entries {
		e := &entries[i]
		var head struct {
			Name string `json:"name"`
		}
		if len(e.Bytes) == 0 || json.Unmarshal(e.Bytes, &head) != nil || head.Name == "" {
			return nil, fmt.Errorf("corrupt scratch cache: entry %d has no usable config", i)
		}
		if e.Name == "" {
			e.Name = head.Name
		}
		if e.IfName == "" {
			switch {
			case e.IfnameRequest != "":
				e.IfName = e.IfnameRequest
			default: // multus: entry 0 is the master, then net1, net2, ...
				e.IfName = IfName(i, runtimeIfName)
			}
		}
		if err := utils.ValidateInterfaceName(e.IfName); err != nil {
			return nil, fmt.Errorf("corrupt scratch cache: entry %d: %v", i, err)
		}
	}
	return entries, nil
}

// WriteCache stores entries atomically: a temporary file in the same
// directory is written, synced and renamed over the old one, and the
// directory is synced, so a crash leaves either the old or the new cache,
// never a truncated one.
func WriteCache(dir, containerID string, entries []CacheEntry) error {
	if err := utils.ValidateContainerID(containerID); err != nil {
		return err
	}
	b, err := json.Marshal(entries)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+containerID+".tmp-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			_ = os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, CachePath(dir, containerID)); err != nil {
		return err
	}
	ok = true
	return syncDir(dir)
}

// RemoveCache deletes a container's scratch cache; a missing one is fine.
func RemoveCache(dir, containerID string) error {
	if err := utils.ValidateContainerID(containerID); err != nil {
		return err
	}
	err := os.Remove(CachePath(dir, containerID))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
