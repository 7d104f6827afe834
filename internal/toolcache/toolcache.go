// Package toolcache says where the pinned tools the tests and the lab use
// (the Kubernetes binaries and the like) are cached, as the hack/ scripts
// that fetch them compute it. It imports nothing of the project, so both
// internal/testenv and internal/lab can use it without an import cycle.
package toolcache

import (
	"os"
	"path/filepath"
	"strings"
)

// KubeVersion is the Kubernetes release hack/testbin.sh builds.
const KubeVersion = "v1.37.2"

// KubeBinDir is where hack/testbin.sh puts the Kubernetes binaries:
// $KUBE_IPAM_TESTBIN, else the user cache directory.
func KubeBinDir() string {
	return Dir("KUBE_IPAM_TESTBIN", "testbin-k8s"+strings.TrimPrefix(KubeVersion, "v"))
}

// Dir is $env, else <user cache dir>/kube-ipam/<name>.
func Dir(env, name string) string {
	if dir := os.Getenv(env); dir != "" {
		return dir
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = filepath.Join(os.TempDir(), ".cache")
	}
	return filepath.Join(cache, "kube-ipam", name)
}
